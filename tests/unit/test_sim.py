"""The simulator: conservation, determinism, hand-worked scenarios, loaders, plots (pure: no Ray)."""

import json
import math
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fabric.scheduling.policies import POLICIES
from fabric.sim.command import simulate
from fabric.sim.engine import SimConfig, Simulator, apportion, interleave
from fabric.sim.gpus import CATALOGUE, ServingProfile, model_params_b, serving_profile
from fabric.sim.scenario import grid_spec, scale_spec
from fabric.sim.traces import CsvTrace, MooncakeTrace, SyntheticTrace, open_trace
from fabric.spec import ModelSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
MOONCAKE = ROOT / "fabric" / "data" / "traces" / "mooncake_conversation_head2000.jsonl"
# A round-number GPU for hand calculations: one replica per GPU, 10,000 prompt tok/s,
# 10 ms per decode step of a 10-sequence batch (1,000 output tok/s per replica).
PROFILE = {"TEST": ServingProfile(tp=1, prefill_tok_s=10_000, step_s=0.01, batch=10)}
RIDE_TTFT = 0.1 + (1 - math.exp(-2.75)) * 1.5 * 0.01  # the steady trace's TTFT (worked below)


def two_sites(cheap=None, dear=None, nodes=1, budget_mw=1.0):
    def site(name, price, carbon, pue, curtailments=()):
        return {"name": name, "capacity_mw": 1.0, "pue": pue,
                "power": {"budget_mw": budget_mw, "price_usd_per_mwh": price, "carbon_g_per_kwh": carbon,
                          "curtailments": list(curtailments)},
                "node_pools": [{"gpu_type": "TEST", "gpus_per_node": 4, "nodes": nodes,
                                "tdp_w": 500, "idle_w": 100}]}
    return parse_spec({
        "name": "two", "models": [{"id": "m", "engine_kwargs": {"max_num_seqs": 10}}],
        "regions": [{"name": "r", "sites": [site("cheap", 20.0, 100.0, 1.5, **(cheap or {})),
                                            site("dear", 80.0, 50.0, 1.2, **(dear or {}))]}]})


def run(spec, trace, **config):
    config = {"tick_s": 1.0, "profiles": PROFILE, **config}
    sim = Simulator(spec, SimConfig(**config))
    return sim, sim.run(trace)


def write_csv(path, rows, header="timestamp_s,prompt_tokens,output_tokens"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


@pytest.fixture
def steady(tmp_path):
    """100 requests of 1,000 prompt and 100 output tokens, one every 0.1 s."""
    return CsvTrace(write_csv(tmp_path / "steady.csv", [(round(i / 10, 1), 1000, 100) for i in range(100)]))


def test_cheapest_energy_by_hand(steady):
    _, r = run(two_sites(), steady, policy="cheapest_energy")
    cheap, dear = r.per_site
    assert (r.arrivals, r.served, r.dropped, r.slo_met) == (100, 100, 0, 100)
    assert (cheap.served, dear.served, cheap.routed, dear.routed) == (100, 0, 100, 0)
    assert r.duration_s == 10.0
    # 4 replicas: 40,000 prompt tok/s and 4,000 output tok/s per site, so each request is
    # 0.025 + 0.025 = 0.05 site-seconds of work; 10 a second never queue.
    # TTFT: 1,000 / 10,000 tok/s of prefill, plus the ride on a busy engine: each request
    # holds a slot 0.1 + 100 × 10 ms = 1.1 s, so 11 run per site, 2.75 per engine; busy with
    # chance 1 - e^-2.75, a first token waits 1.5 steps of 10 ms (this profile's step is flat)
    assert r.ttft_p50_s == pytest.approx(RIDE_TTFT, rel=0.03)
    assert r.latency_p50_s == pytest.approx(RIDE_TTFT + 1.0, rel=0.03)   # + 100 × 10 ms
    # IT energy = idle 4 × 100 W × 10 s + dynamic 4 × 400 W × 5 site-seconds of work.
    cheap_j = (4 * 100 * 10 + 4 * 400 * 100 * 0.05) * 1.5
    dear_j = 4 * 100 * 10 * 1.2
    assert cheap.energy_mwh == pytest.approx(cheap_j / 3.6e9)
    assert dear.energy_mwh == pytest.approx(dear_j / 3.6e9)
    assert r.energy_cost_usd == pytest.approx(cheap_j / 3.6e9 * 20 + dear_j / 3.6e9 * 80)
    assert r.carbon_kg == pytest.approx((cheap_j * 100 + dear_j * 50) / 3.6e6 / 1e3)
    assert cheap.utilisation == pytest.approx(0.5)  # 5 site-seconds in 10 s
    assert r.goodput_rps == pytest.approx(10.0)
    assert r.goodput_tokens_per_s == pytest.approx(1000.0)


def test_lowest_carbon_and_round_robin_by_hand(steady):
    _, green = run(two_sites(), steady, policy="lowest_carbon")
    assert [s.served for s in green.per_site] == [0, 100]
    _, rr = run(two_sites(), steady, policy="round_robin")
    assert [s.served for s in rr.per_site] == [50, 50]  # smooth weighted round-robin shares


def test_a_curtailment_below_idle_sheds_the_site_under_fabric_only():
    cut = {"curtailments": [{"start_s": 20, "duration_s": 20, "budget_fraction": 0.01}]}
    spec = two_sites(cheap=cut, nodes=2, budget_mw=0.01)
    trace = SyntheticTrace(kind="poisson", requests=600, rate_per_s=10, seed=1)
    sim, fabric = run(spec, trace, policy="fabric")
    served = sim.timeline.served[: sim.timeline.bins]  # per 1 s tick: [cheap, dear]
    assert served[20:40, 0].sum() == 0 and served[20:40, 1].sum() > 150
    assert served[:20, 0].sum() > 150 and served[:20, 1].sum() == 0  # before: merit order
    assert served[45:60, 0].sum() > 100                  # after: readmitted, ramping back
    assert fabric.per_site[0].curtailed_s == 20.0
    assert fabric.dropped == 0 and fabric.per_site[0].overflow_out < 10  # shed, not spilled
    sim_rr, rr = run(spec, trace, policy="round_robin")
    rr_served = sim_rr.timeline.served[: sim_rr.timeline.bins]
    assert rr_served[20:40, 0].sum() == 0                # no power: nothing runs there...
    assert rr.per_site[0].overflow_out > fabric.per_site[0].overflow_out + 50  # ...so it spills


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_request_is_served_or_dropped_exactly_once(policy):
    spec = grid_spec(12, seed=3, tick_s=1.0)
    sim = Simulator(spec, SimConfig.from_spec(spec, policy=policy, max_wait_s=2.0))
    trace = SyntheticTrace(kind="bursty", requests=20_000, rate_per_s=150, seed=2, burst_factor=6)
    generated = sum(len(b) for b in trace.batches())
    r = sim.run(trace)
    assert r.arrivals == generated == 20_000
    assert r.served + r.dropped == r.arrivals
    assert r.dropped > 0 and r.served > 0  # overloaded in bursts: both outcomes occur
    sites = r.per_site
    assert sum(s.routed for s in sites) == r.arrivals
    assert sum(s.served for s in sites) == r.served
    assert sum(s.dropped for s in sites) == r.dropped
    assert sum(s.overflow_in for s in sites) == sum(s.overflow_out for s in sites)
    for s in sites:
        assert s.routed == s.kept + s.overflow_out + s.dropped
        assert s.served == s.kept + s.overflow_in
        assert 0 <= s.slo_met <= s.served and 0 <= s.utilisation <= 1
    assert r.by_tenant["default"].arrivals == r.arrivals
    assert r.by_class["default"].served == r.served
    assert sim.timeline.served.sum() == r.served


def test_same_seed_same_result_other_seed_other_result():
    spec = grid_spec(8, seed=0, tick_s=1.0)

    def once(seed):
        trace = SyntheticTrace(kind="diurnal", requests=5_000, rate_per_s=40, seed=seed, period_s=600)
        return Simulator(spec, SimConfig.from_spec(spec)).run(trace).outcome()

    first = once(7)
    assert once(7) == first
    assert once(8) != first


def test_synthetic_generators_have_their_shape():
    poisson = SyntheticTrace(kind="poisson", requests=20_000, rate_per_s=50, seed=1)
    t = np.concatenate([b.t for b in poisson.batches()])
    assert len(t) == 20_000 and np.all(np.diff(t) >= 0)
    assert 20_000 / t[-1] == pytest.approx(50, rel=0.05)
    diurnal = SyntheticTrace(kind="diurnal", requests=50_000, rate_per_s=50, seed=1, period_s=1000,
                             peak_s=250, amplitude=0.5)
    t = np.concatenate([b.t for b in diurnal.batches()])
    phase = t % 1000
    peak, trough = ((phase > 200) & (phase < 300)).sum(), ((phase > 700) & (phase < 800)).sum()
    assert peak / trough == pytest.approx(3.0, rel=0.15)  # (1 + 0.5) / (1 - 0.5)
    bursty = SyntheticTrace(kind="bursty", requests=20_000, rate_per_s=50, seed=1, burst_s=5)
    t = np.concatenate([b.t for b in bursty.batches()])
    per_s = np.bincount(t.astype(int))
    assert per_s.var() / per_s.mean() > 5  # Poisson would be ~1
    sizes = next(poisson.batches())
    assert sizes.prompt.min() >= 1 and np.median(sizes.prompt) == pytest.approx(1024, rel=0.1)


def test_csv_loader_reads_columns_labels_and_rejects_bad_traces(tmp_path):
    path = write_csv(tmp_path / "t.csv", [(0, 10, 5, "acme", "interactive"), (0.5, 20, 6, "zeta", "batch"),
                                          (1.5, 30, 7, "acme", "batch")],
                     header="timestamp_s,prompt_tokens,output_tokens,tenant,class")
    trace = open_trace(path)
    batch = next(trace.batches())
    assert batch.t.tolist() == [0, 0.5, 1.5] and batch.prompt.tolist() == [10, 20, 30]
    assert [trace.tenants[c] for c in batch.tenant] == ["acme", "zeta", "acme"]
    assert [trace.classes[c] for c in batch.klass] == ["interactive", "batch", "batch"]
    _, r = run(two_sites(), trace, policy="round_robin")
    assert r.by_tenant["acme"].arrivals == 2 and r.by_class["batch"].served == 2

    with pytest.raises(ValueError, match="missing column.*prompt_tokens"):
        next(CsvTrace(write_csv(tmp_path / "a.csv", [(0, 1)], header="timestamp_s,output_tokens")).batches())
    with pytest.raises(ValueError, match="row 2: timestamps must not decrease"):
        next(CsvTrace(write_csv(tmp_path / "b.csv", [(5, 1, 1), (4, 1, 1)])).batches())
    with pytest.raises(ValueError, match="row 1: prompt tokens must be >= 0"):
        next(CsvTrace(write_csv(tmp_path / "c.csv", [(0, -1, 1)])).batches())
    with pytest.raises(ValueError, match="column 'prompt_tokens' must be numeric"):
        next(CsvTrace(write_csv(tmp_path / "d.csv", [(0, "many", 1)])).batches())
    with pytest.raises(ValueError, match="unknown trace format"):
        open_trace(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="not found"):
        CsvTrace(tmp_path / "none.csv")


def test_mooncake_loader_reads_the_shipped_slice():
    lines = [json.loads(x) for x in MOONCAKE.read_text().splitlines()]
    trace = MooncakeTrace(MOONCAKE)
    batch = next(trace.batches())
    assert len(lines) == len(batch) == 2000
    assert batch.t[0] == 0 and batch.t[-1] == lines[-1]["timestamp"] / 1000
    assert batch.prompt.tolist() == [x["input_length"] for x in lines]
    assert batch.output.tolist() == [x["output_length"] for x in lines]
    # block 0 opens every prompt: the first request has nothing cached, the second its first block
    assert lines[1]["hash_ids"][0] == lines[0]["hash_ids"][0]
    assert batch.cached[:2].tolist() == [0, 512]
    assert np.all(batch.cached <= batch.prompt)


def test_prefix_cache_shortens_time_to_first_token():
    spec = load_spec(ROOT / "deployments" / "local.yaml")
    cold, warm = (Simulator(spec, SimConfig.from_spec(spec, prefix_cache=c)).run(MooncakeTrace(MOONCAKE))
                  for c in (False, True))
    assert cold.arrivals == warm.arrivals == 2000
    assert warm.ttft_p50_s < 0.8 * cold.ttft_p50_s


def test_mooncake_loader_names_the_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1}\n')
    with pytest.raises(ValueError, match="line 2: not a Mooncake record"):
        list(MooncakeTrace(bad).batches())


def test_simulate_command_runs_a_trace_prints_json_and_writes_plots(tmp_path):
    out = StringIO()
    r = simulate(ROOT / "deployments" / "local.yaml", trace=MOONCAKE, requests=500, policy="fabric",
                 plot_dir=tmp_path, json_out=True, console=Console(file=out, width=200))
    assert r.arrivals == 500 and r.served + r.dropped == 500
    assert json.loads(out.getvalue())["arrivals"] == 500
    assert [Path(p).name for p in r.plots] == ["traffic_share.png", "sites.png"]
    for p in r.plots:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000
    # the local spec hosts the model at edge-a and cloud-a only
    assert {s.name for s in r.per_site if s.served} <= {"edge-a", "cloud-a"}


def test_simulate_command_synthetic_scaled_and_errors():
    out = StringIO()
    r = simulate(ROOT / "deployments" / "example-global.yaml", synthetic="poisson", requests=2000,
                 sites=12, seed=3, console=Console(file=out, width=200))
    assert r.sites == 12 and r.arrivals == 2000 and "simulation rate" in out.getvalue()
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        simulate(policy="nope")
    with pytest.raises(ValueError, match="unknown synthetic load"):
        simulate(synthetic="spiky", console=Console(file=StringIO()))


def test_gpu_model():
    assert model_params_b(ModelSpec(id="x", source="meta-llama/Llama-3.1-8B-Instruct")) == 8
    assert model_params_b(ModelSpec(id="llama-3.1-70b")) == 70
    assert model_params_b(ModelSpec(id="tiny-llama", tier="large")) == 70
    h100, h200 = (serving_profile(CATALOGUE[g], 70, 64) for g in ("H100", "H200"))
    assert (h100.tp, h200.tp) == (4, 2)  # 140 GB of weights in 80 GB vs 141 GB GPUs
    assert h200.step_s == pytest.approx(140e9 / (2 * 0.6 * 4.8e12))
    assert serving_profile(CATALOGUE["H100"], 8, 64).prefill_tok_s == pytest.approx(0.4 * 989e12 / 16e9)
    assert serving_profile(CATALOGUE["L4"], 70, 64).tp == 8
    with pytest.raises(ValueError, match="needs 8 GPUs of 24 GB per replica; the node has 4"):
        serving_profile(CATALOGUE["L4"], 70, 64, max_tp=4)
    spec = two_sites()
    with pytest.raises(ValueError, match="unknown GPU type 'TEST'"):
        Simulator(spec, SimConfig())


def test_apportion_keeps_long_run_shares_and_interleaves():
    credit = np.zeros(3)
    total = sum(apportion(1, np.array([3.0, 1.0, 0.0]), credit) for _ in range(40))
    assert total.tolist() == [30, 10, 0]
    counts = apportion(7, np.array([1.0, 1.0, 5.0]))
    assert counts.sum() == 7 and counts[2] == 5
    assert interleave(np.array([2, 2])).tolist() == [0, 1, 0, 1]


def test_scale_spec_repeats_sites_and_their_hosting():
    spec = load_spec(ROOT / "deployments" / "local.yaml")
    big = scale_spec(spec, 7)
    names = [s.name for _, s in big.sites]
    assert names == ["edge-a", "edge-a-2", "edge-a-3", "cloud-a", "cloud-b", "cloud-a-2", "cloud-b-2"]
    assert [r.name for r in big.regions] == ["edge", "cloud"]
    assert set(big.model.hosting) == {"edge-a", "edge-a-2", "edge-a-3", "cloud-a", "cloud-a-2"}


def test_the_oracle_is_a_lower_bound_and_parks_what_the_demand_does_not_need():
    from fabric.sim.oracle import solve

    spec = grid_spec(6, seed=2, tick_s=2.0)
    trace = SyntheticTrace(kind="diurnal", requests=60_000, rate_per_s=8, seed=4, period_s=7200)
    best = solve(spec, trace, SimConfig.from_spec(spec), slot_s=600)
    assert best.unserved_share == 0 and best.requests == 60_000 and 0 < best.parked_share < 1
    price = spec.scheduler.carbon_price_usd_per_t / 1e6
    for policy in ("least_load", "fabric", "lowest_carbon"):
        r = Simulator(spec, SimConfig.from_spec(spec, policy=policy)).run(trace)
        assert best.objective_usd <= r.energy_cost_usd + r.carbon_kg * 1e3 * price + 1e-9, policy


def test_parked_capacity_draws_nothing_and_comes_back_after_its_cold_start():
    spec = two_sites()
    trace = SyntheticTrace(kind="poisson", requests=400, rate_per_s=2, seed=1)
    sim, r = run(spec, trace, policy="fabric", cold_start_s=30,
                 policy_params={"park_after_s": 5, "reserve": 0.1})
    cheap, dear = r.per_site
    assert dear.parked_s > 100 and dear.served == 0 and r.dropped == 0
    # the cheap site keeps only the engines 2 requests/s need, with room for their noise
    assert 0.1 < cheap.engines_released < 0.75 and cheap.parked_s == 0
    assert dear.engines_released >= dear.parked_s / r.duration_s
    # released engines draw nothing (4 GPUs × 100 W × PUE 1.2 with every engine on)
    on_s = r.duration_s * (1 - dear.engines_released)
    assert dear.energy_mwh == pytest.approx(4 * 100 * 1.2 * on_s / 3.6e9)


def test_public_csv_traces_are_read_as_published(tmp_path):
    azure = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                     "2023-11-16 18:15:50.5301600,396,109\n")
    tr = open_trace(azure)
    b = next(tr.batches())
    assert b.t.tolist() == pytest.approx([0.0, 3.84957]) and b.prompt.tolist() == [374, 396]
    assert tr.describe.endswith("(azure)")
    burst = tmp_path / "BurstGPT_1.csv"
    burst.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                     "5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,0,1087,API log\n")
    tr = open_trace(burst)
    b = next(tr.batches())
    assert b.t.tolist() == [5.0, 45.0] and b.output.tolist() == [18, 0] and tr.classes == ["ChatGPT", "GPT-4"]
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n")
    with pytest.raises(ValueError, match="datetimes"):
        list(open_trace(bad).batches())


def test_a_first_token_rides_the_step_of_a_busy_engine(tmp_path, steady):
    # one request alone meets an idle engine: prefill only
    _, alone = run(two_sites(), CsvTrace(write_csv(tmp_path / "one.csv", [(0.0, 1000, 100)])),
                   policy="cheapest_energy")
    assert alone.ttft_p50_s == pytest.approx(0.1, rel=0.03)
    # a step that is cheap with one sequence and dear with a full batch: 2.75 per engine ride
    # on a step of 2 + 8 × 1.75 / 9 ms, not the full batch's 10 ms
    light = {"TEST": PROFILE["TEST"].model_copy(update={"step1_s": 0.002})}
    _, r = run(two_sites(), steady, policy="cheapest_energy", profiles=light)
    step = 0.002 + 0.008 * 1.75 / 9
    assert r.ttft_p50_s == pytest.approx(0.1 + (1 - math.exp(-2.75)) * 1.5 * step, rel=0.03)
    assert r.ttft_p50_s < RIDE_TTFT


def test_a_fixed_time_to_first_token_and_the_signals_the_policy_sees(steady):
    # the profile's fixed time to a first token (the request path, one engine step) adds to
    # every TTFT: the TTFT by hand above + 0.05 s
    fixed = {"TEST": PROFILE["TEST"].model_copy(update={"ttft_fixed_s": 0.05})}
    _, r = run(two_sites(), steady, policy="fabric", profiles=fixed)
    assert r.ttft_p50_s == pytest.approx(RIDE_TTFT + 0.05, rel=0.03)
    assert [s.served for s in r.per_site] == [100, 0]   # the merit order: "cheap" first
    # the policy ranks on the signals it is given (e.g. the live scheduler's figures)
    _, r = run(two_sites(), steady, policy="fabric", signals={"cheap": {"j_per_token": 100.0}})
    assert [s.served for s in r.per_site] == [0, 100]
    with pytest.raises(ValueError, match="unknown site signals"):
        SimConfig(signals={"dear": {"j_per_tokn": 1.0}})


def test_a_curtailment_announced_ahead_has_parked_capacity_up_when_it_begins():
    # cheap is cut below its idle power at 300 s: dear, parked at low load, must be serving by
    # then (its cold start begun from the grid's schedule), or requests wait and drop
    cut = {"curtailments": [{"start_s": 300, "duration_s": 200, "budget_fraction": 0.0003}]}
    trace = SyntheticTrace(kind="poisson", requests=1400, rate_per_s=2, seed=3)
    sim, r = run(two_sites(cheap=cut), trace, policy="fabric", cold_start_s=30, max_wait_s=5,
                 policy_params={"park_after_s": 5, "reserve": 0.1, "serve_capped": False})
    cheap, dear = r.per_site
    assert dear.parked_s > 100 and dear.served > 300          # parked before, serving during
    assert r.dropped == 0 and r.slo_attainment > 0.99
