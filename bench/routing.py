"""Cost of the fabric's per-request routing decision, against a baseline in the same run.

The router runs on the data path's decision point (once per request), so its cost must stay
far below a request's. Baseline: random.choice over the same replicas (what a table-less
router would do). Prints a table and writes bench/results/routing.json.

    .venv/bin/python bench/routing.py
"""

import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

from fabric.routing.pick import rank_by_table
from fabric.scheduling.table import RoutingTable, SmoothWeightedRoundRobin


def per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main(n: int = 200_000) -> dict:
    rows = []
    for n_regions, per_region in [(2, 1), (4, 4), (16, 8)]:
        regions = [f"r{i}" for i in range(n_regions)]
        replicas = [SimpleNamespace(region=r) for r in regions for _ in range(per_region)]
        table = RoutingTable(version=1, weights={r: 1.0 + i for i, r in enumerate(regions)})
        wrr = SmoothWeightedRoundRobin()
        fabric = per_call_us(lambda: rank_by_table(table, wrr, replicas, lambda x: x.region), n)
        base = per_call_us(lambda: random.choice(replicas), n)
        rows.append({"regions": n_regions, "replicas": len(replicas), "fabric_us": round(fabric, 2),
                     "baseline_us": round(base, 2), "ratio": round(fabric / base, 1)})
    print(f"{'regions':>8} {'replicas':>9} {'fabric µs':>10} {'random µs':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['regions']:>8} {r['replicas']:>9} {r['fabric_us']:>10} {r['baseline_us']:>10} {r['ratio']:>6}")
    out = Path(__file__).parent / "results" / "routing.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    return {"rows": rows}


if __name__ == "__main__":
    main()
