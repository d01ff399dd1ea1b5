"""Agent swarms (layer 7) as Ray actors against the real fabric: local cluster, vLLM on CPU."""

import json
import subprocess
import sys
import threading
import time
from collections import defaultdict

import httpx
import pytest
import ray

from fabric.agents import Workload, load_workload, run
from fabric.status import gather

pytestmark = pytest.mark.integration


def _small(name: str, **update) -> Workload:
    wl = load_workload(name)
    small = {"system_prompt_words": 20, "task_words": 20, "followup_words": 6, "steps": 3,
             "max_tokens": 8, "think_s": 0.1, "tasks_per_agent": 1, "branching": {},
             "arrival": {"pattern": "steady", "ramp_s": 1}}
    return Workload.model_validate({**wl.model_dump(), **small, **update})


def _alive_swarms() -> list:
    """Swarm actors still registered (killed named actors leave the GCS list)."""
    deadline = time.monotonic() + 10
    while True:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("fabric:swarm:")]
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.5)


def test_swarm_completes_every_task_with_growing_prompts_and_metered_tokens(fabric):
    wl = _small("coding", hints={"tier": "auto"})
    report = run(wl, agents=6, swarms=2, base_url=fabric.base_url, progress=False)
    assert report.tasks_completed == 6 and report.steps == report.succeeded == 18
    assert report.refused == report.errors == report.cancelled == 0
    assert len({u["pid"] for u in report.swarm_usage}) == 2
    assert len({u["node_id"] for u in report.swarm_usage}) == 2  # spread over the nodes
    # every step metered by the fabric: the swarm's token counts are the ledger's, no answer
    # longer than max_tokens (the offline model may stop early), the per-task cost from them
    assert report.costs is not None and report.costs.records == 18
    assert report.tokens_out == report.costs.completion_tokens > 0
    assert report.tokens_in == report.costs.prompt_tokens > 0
    assert report.costs.max_completion_tokens <= wl.max_tokens.mean  # a constant 8
    assert report.costs.billed_usd > 0 and report.costs.energy_j > 0
    assert report.costs.per_task_usd == pytest.approx(report.costs.billed_usd / 6, rel=1e-3)
    # tier=auto: the classifier reads the conversation, model output included (random text
    # from the offline model), so a step may go to the large model's site too
    hosting = {s.name for m in fabric.spec.models for _, s in fabric.spec.hosting_sites(m)}
    assert report.site_share and set(report.site_share) <= hosting == {"edge-a", "cloud-a", "cloud-b"}
    assert not _alive_swarms()


def test_prompts_grow_step_by_step_in_each_conversation(fabric):
    wl = _small("support", steps=4, think_s=0, max_tokens=6, tasks_per_agent=1,
                arrival={"pattern": "all_at_once"})
    # run() returns aggregates; the per-step records come straight from one swarm actor
    steps = _steps_of_run(fabric, wl, agents=3)
    conv = defaultdict(list)
    for s in steps:
        conv[(s.agent, s.task)].append(s)
    assert len(conv) == 3
    for seq in conv.values():
        prompts = [s.prompt_tokens for s in sorted(seq, key=lambda s: s.step)]
        assert len(prompts) == 4 and all(b > a for a, b in zip(prompts, prompts[1:])), prompts


def _steps_of_run(fabric, wl, agents):
    from fabric.agents.agent import Endpoint
    from fabric.agents.swarm import _actor_class

    swarm = _actor_class().remote()
    try:
        ray.get(swarm.start.remote(wl, list(range(agents)), [0.0] * agents,
                                   Endpoint(fabric.base_url, "fabric-local", fabric.spec.model.id),
                                   None, 0, "steps-run"))
        assert ray.get(swarm.wait.remote(120))
        steps, _ = ray.get(swarm.results.remote())
        return steps
    finally:
        ray.kill(swarm)


def test_privacy_workload_lands_only_on_edge_sites(fabric):
    edge = {s.name for r in fabric.spec.regions if r.edge for s in r.sites}
    wl = _small("health_records")
    assert wl.hints.privacy == "edge"
    report = run(wl, agents=4, base_url=fabric.base_url, progress=False)
    assert report.succeeded == report.steps == 12
    assert set(report.site_share) <= edge and report.site_share


def _stop_once_steps_succeed(stop: threading.Event, steps: int, timeout: float = 300) -> None:
    """Set ``stop`` once the running swarms report ``steps`` successful steps (the event
    itself, not a guess at how long that takes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        actors = [ray.get_actor(a["name"], namespace=a["namespace"])
                  for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("fabric:swarm:")]
        try:
            if actors and sum(p["ok"] for p in ray.get([a.progress.remote() for a in actors])) >= steps:
                break
        except ray.exceptions.RayError:
            pass  # a swarm starting or going: look again
        time.sleep(0.5)
    stop.set()


def test_swarm_stopped_mid_run_leaves_no_actors_or_requests(fabric):
    wl = _small("coding", steps=200, think_s=0, max_tokens=64, tasks_per_agent=1)
    stop = threading.Event()
    threading.Thread(target=_stop_once_steps_succeed, args=(stop, 8), daemon=True).start()
    report = run(wl, agents=8, base_url=fabric.base_url, progress=False, stop=stop)
    assert report.stopped_early
    assert report.succeeded > 0 and report.tasks_completed == 0
    assert not _alive_swarms()
    deadline = time.monotonic() + 30  # the engines drop the closed requests
    while time.monotonic() < deadline:
        inflight = sum(r["inflight"] for r in gather()["regions"])
        if inflight == 0:
            break
        time.sleep(1)
    assert inflight == 0


def test_agents_run_command(fabric, tmp_path):
    wl = tmp_path / "tiny_support.yaml"
    wl.write_text(_small("support", steps=2, think_s=0, max_tokens=4).model_dump_json())
    out = tmp_path / "report.json"
    cli = [sys.executable, "-m", "fabric.cli", "agents", "run"]
    where = ["--address", fabric.cluster.address, "--url", fabric.base_url]
    done = subprocess.run(cli + [str(wl), "--agents", "3", "--report-json", str(out)] + where,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["tasks_completed"] == 3 and report["succeeded"] == report["steps"] == 6
    assert "agent swarm report" in done.stdout
    bad = subprocess.run(cli + ["no-such-workload"] + where, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no workload 'no-such-workload'" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


def test_deadline_steps_go_through_the_deferred_queue(fabric):
    started = time.time()
    wl = _small("batch_summariser", steps=2, hints={"tier": "small", "deadline_s": 20})
    report = run(wl, agents=2, base_url=fabric.base_url, progress=False)
    assert report.succeeded == report.steps == 4 and report.refused == report.errors == 0
    assert report.site_share and set(report.site_share) <= {"edge-a", "cloud-a"}
    assert report.costs is not None and report.costs.records == 4   # metered like any request
    jobs = httpx.get(fabric.tenant_api_url + "/deferred", timeout=30,
                     headers={"authorization": "Bearer fabric-local"}).json()["data"]
    mine = [j for j in jobs if j["created_at"] >= started]
    assert len(mine) >= 4 and all(j["status"] == "completed" for j in mine)
