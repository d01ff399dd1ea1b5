"""bench/soak: the whole local fabric under a steady agent load for minutes — zero errors and
flat memory expected (or, for a cache filling up, growth that slows down: the report splits
each top-growing process's growth into the first and second half of the measured window).

Brings the local fabric up (deployments/local.yaml), runs 64 agents (AgentSwarm actors) in
conversations with short think times for ``--duration`` seconds, and samples the resident
memory of every process the run started (raylets, engines, Serve, HAProxy, actors) every
``--every`` seconds. Reports requests, errors, tokens, and the memory of the last sample
against the first sample after warm-up (a ratio: 1.00 is flat). Writes bench/results/soak.json.

    .venv/bin/python bench/soak.py [--duration 300] [--agents 64]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import psutil

import fabric  # noqa: F401  (sets the Serve data-path environment before Ray is imported)
from fabric.agents import Workload
from fabric.agents.runner import run as run_swarm
from fabric.cluster import free_port
from fabric.runtime import running_fabric
from fabric.spec import default_spec_path, load_spec


def rss_by_process() -> dict[str, float]:
    """Resident MiB of every process the run started, keyed by name and pid."""
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            out[f"{p.name()[:40]}[{p.pid}]"] = p.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--agents", type=int, default=64)
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    args = ap.parse_args()
    spec = load_spec(default_spec_path())
    spec.endpoint.port = free_port()
    wl = Workload.model_validate({
        "name": "soak", "steps": 1000, "tasks_per_agent": None, "max_tokens": 32,
        "think_s": {"kind": "exponential", "mean": 0.5}, "followup_words": 10,
        "context_limit_tokens": 1024, "arrival": {"pattern": "steady", "ramp_s": 10}})
    samples: list[tuple[float, float]] = []
    snapshots: list[tuple[float, dict[str, float]]] = []
    with running_fabric(spec, step=lambda m: print(f"  {m}")) as fab:
        stop = threading.Event()

        def sample():
            t0 = time.monotonic()
            while not stop.wait(args.every):
                by_proc = rss_by_process()
                snapshots.append((time.monotonic() - t0, by_proc))
                samples.append((round(time.monotonic() - t0, 1), round(sum(by_proc.values()), 1)))
                print(f"  {samples[-1][0]:6.0f} s  fabric RSS {samples[-1][1]:,.0f} MiB")

        threading.Thread(target=sample, daemon=True).start()
        report = run_swarm(wl, agents=args.agents, duration_s=args.duration, base_url=fab.base_url,
                           progress=False)
        stop.set()
    warm_s = min(60.0, args.duration / 3)
    warm = [m for t, m in samples if t >= warm_s] or [m for _, m in samples]
    first = next((snap for t, snap in snapshots if t >= warm_s), snapshots[0][1] if snapshots else {})
    last = snapshots[-1][1] if snapshots else {}
    growth = sorted(((round(last[k] - first[k], 1), k) for k in last.keys() & first.keys()), reverse=True)
    # bounded or not: a process that grows less in the second half of the measured window than
    # in the first is settling (a cache filling up); one that grows as much is leaking
    measured = [(t, snap) for t, snap in snapshots if t >= warm_s]
    mid = measured[len(measured) // 2][1] if measured else {}
    halves = [{"process": k, "first_half_mib": round(mid.get(k, first[k]) - first[k], 1),
               "second_half_mib": round(last[k] - mid.get(k, first[k]), 1)}
              for _, k in growth[:8] if k in first]
    result = {"agents": args.agents, "duration_s": args.duration, "requests": report.steps,
              "succeeded": report.succeeded, "errors": report.errors, "refused": report.refused,
              "tokens_out": report.tokens_out, "requests_per_s": round(report.requests_per_s, 1),
              "rss_mib_first_after_warmup": warm[0] if warm else None,
              "rss_mib_last": warm[-1] if warm else None,
              "rss_ratio_last_over_warm": round(warm[-1] / warm[0], 3) if warm else None,
              "rss_mib_max": max(warm) if warm else None,
              "top_growth_mib": [{"process": k, "mib": g} for g, k in growth[:8]],
              "top_growth_by_half": halves, "samples": samples}
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
