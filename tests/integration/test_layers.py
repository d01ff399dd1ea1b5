"""Layers 1–3 as actors on the local multi-node cluster, placed on their sites' nodes."""

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import ray

from conftest import POWER_SOURCES, wait_for
from fabric.layers import naming

pytestmark = pytest.mark.integration


def actor(name):
    return ray.get_actor(name, namespace=naming.NAMESPACE)


def gpu_monitor(site):
    [name] = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
              if a["name"].startswith(naming.gpu_prefix(site))]
    return actor(name)


def test_every_layer_has_its_named_actors_on_the_right_nodes(fabric):
    from fabric.layers.stack import fabric_actor_names

    names = fabric_actor_names()
    sites = [s.name for _, s in fabric.spec.sites]
    assert naming.SCHEDULER in names
    # one actor for every site (layers 1 and 2), on the head: a site's state outlives its nodes
    assert naming.SITES in names and not any(n.startswith("fabric:site:") for n in names)
    assert ray.get(actor(naming.SITES).where.remote())["labels"]["fabric/role"] == "head"
    assert [s["site"] for s in ray.get(actor(naming.SITES).states.remote())] == sites
    with pytest.raises(ray.exceptions.RayTaskError, match="unknown site 'atlantis'"):
        ray.get(actor(naming.SITES).state.remote("atlantis"))
    for site in sites:
        where = ray.get(gpu_monitor(site).where.remote())
        assert where["labels"]["fabric/site"] == site
        assert naming.gpu(site, where["node_id"]) in names  # named after its node
    assert sum(n.startswith("fabric:gpu:") for n in names) == len(sites)  # one per site node


def test_each_model_has_one_ingress_router_on_the_head(fabric):
    """HAProxy (HeadOnly) asks each model app's ingress router which replica to use: one
    router per app on the head, not one per node that holds replicas."""
    from fabric.internals import serve_controller

    head = next(n["NodeID"] for n in ray.nodes()
                if n["Alive"] and (n.get("Labels") or {}).get("fabric/role") == "head")
    details = ray.get(serve_controller().get_serve_instance_details.remote())
    routers = {name: [r for r in app["deployments"]["LLMRouter"]["replicas"]
                      if r["state"] == "RUNNING"]
               for name, app in details["applications"].items() if "LLMRouter" in app["deployments"]}
    assert len(routers) == len(fabric.spec.models)
    for app, replicas in routers.items():
        assert [r["node_id"] for r in replicas] == [head], (app, replicas)


def test_power_grid_replays_real_data_at_given_times(fabric):
    site = fabric.spec.regions[0].sites[0]  # edge-a: CISO carbon and price series
    sites = actor(naming.SITES)
    with open(site.power.carbon_g_per_kwh.file) as f:
        carbon = list(csv.DictReader(f))
    with open(site.power.price_usd_per_mwh.file) as f:
        price = list(csv.DictReader(f))
    for hour in (0, 5, 100):
        state = ray.get(sites.state_at.remote(site.name, hour * 3600 + 1))
        assert state["carbon_g_per_kwh"] == pytest.approx(float(carbon[hour]["avg_CI"]), abs=1e-3)
        assert state["price_usd_per_mwh"] == pytest.approx(float(price[hour]["Price (USD/MWh)"]), abs=1e-3)
        assert state["budget_w"] == site.power.budget_mw * 1e6


def test_curtailment_raises_an_event(fabric, power):
    site = next(s for _, s in fabric.spec.sites if s.power.curtailments)
    cut = power.curtailment(site.name)
    sites = power.sites
    held = power.seek(site.name, cut.start_s - 1, speed=0)  # the replay held just before it
    assert not held["curtailed"] and ray.get(sites.event_log.remote(site.name)) == []
    power.seek(site.name, cut.start_s - 1)  # released at the spec's speed: it crosses the start
    state = wait_for("the curtailment to start", lambda: (
        st := ray.get(sites.state.remote(site.name)))["curtailed"] and st, timeout=60)
    assert state["budget_w"] == pytest.approx(site.power.budget_mw * 1e6 * cut.budget_fraction)
    events = ray.get(sites.event_log.remote(site.name))
    assert [(e["kind"], e["offset_s"], e["site"]) for e in events] == [
        ("curtailment_start", cut.start_s, site.name)]


def test_modelled_gpu_power_rises_with_load(fabric):
    mon = gpu_monitor("edge-a")
    idle = wait_for("edge-a's engine idle", lambda: (r := ray.get(mon.reading.remote()))[
        "engine_utilisation"] == 0 and r, timeout=60)
    assert idle["source"] in POWER_SOURCES and all(g["source"] == idle["source"] for g in idle["gpus"])

    def load():  # pinned to the edge region: every request is edge-a's
        body = {"model": fabric.spec.model.id, "max_tokens": 200, "ignore_eos": True,
                "messages": [{"role": "user", "content": "load"}], "metadata": {"fabric_region": "edge"}}
        with httpx.Client(timeout=120, headers={"authorization": "Bearer fabric-local"}) as c:
            for _ in range(3):
                assert c.post(f"{fabric.base_url}/chat/completions", json=body).status_code == 200

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    busy = wait_for("edge-a's engine busy", lambda: (r := ray.get(mon.reading.remote()))[
        "engine_utilisation"] > 0 and r, timeout=60, every=0.2)
    for t in threads:
        t.join()
    if idle["source"] == "model":  # modelled power follows the engine's load
        assert busy["power_w"] > idle["power_w"]
    else:  # NVML: the GPUs' own power, which an engine on the CPU does not move
        assert busy["power_w"] > 0
    # 24 requests × 200 tokens on edge-a, reported by its engine every 0.5 s
    after = wait_for("edge-a's tokens counted", lambda: (r := ray.get(mon.reading.remote()))[
        "tokens_out_total"] - idle["tokens_out_total"] >= 24 * 200 and r, timeout=60)
    site = ray.get(actor(naming.SITES).state.remote("edge-a"))
    assert site["power_source"] == idle["source"] and site["facility_power_w"] > 0


def test_status_command_reports_every_layer(fabric):
    r = subprocess.run([sys.executable, "-m", "fabric.cli", "status", "--address",
                        fabric.cluster.address, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    snap = json.loads(r.stdout)
    assert {s["site"] for s in snap["sites"]} == {"edge-a", "cloud-a", "cloud-b"}
    for s in snap["sites"]:
        assert s["budget_w"] > 0 and s["headroom_w"] == pytest.approx(
            s["budget_w"] - s["facility_power_w"], abs=0.1)
    sources = {n["source"] for n in snap["nodes"]}
    assert len(sources) == 1 and sources <= POWER_SOURCES
    assert {r["region"]: r["replicas"] for r in snap["regions"]} == {"edge": 1, "cloud": 2}
    assert snap["routing_table"]["policy"] == "fabric"
    costs = {s["site"]: s["cost_usd_per_mtok"] for s in snap["sites"]}  # the merit order's
    assert all(c > 0 for c in costs.values()) and costs["cloud-a"] < costs["edge-a"], costs
    human = subprocess.run([sys.executable, "-m", "fabric.cli", "status", "--address",
                            fabric.cluster.address], capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and f"source={sources.pop()}" in human.stdout


def _descendants_named(prefix: str) -> list:
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith(prefix):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_each_cpu_engine_worker_runs_one_gloo_loop(fabric):
    """The fabric's vLLM plugin (fabric.internals.share_gloo_device) loads in every engine's
    worker: its 13 gloo groups share one device, so one 10 ms loop thread instead of 13."""
    workers = _descendants_named("VLLM::Worker")
    assert workers, "no engine worker found among this session's processes"
    for w in workers:
        names = [Path(f"/proc/{w.pid}/task/{t}/comm").read_text().strip()
                 for t in os.listdir(f"/proc/{w.pid}/task")]
        assert names.count("gloo_tcp_loop") == 1, (w.pid, sorted(set(names)))
