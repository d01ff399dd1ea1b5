"""``fabric simulate --html``: the live page's views of a simulated run (pure: no Ray)."""

import re
from io import StringIO
from pathlib import Path

from rich.console import Console

from fabric.sim.command import simulate
from fabric.sim.html import read_replay
from fabric.sim.engine import SimConfig, Simulator
from fabric.sim.traces import SyntheticTrace
from test_sim import PROFILE, two_sites

ROOT = Path(__file__).resolve().parents[2]


def recorded(max_bins=240, **config):
    cut = {"curtailments": [{"start_s": 20, "duration_s": 20, "budget_fraction": 0.01}]}
    spec = two_sites(cheap=cut, nodes=2, budget_mw=0.01)
    sim = Simulator(spec, SimConfig(tick_s=1.0, profiles=PROFILE, policy="fabric", **config),
                    record_bins=max_bins)
    result = sim.run(SyntheticTrace(kind="poisson", requests=600, rate_per_s=10, seed=1))
    return sim, result


def test_frames_add_up_to_the_run_and_show_the_curtailment():
    sim, result = recorded()
    frames = sim.recorder.frames(result.policy)
    assert len(frames) == sim.recorder.bins >= 55
    served = sum(g["served"] for f in frames for g in f["recent"]["groups"])
    assert served == result.served
    dropped = sum(g["refused"].get("dropped", 0) for f in frames for g in f["recent"]["groups"])
    assert dropped == result.dropped
    cost = sum(s["facility_power_w"] * f["bin_s"] for f in frames for s in f["sites"]) / 3.6e9
    assert abs(cost - result.energy_mwh) <= 1e-9 + 1e-6 * result.energy_mwh
    by_time = {f["time"]: {s["site"]: s for s in f["sites"]} for f in frames}
    assert by_time[30.0]["cheap"]["curtailed"] and not by_time[10.0]["cheap"]["curtailed"]
    assert by_time[30.0]["cheap"]["tokens_per_s"] == 0 and by_time[30.0]["dear"]["tokens_per_s"] > 0
    acts = [(a["action"], a["site"], a["at"]) for a in sim.recorder.actions]
    assert ("curtail", "cheap", 20.0) in acts and ("readmit", "cheap", 40.0) in acts
    curtail = next(a for a in sim.recorder.actions if a["action"] == "curtail")
    assert curtail["budget_kw"] < 1.0                   # 1 % of the 10 kW budget
    for f in frames:
        share = sum(s["tokens_per_s"] for s in f["sites"])
        groups = f["recent"]["groups"]
        assert all(g["ttft_p50_s"] <= g["ttft_p99_s"] for g in groups if g["served"])
        assert (share > 0) == any(g["served"] for g in groups)


def test_merged_bins_keep_the_totals():
    sim, result = recorded(max_bins=8)
    frames = sim.recorder.frames(result.policy)
    assert len(frames) <= 8 and sim.recorder.ticks_per_bin >= 8
    assert sum(g["served"] for f in frames for g in f["recent"]["groups"]) == result.served
    assert frames[-1]["time"] == result.duration_s
    assert all(b["time"] > a["time"] for a, b in zip(frames, frames[1:]))


def test_simulate_html_writes_one_self_contained_file(tmp_path):
    out = tmp_path / "run" / "sim.html"
    r = simulate(ROOT / "deployments" / "example-global.yaml", synthetic="poisson", requests=3000,
                 seed=2, html=out, console=Console(file=StringIO(), width=200))
    assert str(out) in r.plots
    html = out.read_text()
    assert re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html) == ["data:,"]
    data = read_replay(out)
    assert data["frames"] and data["end"] == data["frames"][-1]["time"]
    names = {s.name for s in r.per_site}
    assert {s["site"] for s in data["frames"][-1]["sites"]} == names
    assert dict(data["summary"])["arrivals / served / dropped"].startswith("3,000 / ")
