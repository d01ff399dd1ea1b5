"""Capacity follows demand on the real fabric: with parking on, the small model's dearer site
(edge-a) is parked at rest — its engine stopped, Serve's target lowered — and started again
when a request only it may serve arrives (answered 503 + Retry-After meanwhile) and when a load
cloud-a cannot take alone comes. The session fabric runs with parking off; this test turns it
on through the scheduler and restores it (with every engine back) in teardown."""

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
def parking(fabric):
    before = ray.get(sched().configure.remote(park=True, park_after_s=5.0))
    try:
        yield
    finally:
        ray.get(sched().configure.remote(**before))

        def back():
            st = scheduler_status()
            return at_rest(st) and all(engines_at(st, s) for s in ("edge-a", "cloud-a"))

        wait_for("every engine back once parking is off", back, timeout=420, every=1.0)


def test_the_dearer_site_parks_at_rest_and_comes_back_for_requests_only_it_may_serve_and_for_load(
        fabric, parking):
    model = fabric.spec.model.id
    started = time.time()
    st = wait_for("edge-a parked at rest, its engine stopped", lambda: parked("edge-a"), 180)
    assert st["replica_targets"][model] == 1 and engines_at(st, "cloud-a")
    assert actions("park", "edge-a", started)[0]["reason"] == "demand"
    assert any(a.get("action") == "scale_replicas" and a["stopped_at"] == ["edge-a"]
               for a in st["actions"] if a["at"] >= started)

    # a request only the parked site may serve: refused at once with a reason and Retry-After
    # (never served elsewhere), and its site is woken; the client's retry is served there
    private = {"model": model, "messages": MSG, "max_tokens": 4,
               "metadata": {"fabric_privacy": "edge"}}
    woken = time.time()
    r = HTTP.post(f"{fabric.base_url}/chat/completions", json=private, timeout=120)
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
    assert "edge-a parked" in r.json()["error"]["message"]
    assert wait_for("edge-a unparked by the request",
                    lambda: actions("unpark", "edge-a", woken), 30)[0]["reason"] == "request"

    def served_at_edge():
        r = HTTP.post(f"{fabric.base_url}/chat/completions", json=private, timeout=120)
        assert r.status_code in (200, 503), r.text
        return r.status_code == 200 and r.headers.get("x-fabric-site") == "edge-a"

    wait_for("the private request served at edge-a once it is up", served_at_edge, 360, every=3.0)

    # idle again: parked again; then a load cloud-a cannot take alone unparks it at once (its
    # engine starts; the load runs on cloud-a meanwhile, every request a 200 — traffic spilling
    # to a site that is up is tests/integration/test_slice.py's)
    rested = time.time()
    wait_for("edge-a parked again", lambda: parked("edge-a"), 180)
    body = {"model": model, "messages": MSG, "max_tokens": 32, "ignore_eos": True}
    stop, results = threading.Event(), []

    def client(_):
        while not stop.is_set():
            r = HTTP.post(f"{fabric.base_url}/chat/completions", json=body, timeout=300)
            results.append((r.status_code, r.headers.get("x-fabric-site")))

    def back_under_load():
        st = scheduler_status()
        return "edge-a" not in st["parked_sites"] and st["replica_targets"][model] == 2

    with cf.ThreadPoolExecutor(96) as pool:
        clients = [pool.submit(client, i) for i in range(96)]
        try:
            wait_for("edge-a unparked by the load, its engine asked back", back_under_load, 120)
        finally:
            stop.set()
        for c in clients:
            c.result()  # a client that raised fails the test
    assert actions("unpark", "edge-a", rested)[0]["reason"] == "demand"
    assert results and all(code == 200 for code, _ in results), {c for c, _ in results}
