"""Capacity follows demand down to the machines: on a local cluster whose site raylets Ray's
autoscaler starts and releases (its fake multi-node provider: processes for machines), the
parked site's node is released once its engine is stopped and handed back, and started again
when a load the other site cannot take alone unparks it — every request a 200."""

import concurrent.futures as cf
import threading
import time

import httpx
import pytest
import ray

from conftest import wait_for
from fabric.cluster import free_port
from fabric.layers import naming
from fabric.runtime import running_fabric
from fabric.spec import SITE_LABEL, default_spec_path, load_spec

pytestmark = [pytest.mark.integration, pytest.mark.own_fabric]


def site_nodes_alive(site: str) -> list[str]:
    return [n["NodeID"] for n in ray.nodes()
            if n["Alive"] and (n.get("Labels") or {}).get(SITE_LABEL) == site]


def status() -> dict:
    return ray.get(ray.get_actor(naming.SCHEDULER, namespace=naming.NAMESPACE).status.remote())


def actions(kind: str, site: str, since: float) -> list[dict]:
    return [a for a in status()["actions"] if a.get("action") == kind and a.get("site") == site
            and a["at"] >= since]


@pytest.mark.timeout(1200)
def test_a_parked_site_s_node_is_released_and_started_again_under_load(tmp_path):
    spec = load_spec(default_spec_path())
    spec.models = spec.models[:1]  # the small model on edge-a and cloud-a; cloud-b unused
    for _, site in spec.sites:
        if site.name not in spec.models[0].hosting:
            site.local.llm_slots = 0
    spec.endpoint.port = free_port()
    spec.metering.path = str(tmp_path / "ledger")
    # after the profiles' curtailments, and held there: prices stand still, so does the order
    spec.power_clock.start_s = 50400 + 3600
    spec.power_clock.speed = 1e-6
    spec.scheduler.params.update({"park": True, "park_after_s": 5.0, "cold_start_s": 5.0})
    hosts = [s.name for _, s in spec.hosting_sites(spec.models[0])]
    model = spec.models[0].id
    with running_fabric(spec, autoscale=True) as fab:
        assert all(site_nodes_alive(h) for h in hosts)  # the engines brought their nodes up
        assert not site_nodes_alive("cloud-b")          # nothing needed one there

        def released():
            st = status()
            site = next((s for s in st["parked_sites"] if s in hosts), None)
            return site if site and not site_nodes_alive(site) else None

        site = wait_for("a parked site's node released by the autoscaler", released, timeout=300,
                        every=1.0)
        other = next(h for h in hosts if h != site)
        assert actions("hand_back", site, 0) and site_nodes_alive(other)
        snap = {s["name"]: s for s in status()["snapshot"]["sites"]}
        assert snap[site]["parked"] and not snap[site]["engines"]

        # a load the other site cannot take alone: unparked, its node started again by the
        # autoscaler, its engine serving — and every request a 200 meanwhile
        rested = time.time()
        body = {"model": model, "messages": [{"role": "user", "content": "scale"}],
                "max_tokens": 32, "ignore_eos": True}
        stop, results = threading.Event(), []

        def client(_):
            with httpx.Client(timeout=300) as c:
                while not stop.is_set():
                    r = c.post(f"{fab.base_url}/chat/completions", json=body,
                               headers={"authorization": "Bearer fabric-local"})
                    results.append((r.status_code, r.headers.get("x-fabric-site")))

        with cf.ThreadPoolExecutor(96) as pool:
            clients = [pool.submit(client, i) for i in range(96)]
            try:
                wait_for(f"{site} serving again on a node the autoscaler started",
                         lambda: site_nodes_alive(site) and any(
                             s == site for _, s in results[-200:]), timeout=300, every=1.0)
            finally:
                stop.set()
            for c in clients:
                c.result()
        assert actions("unpark", site, rested) and actions("take_back", site, rested)
        assert results and all(code == 200 for code, _ in results), sorted(set(results))
