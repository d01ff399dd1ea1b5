"""bench/sites: what layers 1–2 cost as the fleet grows — one Sites actor for every site
against one actor per site (how the fabric ran them before), the same run.

Both run the fabric's own ``Sites`` actor on a fresh local Ray instance: the baseline starts
one per site (each holding one site), the fabric one holding them all. The sites are copies
of the local spec's sites (their real grid data, replayed at the spec's clock speed), with no
nodes, so no GPU monitor: this measures the layer itself. Per fleet size: the time until every
site has answered, the actors' cores and PSS at rest (after a settle), and the time of the
scheduler's one long poll (every site's state, then a poll with nothing new). The baseline
stops at 30 sites: a thousand actors are a thousand worker processes (~80 MiB each).
Writes bench/results/sites.json.

    .venv/bin/python bench/sites.py [--sizes 10,30,1000] [--baseline-max 30] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import LOCAL_SPEC, RESULTS  # noqa: E402


def fleet(n: int) -> list[tuple[str, str]]:
    """``n`` sites: the local spec's sites again and again, renamed (region, SiteSpec JSON)."""
    from fabric.spec import load_spec

    spec = load_spec(LOCAL_SPEC)
    out = []
    for i in range(n):
        region, site = spec.sites[i % len(spec.sites)]
        out.append((region, site.model_copy(update={"name": f"s{i:04d}"}).model_dump_json()))
    return out


def measure(pids: list[int], seconds: float) -> tuple[float, float]:
    """(cores, PSS MiB) of these processes over ``seconds``."""
    import psutil

    procs = [psutil.Process(p) for p in pids]
    start = [sum(p.cpu_times()[:2]) for p in procs]
    t0 = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    cores = sum(sum(p.cpu_times()[:2]) - s for p, s in zip(procs, start)) / wall
    return cores, sum(p.memory_full_info().pss for p in procs) / 2**20


def run(n: int, per_site: bool, speed: float, settle_s: float, seconds: float) -> dict:
    import ray
    from fabric.layers import blobs
    from fabric.layers.aidc import Sites

    sites = fleet(n)
    t0 = time.perf_counter()
    if per_site:
        actors = [Sites.options(num_cpus=0).remote(blobs.put(json.dumps([s])), speed, 0.0,
                                                    time.time()) for s in sites]
        ray.get([a.states.remote() for a in actors], timeout=600)
    else:
        actors = [Sites.options(num_cpus=0).remote(blobs.put(json.dumps(sites)), speed, 0.0,
                                                    time.time())]
        ray.get(actors[0].states.remote(), timeout=600)
    ready_s = time.perf_counter() - t0
    time.sleep(settle_s)
    pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors])
    cores, pss = measure(pids, seconds)
    # the scheduler's long poll: every site's state for a new reader, then nothing new
    t = time.perf_counter()
    answers = ray.get([a.watch.remote(None, 0.0) for a in actors])
    full_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    ray.get([a.watch.remote(v, 0.0) for a, (v, _) in zip(actors, answers)])
    quiet_ms = (time.perf_counter() - t) * 1e3
    assert sum(len(states) for _, states in answers) == n
    for a in actors:
        ray.kill(a)
    return {"sites": n, "actors": len(pids), "ready_s": round(ready_s, 2),
            "cores": round(cores, 4), "pss_mib": round(pss), "watch_all_ms": round(full_ms, 1),
            "watch_quiet_ms": round(quiet_ms, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,30,1000")
    ap.add_argument("--baseline-max", type=int, default=30)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    import ray

    from fabric.spec import load_spec

    speed = load_spec(LOCAL_SPEC).power_clock.speed
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            for per_site in (True, False):
                if per_site and n > args.baseline_max:
                    continue
                row = run(n, per_site, speed, args.settle, args.seconds)
                row["layout"] = "actor per site" if per_site else "one Sites actor"
                rows.append(row)
                print(f"{n:5d} sites  {row['layout']:16s} {row['actors']:4d} actors  "
                      f"ready {row['ready_s']:6.2f} s  {row['cores']:.4f} cores  "
                      f"{row['pss_mib']:6d} MiB  watch all {row['watch_all_ms']:7.1f} ms  "
                      f"quiet {row['watch_quiet_ms']:5.1f} ms", flush=True)
    finally:
        ray.shutdown()
    print("\n sites   cores (per site / one)   PSS (per site / one)")
    for n in sorted({r["sites"] for r in rows}):
        base = next((r for r in rows if r["sites"] == n and r["layout"] == "actor per site"), None)
        one = next(r for r in rows if r["sites"] == n and r["layout"] == "one Sites actor")
        if base:
            print(f" {n:5d}   {base['cores'] / max(one['cores'], 1e-4):6.1f}x"
                  f"                  {base['pss_mib'] / max(one['pss_mib'], 1):6.1f}x")
        else:
            print(f" {n:5d}   one actor: {one['cores']:.4f} cores, {one['pss_mib']} MiB "
                  f"(no baseline: {n} worker processes)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sites.json").write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"),
                                                    "rows": rows}, indent=2))
    print(f"wrote {RESULTS / 'sites.json'}")


if __name__ == "__main__":
    main()
