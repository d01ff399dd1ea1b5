"""Layers 1–3 as actors on the local multi-node cluster, placed on their sites' nodes."""

import csv
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
import ray

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
    for site in sites:
        for name in (naming.power(site), naming.aidc(site)):
            assert name in names
            assert ray.get(actor(name).where.remote())["labels"]["fabric/site"] == site
        where = ray.get(gpu_monitor(site).where.remote())
        assert where["labels"]["fabric/site"] == site
        assert naming.gpu(site, where["node_id"]) in names  # named after its node
    assert sum(n.startswith("fabric:gpu:") for n in names) == len(sites)  # one per site node


def test_power_grid_replays_real_data_at_given_times(fabric):
    site = fabric.spec.regions[0].sites[0]  # edge-a: CISO carbon and price series
    grid = actor(naming.power(site.name))
    with open(site.power.carbon_g_per_kwh.file) as f:
        carbon = list(csv.DictReader(f))
    with open(site.power.price_usd_per_mwh.file) as f:
        price = list(csv.DictReader(f))
    for hour in (0, 5, 100):
        state = ray.get(grid.state_at.remote(hour * 3600 + 1))
        assert state["carbon_g_per_kwh"] == pytest.approx(float(carbon[hour]["avg_CI"]), abs=1e-3)
        assert state["price_usd_per_mwh"] == pytest.approx(float(price[hour]["Price (USD/MWh)"]), abs=1e-3)
        assert state["budget_w"] == site.power.budget_mw * 1e6


def test_curtailment_raises_an_event(fabric):
    site = next(s for _, s in fabric.spec.sites if s.power.curtailments)
    cut = site.power.curtailments[0]
    grid = actor(naming.power(site.name))
    ray.get(grid.seek.remote(cut.start_s - 1))
    assert ray.get(grid.event_log.remote()) == []
    time.sleep(1.0)  # the clock runs at spec speed (>= 1x): it crosses the start
    state = ray.get(grid.state.remote())
    assert state["curtailed"] and state["budget_w"] == pytest.approx(
        site.power.budget_mw * 1e6 * cut.budget_fraction)
    events = ray.get(grid.event_log.remote())
    assert [(e["kind"], e["offset_s"], e["site"]) for e in events] == [
        ("curtailment_start", cut.start_s, site.name)]
    ray.get(grid.seek.remote(0))


def test_modelled_gpu_power_rises_with_load(fabric):
    mon = gpu_monitor("edge-a")
    time.sleep(3.5)  # let any earlier load go stale
    idle = ray.get(mon.reading.remote())
    assert idle["source"] == "model" and all(g["source"] == "model" for g in idle["gpus"])

    def load():
        body = {"model": fabric.spec.model.id, "max_tokens": 200, "ignore_eos": True,
                "messages": [{"role": "user", "content": "load"}]}
        with httpx.Client(timeout=120, headers={"authorization": "Bearer fabric-local"}) as c:
            for _ in range(3):
                c.post(f"{fabric.base_url}/chat/completions", json=body)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    busy = idle
    deadline = time.time() + 30
    while time.time() < deadline and busy["power_w"] <= idle["power_w"]:
        time.sleep(0.5)
        busy = ray.get(mon.reading.remote())
    for t in threads:
        t.join()
    assert busy["power_w"] > idle["power_w"]
    assert busy["engine_utilisation"] > idle["engine_utilisation"]
    time.sleep(1.0)  # the engine reports every 0.5 s
    after = ray.get(mon.reading.remote())
    # 24 requests × 200 tokens, about half of them routed to edge-a
    assert after["tokens_out_total"] - idle["tokens_out_total"] >= 600
    site = ray.get(actor(naming.aidc("edge-a")).state.remote())
    assert site["power_source"] == "model" and site["facility_power_w"] > 0


def test_status_command_reports_every_layer(fabric):
    r = subprocess.run([sys.executable, "-m", "fabric.cli", "status", "--address",
                        fabric.cluster.address, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    snap = json.loads(r.stdout)
    assert {s["site"] for s in snap["sites"]} == {"edge-a", "cloud-a", "cloud-b"}
    for s in snap["sites"]:
        assert s["budget_w"] > 0 and s["headroom_w"] == pytest.approx(
            s["budget_w"] - s["facility_power_w"], abs=0.1)
    assert all(n["source"] == "model" for n in snap["nodes"])
    assert {r["region"]: r["replicas"] for r in snap["regions"]} == {"edge": 1, "cloud": 2}
    assert snap["routing_table"]["policy"] == "fabric"
    human = subprocess.run([sys.executable, "-m", "fabric.cli", "status", "--address",
                            fabric.cluster.address], capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and "source=model" in human.stdout
