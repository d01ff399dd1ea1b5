"""The scheduler's two costs: per-request picks on the hot path, and table computation.

Per-request picks per second of the fabric's ranking (what the Serve request router runs for
every request) against a baseline measured in the same run — ``random.choice`` over the same
replicas, i.e. a router that ignores the table — and the time each policy takes to turn a
snapshot of 10, 100 and 1,000 sites into a routing table. Prints tables; writes
bench/results/scheduler.json.

    .venv/bin/python bench/scheduler.py
"""

import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

from fabric.routing.pick import Hints, Placement, RankCache, rank_by_table
from fabric.scheduling.policies import POLICIES, make_policy
from fabric.scheduling.signals import SiteSignals, Snapshot
from fabric.scheduling.table import SmoothWeightedRoundRobin


def per_second(fn, seconds: float = 0.5) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            fn()
        n += 200
    return n / (time.perf_counter() - start)


def snapshot(n_sites: int, rng: random.Random) -> Snapshot:
    return Snapshot(sites=[SiteSignals(
        name=f"s{i}", region=f"r{i % 10}", edge=i % 7 == 0, budget_w=3e6,
        facility_w=rng.uniform(1e6, 3.2e6), price_usd_per_mwh=rng.uniform(-5, 200),
        carbon_g_per_kwh=rng.uniform(20, 700), replicas=rng.randint(0, 8),
        inflight=rng.randint(0, 300), max_inflight_per_replica=64) for i in range(n_sites)])


def where(r) -> Placement:
    return r.p


def key(r) -> str:
    return r.p.site + str(id(r))


def main() -> dict:
    rng = random.Random(0)
    picks = []
    for n_sites in (10, 100, 1000):
        snap = snapshot(n_sites, rng)
        table = make_policy("fabric").table(snap, 1)
        replicas = [SimpleNamespace(p=Placement(site=s.name, region=s.region, edge=s.edge))
                    for s in snap.sites for _ in range(max(1, s.replicas))][:4000]
        wrr, cache = SmoothWeightedRoundRobin(), RankCache()  # as the router holds them
        fabric = per_second(lambda: rank_by_table(table, wrr, replicas, where, Hints(), cache=cache))
        edge = per_second(lambda: rank_by_table(table, wrr, replicas, where, Hints(privacy="edge"),
                                                cache=cache))
        sessions = iter(range(10**9))
        session = per_second(lambda: rank_by_table(table, wrr, replicas, where, Hints(),
                                                   f"agent-{next(sessions) % 1000}", key, cache))
        uncached = per_second(lambda: rank_by_table(table, wrr, replicas, where, Hints()), 0.2)
        base = per_second(lambda: random.choice(replicas))
        picks.append({"sites": n_sites, "replicas": len(replicas), "fabric_picks_per_s": round(fabric),
                      "edge_only_picks_per_s": round(edge), "session_picks_per_s": round(session),
                      "uncached_picks_per_s": round(uncached), "baseline_picks_per_s": round(base),
                      "fabric_vs_baseline": round(fabric / base, 4)})
    tables = []
    for n_sites in (10, 100, 1000):
        snap = snapshot(n_sites, rng)
        row = {"sites": n_sites}
        for name in sorted(POLICIES):
            policy = make_policy(name)
            start = time.perf_counter()
            runs = 0
            while time.perf_counter() - start < 0.3:
                policy.table(snap, runs + 1)
                runs += 1
            row[f"{name}_ms"] = round((time.perf_counter() - start) / runs * 1e3, 3)
        tables.append(row)

    print("hot path: picks per second (one pick per request)")
    print(f"{'sites':>6} {'replicas':>9} {'fabric':>10} {'edge-only':>10} {'sessions':>10} "
          f"{'no cache':>10} {'random':>10} {'ratio':>7}")
    for r in picks:
        print(f"{r['sites']:>6} {r['replicas']:>9} {r['fabric_picks_per_s']:>10} "
              f"{r['edge_only_picks_per_s']:>10} {r['session_picks_per_s']:>10} "
              f"{r['uncached_picks_per_s']:>10} {r['baseline_picks_per_s']:>10} {r['fabric_vs_baseline']:>7}")
    print("targets (issue 17): >= 200k picks/s at 10 sites, >= 100k at 1,000 sites (fabric column)")
    print("\ntable computation per tick (ms)")
    names = sorted(POLICIES)
    print(f"{'sites':>6} " + " ".join(f"{n:>16}" for n in names))
    for r in tables:
        print(f"{r['sites']:>6} " + " ".join(f"{r[n + '_ms']:>16}" for n in names))
    out = Path(__file__).parent / "results" / "scheduler.json"
    out.parent.mkdir(exist_ok=True)
    result = {"picks": picks, "tables": tables}
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
