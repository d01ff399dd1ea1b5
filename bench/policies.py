"""Every registered policy on the same traffic and the same grid: energy cost, carbon and SLO
attainment, each against least_load measured in the same run.

The fabric: ``fabric.sim.scenario.grid_spec`` — sites spread over five US grids replaying the
shipped price and carbon series, each with one binding curtailment in the day. The traffic:
a seeded diurnal day at ``--load`` × the fleet's capacity. Prints a table; writes
bench/results/policies.json (and traffic plots with ``--plots DIR``).

``--scale`` instead runs one policy over 1,000 sites × 10 million requests and prints the
simulation rate and peak memory (bench/results/sim_scale.json).

    .venv/bin/python bench/policies.py
    .venv/bin/python bench/policies.py --scale
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from fabric.scheduling.policies import POLICIES
from fabric.sim.command import capacity_rps
from fabric.sim.engine import SimConfig, Simulator
from fabric.sim.plots import traffic_plots
from fabric.sim.scenario import grid_spec
from fabric.sim.traces import SyntheticTrace

RESULTS = Path(__file__).parent / "results"
BASELINE = "least_load"


def diurnal(sim: Simulator, load: float, hours: float, seed: int) -> SyntheticTrace:
    shape = SyntheticTrace(kind="diurnal", requests=1, rate_per_s=1.0, seed=seed)
    rate = load * capacity_rps(sim.fleet, *shape.mean_tokens())
    return shape.model_copy(update={"rate_per_s": rate, "requests": int(rate * hours * 3600)})


def compare(sites: int, hours: float, load: float, seed: int, tick_s: float, plots: Path | None) -> dict:
    spec = grid_spec(sites, seed=seed, tick_s=tick_s)
    rows = []
    for name in sorted(POLICIES):
        sim = Simulator(spec, SimConfig.from_spec(spec, policy=name))
        trace = diurnal(sim, load, hours, seed)
        r = sim.run(trace)
        out_tokens = sum(s.output_tokens for s in r.per_site)
        if plots:
            traffic_plots(sim.timeline, sim.fleet.names, sim.curtailments(), plots / name,
                          f"{name} on {spec.name}: traffic share by site")
        rows.append({"policy": name, "arrivals": r.arrivals, "served": r.served, "dropped": r.dropped,
                     "slo_attainment": round(r.slo_attainment, 5), "ttft_p99_s": round(r.ttft_p99_s, 3),
                     "energy_mwh": round(r.energy_mwh, 4), "energy_cost_usd": round(r.energy_cost_usd, 2),
                     "carbon_kg": round(r.carbon_kg, 1), "usd_per_mtok": round(r.usd_per_mtok, 5),
                     "kg_co2_per_mtok": round(r.carbon_kg / out_tokens * 1e6, 4) if out_tokens else 0.0,
                     "wall_s": round(r.wall_s, 2), "requests_per_s": round(r.requests_per_s)})
    base = next(r for r in rows if r["policy"] == BASELINE)
    for r in rows:
        r["cost_vs_least_load"] = round(r["energy_cost_usd"] / base["energy_cost_usd"], 4)
        r["carbon_vs_least_load"] = round(r["carbon_kg"] / base["carbon_kg"], 4)
        r["usd_per_mtok_vs_least_load"] = round(r["usd_per_mtok"] / base["usd_per_mtok"], 4)
        r["co2_per_mtok_vs_least_load"] = round(r["kg_co2_per_mtok"] / base["kg_co2_per_mtok"], 4)
        r["slo_vs_least_load"] = round(r["slo_attainment"] / base["slo_attainment"], 4)
    scenario = {"spec": spec.name, "sites": sites, "hours": hours, "load": load, "seed": seed,
                "tick_s": tick_s, "requests": base["arrivals"], "model": spec.model.id,
                "curtailments": sum(len(s.power.curtailments) for _, s in spec.sites)}
    print(f"{sites} sites, {hours:g} h diurnal at {load:.0%} of capacity, {base['arrivals']:,} requests, "
          f"{scenario['curtailments']} curtailments; ratios against {BASELINE}")
    print("×: ratio to least_load; per Mtok: per million output tokens served")
    head = (f"{'policy':<16} {'SLO':>7} {'dropped':>9} {'MWh':>7} {'cost $':>8} {'kg CO2':>8} "
            f"{'cost×':>6} {'CO2×':>6} {'$/Mtok×':>8} {'CO2/Mtok×':>10} {'SLO×':>6} {'req/s sim':>10}")
    print(head)
    for r in rows:
        print(f"{r['policy']:<16} {r['slo_attainment']:>7.2%} {r['dropped']:>9,} {r['energy_mwh']:>7.3f} "
              f"{r['energy_cost_usd']:>8,.2f} {r['carbon_kg']:>8,.1f} {r['cost_vs_least_load']:>6.3f} "
              f"{r['carbon_vs_least_load']:>6.3f} {r['usd_per_mtok_vs_least_load']:>8.3f} "
              f"{r['co2_per_mtok_vs_least_load']:>10.3f} {r['slo_vs_least_load']:>6.3f} {r['requests_per_s']:>10,}")
    return {"scenario": scenario, "policies": rows}


def scale(sites: int, requests: int, seed: int, tick_s: float, policy: str) -> dict:
    start = time.perf_counter()
    spec = grid_spec(sites, seed=seed, tick_s=tick_s, policy=policy)
    sim = Simulator(spec, SimConfig.from_spec(spec))
    shape = SyntheticTrace(kind="diurnal", requests=requests, rate_per_s=1.0, seed=seed)
    trace = shape.model_copy(update={"rate_per_s": 0.6 * capacity_rps(sim.fleet, *shape.mean_tokens())})
    r = sim.run(trace)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = usage.ru_maxrss / 1024
    out = {"sites": sites, "requests": r.arrivals, "policy": policy, "tick_s": tick_s,
           "simulated_s": r.duration_s, "ticks": round(r.duration_s / tick_s), "wall_s": round(wall, 1),
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "requests_per_s": round(r.arrivals / wall), "peak_rss_mb": round(rss_mb),
           "served": r.served, "dropped": r.dropped, "slo_attainment": round(r.slo_attainment, 5)}
    print(f"{sites:,} sites, {r.arrivals:,} requests ({policy}, tick {tick_s:g} s, "
          f"{r.duration_s / 3600:.2f} h simulated): {wall:.1f} s wall ({out['cpu_s']:.1f} s CPU), "
          f"{out['requests_per_s']:,} requests/s, peak RSS {out['peak_rss_mb']} MB")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--load", type=float, default=0.5, help="mean arrival rate / fleet capacity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tick", type=float, default=2.0, help="scheduler tick, s")
    ap.add_argument("--plots", type=Path, help="write each policy's traffic plots under this folder")
    ap.add_argument("--scale", action="store_true", help="1,000 sites × 10M requests: rate and memory")
    ap.add_argument("--scale-sites", type=int, default=1000)
    ap.add_argument("--scale-requests", type=int, default=10_000_000)
    args = ap.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    if args.scale:
        result = scale(args.scale_sites, args.scale_requests, args.seed, 1.0, "fabric")
        (RESULTS / "sim_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    else:
        result = compare(args.sites, args.hours, args.load, args.seed, args.tick, args.plots)
        (RESULTS / "policies.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
