"""What the fabric costs at rest, beside the engines it serves.

Two runs on this machine, one after the other, both with no request for ``--settle`` seconds
before ``--seconds`` of measurement:

  baseline  the same Ray cluster shape (a head and one raylet per site of the spec, the
            dashboard, Serve with HAProxy and direct streaming) running the same vLLM engines
            at the same sites through plain ``ray.serve.llm`` (no fabric code deployed; the
            Ray and Serve settings of the fabric's local cluster, ``fabric.cluster.QUIET_*``,
            so the difference is the fabric's own), in a subprocess that never imports fabric;
  fabric    the local fabric as ``fabric up`` runs it (layer actors, scheduler, ledger,
            regional endpoints, tenants' API, deferred queue).

CPU is the cores the whole process tree used over the window; memory is its proportional set
size (PSS: shared pages counted once, unlike summed RSS). Prints both with a breakdown by
role, the fabric's extra and the targets; writes bench/results/idle.json.

    .venv/bin/python bench/idle.py [--settle 30] [--seconds 30] [--spec deployments/local.yaml]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _servers  # noqa: E402

TARGETS = {"fabric_extra_cores": 0.1, "fabric_extra_rss_mib": 2048, "fabric_total_cores": 0.35}


def tree() -> list:
    import psutil

    me = psutil.Process()
    return [me] + me.children(recursive=True)


def role(proc) -> str:
    """A process's role, for the breakdown."""
    import psutil

    try:
        name, cmd = proc.name(), proc.cmdline()
    except psutil.Error:
        return "?"
    if proc.pid == os.getpid():
        return "driver (this process)"
    head, joined = (cmd[0] if cmd else name), " ".join(cmd)
    if "haproxy" in name or head.endswith("haproxy"):
        return "HAProxy"
    if "EngineCore" in head or "EngineCore" in name or head.startswith("VLLM::"):
        return "vLLM engine core"
    if head.startswith("ray::"):
        title = head.split()[0]
        if title.startswith("ray::ServeReplica:"):  # ray::ServeReplica:<app>:<deployment>
            deployment = title.split(".")[0].split(":")[4:5] or ["?"]
            return f"Serve {deployment[0]} replicas"
        return title.split(".")[0]
    if "idle.py baseline" in joined:
        return "driver (baseline subprocess)"
    if "dashboard" in joined:
        return "Ray dashboard + agents"
    if name in ("raylet", "gcs_server") or "raylet" in head or "gcs_server" in head:
        return "Ray raylet + GCS"
    if "runtime_env" in joined or "log_monitor" in joined or "monitor.py" in joined:
        return "Ray agents (runtime env, logs)"
    return _servers._short(cmd, name) if cmd else name


def measure(seconds: float) -> dict:
    """Cores and PSS of this process tree over ``seconds`` (processes found at the start)."""
    import psutil

    procs = tree()
    start = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            start[p.pid] = (p, t.user + t.system + t.children_user + t.children_system)
    t0 = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    cores, pss, rss = defaultdict(float), defaultdict(float), defaultdict(float)
    for pid, (p, c0) in start.items():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            mem = p.memory_full_info()
            group = role(p)
            cores[group] += (t.user + t.system + t.children_user + t.children_system - c0) / wall
            pss[group] += mem.pss / 2**20
            rss[group] += mem.rss / 2**20
    groups = sorted(cores, key=lambda g: -cores[g])
    return {"wall_s": round(wall, 2), "processes": len(start),
            "cores": round(sum(cores.values()), 3), "pss_mib": round(sum(pss.values())),
            "rss_mib": round(sum(rss.values())),
            "groups": [{"group": g, "cores": round(cores[g], 3), "pss_mib": round(pss[g])}
                       for g in groups]}


# ---- baseline: plain ray.serve.llm in a subprocess that never imports fabric ---------------

def warm(urls: list[tuple[str, str]], requests: int, api_key: str = "none") -> None:
    import httpx

    with httpx.Client(timeout=180, headers={"authorization": f"Bearer {api_key}"}) as client:
        for url, model in urls:
            for _ in range(requests):
                client.post(f"{url}/chat/completions", json={
                    "model": model, "max_tokens": 4,
                    "messages": [{"role": "user", "content": "warm up"}]}).raise_for_status()


def run_baseline(spec, sources: dict[str, str], args, log: Path) -> dict:
    plan = _servers.shaped_plan(spec, sources)
    cmd = _servers.shaped_cmd(plan)
    server = _servers.ServerProcess("plain ray.serve.llm (same cluster shape)", cmd, dict(os.environ),
                                    log, f"http://127.0.0.1:{plan['port']}", stop_grace_s=90)
    try:
        server._pointer_before = _servers._ray_pointer()  # the pointer its cluster will replace
        with open(log, "wb") as out:  # ready when the child says so (all apps RUNNING)
            server.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        while b"READY" not in log.read_bytes():
            if server.proc.poll() is not None:
                raise _servers.ServerError(f"the baseline exited ({server.proc.returncode}); last "
                                           f"lines of {log}:\n{_servers.log_tail(log)}")
            time.sleep(2)
        warm([(server.base_url + a["route_prefix"] + "/v1", a["config"]["model_loading_config"]
               ["model_id"]) for a in plan["apps"]], requests=2 * len(spec.sites))
        say(f"baseline up: settling {args.settle:.0f} s, then measuring {args.seconds:.0f} s")
        time.sleep(args.settle)
        return measure(args.seconds)
    finally:
        server.stop()


def run_fabric(spec, args, log: Path) -> dict:
    from fabric.runtime import quiet_output, running_fabric

    with tempfile.TemporaryDirectory(prefix="bench-idle-ledger-") as ledger:
        spec.metering.path = ledger
        with quiet_output(str(log)) as terminal:
            def step(msg: str) -> None:
                terminal.write(f"    fabric: {msg}\n")
                terminal.flush()
            with running_fabric(spec, step=step, dashboard=True):
                step(f"up: settling {args.settle:.0f} s, then measuring {args.seconds:.0f} s")
                time.sleep(args.settle)
                return measure(args.seconds)


def say(msg: str) -> None:
    print(msg, flush=True)


def show(name: str, r: dict) -> None:
    say(f"\n{name}: {r['cores']:.3f} cores, PSS {r['pss_mib']} MiB (RSS {r['rss_mib']} MiB), "
        f"{r['processes']} processes")
    for g in r["groups"]:
        say(f"  {g['group']:<44} {g['cores']:>7.3f} cores {g['pss_mib']:>7} MiB")


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=_servers.LOCAL_SPEC)
    ap.add_argument("--settle", type=float, default=30.0, help="seconds at rest before measuring")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds measured")
    ap.add_argument("--only", choices=("fabric", "baseline"),
                    help="run one side; the other is read from the last idle.json (same machine)")
    args = ap.parse_args()
    out = _servers.RESULTS / "idle.json"
    last = json.loads(out.read_text()) if args.only and out.exists() else {}
    if args.only and not last:
        ap.error(f"--only needs a previous full run's {out}")

    from fabric.cluster import free_port
    from fabric.model import model_sources
    from fabric.spec import load_spec

    spec = load_spec(args.spec)
    spec.endpoint.port = free_port()
    _servers.wait_idle(say=say)
    sources = model_sources(spec, None)
    logs = Path(tempfile.gettempdir())
    say(f"baseline: plain ray.serve.llm, {len(spec.sites)} site raylets + head, "
        f"{sum(1 for _ in spec.models)} model app(s) (log {logs / 'bench-idle-baseline.log'})")
    if args.only == "fabric":
        base = last["baseline"]
        say("(baseline from the last run's idle.json)")
    else:
        base = run_baseline(spec, sources, args, logs / "bench-idle-baseline.log")
    show("baseline (plain ray.serve.llm)", base)
    if args.only == "baseline":
        fab = last["fabric"]
        say("(fabric from the last run's idle.json)")
    else:
        say(f"\nfabric: the local fabric (log {logs / 'bench-idle-fabric.log'})")
        fab = run_fabric(spec, args, logs / "bench-idle-fabric.log")
    show("fabric (fabric up)", fab)
    result = {
        "spec": str(args.spec), "settle_s": args.settle, "seconds": args.seconds,
        "baseline": base, "fabric": fab,
        "fabric_total_cores": fab["cores"],
        "fabric_extra_cores": round(fab["cores"] - base["cores"], 3),
        "fabric_extra_rss_mib": round(fab["pss_mib"] - base["pss_mib"]),
        "targets": TARGETS,
    }
    say("\n                       measured   target")
    for key, target in TARGETS.items():
        ok = "ok" if result[key] <= target else "MISSED"
        say(f"  {key:<22} {result[key]:>8}   <= {target}  {ok}")
    say("  (fabric_extra_rss_mib is the extra proportional set size, PSS)")
    result["measured_now"] = args.only or "both"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    say(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
