"""Capacity follows demand on the real fabric: with parking on, the small model's dearer site
to keep on (edge-a or cloud-a, by the hour's prices) is parked at rest — its engine stopped,
Serve's target lowered — and started again when a request only it may serve arrives (answered
503 + Retry-After meanwhile) and when a load the other site cannot take alone comes. The
session fabric runs with parking off; this test turns it on through the scheduler and restores
it (with every engine back) in teardown."""

import concurrent.futures as cf
import threading
import time

import pytest
import ray

from conftest import HTTP, at_rest, scheduler_status, wait_for
from fabric.layers import naming

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "park?"}]


def sched():
    return ray.get_actor(naming.SCHEDULER, namespace=naming.NAMESPACE)


def engines_at(status: dict, site: str) -> list[str]:
    return [e["replica"] for s in status["snapshot"]["sites"] if s["name"] == site
            for e in s["engines"] if e["healthy"]]


def parked(site: str):
    """The scheduler's status once ``site`` is parked and its engine stopped (else None)."""
    st = scheduler_status()
    return st if (st["parked_sites"] == [site] and site in st["released_sites"]
                  and not engines_at(st, site)) else None


def actions(kind: str, site: str, since: float) -> list[dict]:
    return [a for a in scheduler_status()["actions"]
            if a.get("action") == kind and a.get("site") == site and a["at"] >= since]


@pytest.fixture
def parking(fabric, power):
    """Parking on, with every site's grid held an hour after the session's replay start (no
    curtailment there): prices and carbon stand still, so the merit order does too."""
    held = fabric.spec.power_clock.start_s + 3600
    for _, s in fabric.spec.sites:
        power.seek(s.name, held, speed=0)
    before = ray.get(sched().configure.remote(park=True, park_after_s=5.0))
    try:
        yield
    finally:
        ray.get(sched().configure.remote(**before))

        def back():
            st = scheduler_status()
            return at_rest(st) and all(engines_at(st, s) for s in ("edge-a", "cloud-a"))

        wait_for("every engine back once parking is off", back, timeout=420, every=1.0)


def parked_site(hosts: list[str]):
    """The one host of the small model the policy parked, once its engine is stopped."""
    st = scheduler_status()
    site = next((s for s in st["parked_sites"] if s in hosts), None)
    return site if site and parked(site) else None


def test_the_dearer_site_parks_at_rest_and_comes_back_for_requests_only_it_may_serve_and_for_load(
        fabric, parking):
    model, spec = fabric.spec.model.id, fabric.spec
    hosts = [s.name for _, s in spec.hosting_sites(spec.model)]
    region = {s.name: r for r, s in spec.sites}
    started = time.time()
    # the dearer of the two to keep on at this hour (the merit order counts idle power too)
    site = wait_for("one small-model site parked at rest, its engine stopped",
                    lambda: parked_site(hosts), 180)
    other = next(h for h in hosts if h != site)
    st = scheduler_status()
    assert st["parked_sites"] == [site] and st["replica_targets"][model] == 1
    assert engines_at(st, other)
    assert actions("park", site, started)[0]["reason"] == "demand"
    assert any(a.get("action") == "scale_replicas" and a["stopped_at"] == [site]
               for a in st["actions"] if a["at"] >= started)

    # a request only the parked site may serve (pinned to its region): refused at once with a
    # reason and Retry-After (never served elsewhere), and its site is woken; the client's
    # retry is served there
    pinned = {"model": model, "messages": MSG, "max_tokens": 4,
              "metadata": {"fabric_region": region[site]}}
    woken = time.time()
    r = HTTP.post(f"{fabric.base_url}/chat/completions", json=pinned, timeout=120)
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
    assert f"{site} parked" in r.json()["error"]["message"]
    assert wait_for(f"{site} unparked by the request",
                    lambda: actions("unpark", site, woken), 30)[0]["reason"] == "request"

    def served_there():
        r = HTTP.post(f"{fabric.base_url}/chat/completions", json=pinned, timeout=120)
        assert r.status_code in (200, 503), r.text
        return r.status_code == 200 and r.headers.get("x-fabric-site") == site

    wait_for(f"the pinned request served at {site} once it is up", served_there, 360, every=3.0)

    # idle again: parked again; then a load the other site cannot take alone unparks it at once
    # (its engine starts; the load runs on the other site meanwhile, every request a 200 — traffic spilling
    # to a site that is up is tests/integration/test_slice.py's)
    rested = time.time()
    wait_for(f"{site} parked again", lambda: parked(site), 180)
    body = {"model": model, "messages": MSG, "max_tokens": 32, "ignore_eos": True}
    stop, results = threading.Event(), []

    def client(_):
        while not stop.is_set():
            r = HTTP.post(f"{fabric.base_url}/chat/completions", json=body, timeout=300)
            results.append((r.status_code, r.headers.get("x-fabric-site")))

    def back_under_load():
        st = scheduler_status()
        return site not in st["parked_sites"] and st["replica_targets"][model] == 2

    with cf.ThreadPoolExecutor(96) as pool:
        clients = [pool.submit(client, i) for i in range(96)]
        try:
            wait_for(f"{site} unparked by the load, its engine asked back", back_under_load, 120)
        finally:
            stop.set()
        for c in clients:
            c.result()  # a client that raised fails the test
    assert actions("unpark", site, rested)[0]["reason"] == "demand"
    assert results and all(code == 200 for code, _ in results), {c for c, _ in results}
