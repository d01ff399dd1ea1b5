"""bench/agents: what the swarm machinery itself costs.

The fabric is replaced by a trivial local responder (fabric/agents/stub.py, its own process),
so every cycle measured is the swarm's: one AgentSwarm Ray actor runs N agents as asyncio
tasks, each stepping through conversations with think time between steps. Reports agents,
requests/s, the swarm process's CPU (cores) and resident memory, for a small run (the
baseline) and the full one, and the full/baseline ratios. Target: 10,000 agents under one
core and 2 GiB.

    .venv/bin/python bench/agents.py [--agents 10000] [--duration 60] [--think 10]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import ray

from fabric.agents.agent import Endpoint
from fabric.agents.swarm import _actor_class
from fabric.agents.workload import Workload


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("stub responder did not start")


def one_run(agents: int, duration_s: float, think_s: float, url: str, stub: psutil.Process) -> dict:
    wl = Workload.model_validate({
        "name": "bench", "steps": 1000, "tasks_per_agent": None, "max_tokens": 16,
        "think_s": {"kind": "exponential", "mean": think_s}, "followup_words": 8,
        "context_limit_tokens": 400, "arrival": {"pattern": "steady", "ramp_s": min(20, duration_s / 3)}})
    swarm = _actor_class().options(num_cpus=0).remote()
    offsets = wl.arrival.start_offsets(agents, random.Random(0))
    stub_cpu0 = sum(stub.cpu_times()[:2])
    t0 = time.monotonic()
    ray.get(swarm.start.remote(wl, list(range(agents)), offsets, Endpoint(url, "k", "stub-model"),
                               duration_s, 0, "bench"))
    peak_rss = 0.0
    while not ray.get(swarm.wait.remote(2.0)):
        peak_rss = max(peak_rss, ray.get(swarm.progress.remote())["rss_mib"])
        print(f"  {time.monotonic() - t0:5.0f} s  {ray.get(swarm.progress.remote())['ok']:,} steps", end="\r")
    steps, info = ray.get(swarm.results.remote())
    ray.kill(swarm)
    wall = time.monotonic() - t0
    ok = sum(s.ok for s in steps)
    return {"agents": agents, "wall_s": round(wall, 1), "requests": len(steps), "ok": ok,
            "requests_per_s": round(len(steps) / info["wall_s"], 1),
            "swarm_cpu_cores": info["cpu_cores"], "swarm_peak_rss_mib": max(peak_rss, info["rss_mib"]),
            "cpu_ms_per_request": round(1000 * info["cpu_s"] / max(1, len(steps)), 3),
            "stub_cpu_cores": round((sum(stub.cpu_times()[:2]) - stub_cpu0) / wall, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--baseline-agents", type=int, default=1_000)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--think", type=float, default=10.0, help="mean think time between steps (s)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "agents.json")
    args = ap.parse_args()
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "fabric.agents.stub", "--port", str(port)])
    try:
        _wait_listening(port)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        url = f"http://127.0.0.1:{port}/v1"
        stub = psutil.Process(proc.pid)
        runs = []
        for n in (args.baseline_agents, args.agents):
            print(f"{n:,} agents for {args.duration:.0f} s (think ~{args.think:g} s between steps)")
            runs.append(one_run(n, args.duration, args.think, url, stub))
            print(" ", runs[-1])
    finally:
        proc.terminate()
        proc.wait(10)
        ray.shutdown()
    base, full = runs
    result = {"runs": runs, "ratio_full_over_baseline": {
        k: round(full[k] / base[k], 2) if base[k] else None
        for k in ("agents", "requests_per_s", "swarm_cpu_cores", "swarm_peak_rss_mib", "cpu_ms_per_request")},
        "target": {"cpu_cores_below": 1.0, "rss_mib_below": 2048},
        "met": full["swarm_cpu_cores"] < 1.0 and full["swarm_peak_rss_mib"] < 2048 and full["ok"] == full["requests"]}
    print(f"\n{'agents':>8} {'req/s':>9} {'swarm cores':>12} {'peak RSS MiB':>13} {'CPU ms/req':>11} {'stub cores':>11}")
    for r in runs:
        print(f"{r['agents']:>8,} {r['requests_per_s']:>9,.1f} {r['swarm_cpu_cores']:>12.2f} "
              f"{r['swarm_peak_rss_mib']:>13.0f} {r['cpu_ms_per_request']:>11.3f} {r['stub_cpu_cores']:>11.2f}")
    print(f"full/baseline: {result['ratio_full_over_baseline']}")
    print(f"target (10,000 agents < 1 core, < 2 GiB, no failed step): {'met' if result['met'] else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
