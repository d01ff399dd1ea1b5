"""Every registered policy on the same traffic and the same grid: energy cost, carbon and SLO
attainment, each against least_load measured in the same run, and against the oracle — the
minimum-cost dispatch with perfect knowledge of arrivals and grid (``fabric.sim.oracle``, an LP:
a lower bound no policy can beat). ``oracle_capture_cost`` / ``oracle_capture_carbon``: the
share of the oracle's savings over least_load that a policy captures (1.0 = all of them);
``oracle_capture_objective``: the same for energy $ + carbon at the spec's carbon price, the
sum the fabric policy and the oracle both minimise.

Scenarios (``--scenario``, default all three): ``default`` — 10 sites on five US grids (the
shipped July week, seed 0), a diurnal day at 50 % of the fleet's capacity; ``second`` — seed 1
on the shipped January week; ``low`` — the default fleet at 15 % (consolidation is the lever).
Each site has one seeded curtailment in the day. Prints a table per scenario; writes
bench/results/policies.json (and traffic plots with ``--plots DIR``).

``--scale`` instead runs one policy over 1,000 sites × 10 million requests and prints the
simulation rate and peak memory (bench/results/sim_scale.json).

    .venv/bin/python bench/policies.py
    .venv/bin/python bench/policies.py --scenario low
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
from fabric.sim.oracle import solve as oracle
from fabric.sim.plots import traffic_plots
from fabric.sim.scenario import grid_spec
from fabric.sim.traces import SyntheticTrace

RESULTS = Path(__file__).parent / "results"
BASELINE = "least_load"
SCENARIOS = {"default": {"seed": 0, "week": "july", "load": 0.5},
             "second": {"seed": 1, "week": "january", "load": 0.5},
             "low": {"seed": 0, "week": "july", "load": 0.15}}


def diurnal(sim: Simulator, load: float, hours: float, seed: int) -> SyntheticTrace:
    shape = SyntheticTrace(kind="diurnal", requests=1, rate_per_s=1.0, seed=seed)
    rate = load * capacity_rps(sim.fleet, *shape.mean_tokens())
    return shape.model_copy(update={"rate_per_s": rate, "requests": int(rate * hours * 3600)})


def _row(name: str, r) -> dict:
    out_tokens = sum(s.output_tokens for s in r.per_site)
    return {"policy": name, "arrivals": r.arrivals, "served": r.served, "dropped": r.dropped,
            "slo_attainment": round(r.slo_attainment, 5), "ttft_p99_s": round(r.ttft_p99_s, 3),
            "energy_mwh": round(r.energy_mwh, 4), "energy_cost_usd": round(r.energy_cost_usd, 2),
            "carbon_kg": round(r.carbon_kg, 1), "usd_per_mtok": round(r.usd_per_mtok, 5),
            "kg_co2_per_mtok": round(r.carbon_kg / out_tokens * 1e6, 4) if out_tokens else 0.0,
            "wall_s": round(r.wall_s, 2), "requests_per_s": round(r.requests_per_s)}


def _capture(base: float, value: float, best: float) -> float:
    return round((base - value) / (base - best), 4) if base - best > 1e-12 else 0.0


def compare(name: str, sites: int, hours: float, load: float, seed: int, week: str, tick_s: float,
            plots: Path | None) -> dict:
    spec = grid_spec(sites, seed=seed, tick_s=tick_s, week=week)
    rows, trace, sim = [], None, None
    for policy in sorted(POLICIES):
        sim = Simulator(spec, SimConfig.from_spec(spec, policy=policy))
        trace = diurnal(sim, load, hours, seed)
        r = sim.run(trace)
        if plots:
            traffic_plots(sim.timeline, sim.fleet.names, sim.curtailments(), plots / name / policy,
                          f"{policy} on {spec.name}: traffic share by site")
        rows.append(_row(policy, r))
    best = oracle(spec, trace, sim.config)
    rows.append({"policy": "oracle", "arrivals": best.requests, "served": best.requests,
                 "dropped": 0, "slo_attainment": None, "energy_mwh": round(best.energy_mwh, 4),
                 "energy_cost_usd": round(best.energy_cost_usd, 2), "carbon_kg": round(best.carbon_kg, 1),
                 "parked_share": round(best.parked_share, 4), "slot_s": best.slot_s})
    base = next(r for r in rows if r["policy"] == BASELINE)
    carbon_price = spec.scheduler.carbon_price_usd_per_t
    for r in rows:
        r["cost_vs_least_load"] = round(r["energy_cost_usd"] / base["energy_cost_usd"], 4)
        r["carbon_vs_least_load"] = round(r["carbon_kg"] / base["carbon_kg"], 4)
        r["oracle_capture_cost"] = _capture(base["energy_cost_usd"], r["energy_cost_usd"],
                                            best.energy_cost_usd)
        r["oracle_capture_carbon"] = _capture(base["carbon_kg"], r["carbon_kg"], best.carbon_kg)
        # what the fabric policy and the oracle both minimise: energy $ + carbon at its price
        r["objective_usd"] = round(r["energy_cost_usd"] + r["carbon_kg"] / 1e3 * carbon_price, 2)
        r["oracle_capture_objective"] = _capture(
            base["energy_cost_usd"] + base["carbon_kg"] / 1e3 * carbon_price, r["objective_usd"],
            best.energy_cost_usd + best.carbon_kg / 1e3 * carbon_price)
        if r["policy"] != "oracle":
            r["usd_per_mtok_vs_least_load"] = round(r["usd_per_mtok"] / base["usd_per_mtok"], 4)
            r["co2_per_mtok_vs_least_load"] = round(r["kg_co2_per_mtok"] / base["kg_co2_per_mtok"], 4)
            r["slo_vs_least_load"] = round(r["slo_attainment"] / base["slo_attainment"], 4)
    scenario = {"name": name, "spec": spec.name, "sites": sites, "hours": hours, "load": load,
                "seed": seed, "week": week, "tick_s": tick_s, "requests": base["arrivals"],
                "model": spec.model.id, "curtailments": sum(len(s.power.curtailments) for _, s in spec.sites)}
    fab = next(r for r in rows if r["policy"] == "fabric")
    print(f"\n[{name}] {sites} sites, {week} week, seed {seed}, {hours:g} h diurnal at {load:.0%} of "
          f"capacity, {base['arrivals']:,} requests, {scenario['curtailments']} curtailments")
    print("×: ratio to least_load; capture: share of the oracle's savings over least_load")
    print(f"{'policy':<16} {'SLO':>7} {'dropped':>8} {'MWh':>7} {'cost $':>8} {'kg CO2':>8} "
          f"{'cost×':>6} {'CO2×':>6} {'capture $':>9} {'capture CO2':>11} {'capture $+CO2':>13}")
    for r in rows:
        slo = f"{r['slo_attainment']:.2%}" if r["slo_attainment"] is not None else "-"
        print(f"{r['policy']:<16} {slo:>7} {r['dropped']:>8,} {r['energy_mwh']:>7.3f} "
              f"{r['energy_cost_usd']:>8,.2f} {r['carbon_kg']:>8,.1f} {r['cost_vs_least_load']:>6.3f} "
              f"{r['carbon_vs_least_load']:>6.3f} {r['oracle_capture_cost']:>9.1%} "
              f"{r['oracle_capture_carbon']:>11.1%} {r['oracle_capture_objective']:>13.1%}")
    ceiling = (1 - best.energy_cost_usd / base["energy_cost_usd"], 1 - best.carbon_kg / base["carbon_kg"])
    print(f"targets: fabric SLO {fab['slo_attainment']:.2%} (>= 99 %); oracle's own savings over "
          f"least_load (the ceiling): {ceiling[0]:.1%} $, {ceiling[1]:.1%} CO2; fabric captures "
          f"{fab['oracle_capture_cost']:.1%} $ / {fab['oracle_capture_carbon']:.1%} CO2 (>= 80 %), "
          f"{fab['oracle_capture_objective']:.1%} of $ + CO2 at {carbon_price:g} $/t (what both minimise)"
          + (f"; saves {1 - fab['cost_vs_least_load']:.1%} of least_load's $ (>= 30 %)"
             if load <= 0.15 else ""))
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
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--tick", type=float, default=2.0, help="scheduler tick, s")
    ap.add_argument("--plots", type=Path, help="write each policy's traffic plots under this folder")
    ap.add_argument("--scale", action="store_true", help="1,000 sites × 10M requests: rate and memory")
    ap.add_argument("--scale-sites", type=int, default=1000)
    ap.add_argument("--scale-requests", type=int, default=10_000_000)
    args = ap.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    if args.scale:
        result = scale(args.scale_sites, args.scale_requests, 0, 1.0, "fabric")
        (RESULTS / "sim_scale.json").write_text(json.dumps(result, indent=2) + "\n")
        return result
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    runs = [compare(n, args.sites, args.hours, tick_s=args.tick, plots=args.plots, **SCENARIOS[n])
            for n in names]
    result = {**runs[0], "scenarios": runs}  # the first scenario's rows at the top, as before
    (RESULTS / "policies.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
