"""Agent workloads and the swarm's agent loop, against the trivial local responder (no Ray,
no model: the loop's own behaviour). The real-fabric path is tests/integration/test_swarm.py."""

import asyncio
import random
from collections import defaultdict

import pytest
from aiohttp import web

from fabric.agents.agent import Endpoint
from fabric.agents.report import build_report
from fabric.agents.stub import make_app
from fabric.agents.swarm import Swarm
from fabric.agents.workload import (
    Arrival,
    Dist,
    Workload,
    list_workloads,
    load_workload,
)
from fabric.cluster import free_port


def test_examples_cover_the_four_agent_kinds():
    by_name = {w.name: w for w in list_workloads()}
    assert {"coding", "support", "health_records", "batch_summariser"} <= set(by_name)
    assert by_name["coding"].hints.tier == "large" and by_name["coding"].context_limit_tokens
    assert by_name["support"].hints.tier == "small" and by_name["support"].hints.max_latency_ms
    assert by_name["health_records"].hints.privacy == "edge"
    assert by_name["batch_summariser"].hints.deadline_s >= 3600


def test_bad_workloads_say_why(tmp_path):
    with pytest.raises(ValueError, match="no workload 'nope'.*coding"):
        load_workload("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: {kind: uniform, low: 5, high: 2}\n")
    with pytest.raises(ValueError, match="high must be >= low"):
        load_workload(bad)
    bad.write_text("hints: {privacy: region}\n")
    with pytest.raises(ValueError, match="needs a region"):
        load_workload(bad)
    bad.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="stepz"):
        load_workload(bad)


def test_distributions_and_arrivals():
    rng = random.Random(1)
    assert Dist.model_validate(3).sample(rng) == 3
    xs = [Dist(kind="uniform", low=2, high=4).sample(rng) for _ in range(500)]
    assert 2 <= min(xs) and max(xs) <= 4
    ex = [Dist(kind="exponential", mean=2).sample(rng) for _ in range(4000)]
    assert 1.8 < sum(ex) / len(ex) < 2.2
    ln = [Dist(kind="lognormal", mean=2, sigma=0.5).sample(rng) for _ in range(4000)]
    assert 1.8 < sum(ln) / len(ln) < 2.2
    assert Arrival(pattern="steady", ramp_s=10).start_offsets(4, rng) == [0, 2.5, 5, 7.5]
    assert Arrival(pattern="bursty", ramp_s=10, bursts=2).start_offsets(4, rng) == [0, 0, 5, 5]
    assert Arrival(pattern="all_at_once").start_offsets(3, rng) == [0, 0, 0]
    day = Arrival(pattern="diurnal", period_s=100).start_offsets(2000, rng)
    middle = sum(25 <= t < 75 for t in day) / len(day)
    assert middle > 0.75  # 1 − cos peaks halfway: ~82% of starts in the middle half


async def _serve(edge: bool = True):
    runner = web.AppRunner(make_app(edge=edge), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, Endpoint(f"http://127.0.0.1:{port}/v1", "k", "stub-model")


async def _run(wl: Workload, agents: int, edge: bool = True, stop_after: float | None = None):
    runner, ep = await _serve(edge)
    swarm = Swarm()
    try:
        await swarm.start(wl, list(range(agents)), [0.0] * agents, ep, None, 7, "run1")
        if stop_after is None:
            assert await swarm.wait(30)
            await swarm.close()
            cut = 0
        else:
            await asyncio.sleep(stop_after)
            cut = await swarm.stop()
        return swarm, cut
    finally:
        await runner.cleanup()


def _conversations(steps):
    by = defaultdict(list)
    for s in steps:
        by[(s.agent, s.task, s.depth)].append(s)
    return by


def test_prompts_grow_with_carried_answers_and_every_step_is_recorded():
    wl = Workload(name="grow", steps=4, max_tokens=10, think_s=0, followup_words=5, tasks_per_agent=2)
    swarm, _ = asyncio.run(_run(wl, 5))
    assert len(swarm.steps) == 5 * 2 * 4 and all(s.ok and s.status == 200 for s in swarm.steps)
    assert swarm.counts["tasks"] == 10
    for conv in _conversations(swarm.steps).values():
        prompts = [s.prompt_tokens for s in sorted(conv, key=lambda s: s.step)]
        # each step adds the previous answer (10 words) and a follow-up ("Step k:" + 5 words)
        assert [b - a for a, b in zip(prompts, prompts[1:])] == [17, 17, 17]
    assert len({s.request_id for s in swarm.steps}) == len(swarm.steps)


def test_without_carried_answers_prompts_do_not_grow():
    wl = Workload(name="flat", steps=3, max_tokens=10, think_s=0, followup_words=5, carry_answers=False)
    swarm, _ = asyncio.run(_run(wl, 2))
    for conv in _conversations(swarm.steps).values():
        assert len({s.prompt_tokens for s in conv if s.step > 0}) == 1


def test_compaction_keeps_prompts_under_the_context_limit():
    wl = Workload(name="long", steps=12, max_tokens=60, think_s=0, followup_words=40,
                  context_limit_tokens=300, task_words=50)
    swarm, _ = asyncio.run(_run(wl, 2))
    assert all(s.ok for s in swarm.steps) and len(swarm.steps) == 24
    assert max(s.prompt_tokens for s in swarm.steps) <= 300


def test_branching_runs_sub_agents_from_the_parent_prefix():
    wl = Workload.model_validate({"name": "fan", "steps": 2, "max_tokens": 4, "think_s": 0,
                                  "branching": {"probability": 1, "fanout": 3, "steps": 2,
                                                "hints": {"tier": "small"}},
                                  "hints": {"tier": "large"}})
    swarm, _ = asyncio.run(_run(wl, 1))
    subs = [s for s in swarm.steps if s.depth == 1]
    parents = [s for s in swarm.steps if s.depth == 0]
    assert len(parents) == 2 and len(subs) == 2 * 3 * 2
    assert {s.tier for s in subs} == {"small"} and {s.tier for s in parents} == {"large"}
    first_parent = min(parents, key=lambda s: s.step)
    assert min(s.prompt_tokens for s in subs) > first_parent.prompt_tokens


def test_refusals_are_recorded_with_status_and_reason():
    wl = Workload.model_validate({"name": "private", "steps": 2, "think_s": 0,
                                  "hints": {"privacy": "edge"}})
    swarm, _ = asyncio.run(_run(wl, 3, edge=False))
    assert len(swarm.steps) == 6 and not any(s.ok for s in swarm.steps)
    report = build_report("run1", "private", 3, swarm.steps, 3, 1.0, [])
    assert report.refused == 6 and report.errors == 0
    assert report.refusals == {"503: privacy=edge: no edge site here": 6}


def test_stop_cancels_agents_mid_run():
    wl = Workload(name="slow", steps=50, max_tokens=4, think_s=5)
    swarm, cut = asyncio.run(_run(wl, 20, stop_after=0.5))
    assert cut == 20 and all(t.done() for t in swarm.tasks) and swarm.http is None
    assert all(s.step == 0 for s in swarm.steps if s.ok)  # nobody got past the first think


def test_report_groups_by_workload_and_tier():
    wl = Workload(name="rep", steps=3, max_tokens=8, think_s=0)
    swarm, _ = asyncio.run(_run(wl, 4))
    r = build_report("run1", "rep", 4, swarm.steps, swarm.counts["tasks"], 2.0,
                     [swarm.usage()], usage_rows=[{"billed_usd": 0.5, "energy_j": 8.0, "carbon_g": 0.2,
                                  "prompt_tokens": 10, "completion_tokens": c} for c in [8] * 11 + [3]])
    assert r.steps == r.succeeded == 12 and r.tasks_completed == 4
    answer = 8  # the stub responder always answers max_tokens
    assert r.by_workload["rep"].ok == 12 and r.by_tier["auto"].tokens_out == answer * 12
    assert r.site_share == {"stub-1": 1.0}
    assert r.costs.per_task_usd == pytest.approx(1.5) and r.costs.per_task_j == pytest.approx(24.0)
    assert (r.costs.prompt_tokens, r.costs.completion_tokens, r.costs.max_completion_tokens) == (120, 91, 8)
    assert r.by_tier["auto"].ttft_p50_ms is not None
