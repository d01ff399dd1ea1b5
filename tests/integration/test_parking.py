"""Capacity follows demand on the real fabric: with parking on, the small model's dearer site
to keep on (edge-a or cloud-a, by the hour's prices) is parked at rest — its engine stopped,
Serve's target lowered, its node handed back (no fabric actor left on it) — and started again when a load the other site cannot take alone comes,
every request of that load answered 200. (A request only a parked site may serve waking it is
the dispatch policy's unit test and the scheduler's 503 + Retry-After path.) The session fabric
runs with parking off; this test turns it on through the scheduler and restores it, with every
engine back, in teardown."""

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


def parked_site(hosts: list[str]):
    """The one host of the small model the policy parked, once its engine is stopped."""
    st = scheduler_status()
    site = next((s for s in st["parked_sites"] if s in hosts), None)
    if site and site in st["released_sites"] and not engines_at(st, site):
        return site
    return None


def explain(hosts: list[str]) -> str:
    """What the scheduler holds, for a failure message: parking state and the last actions."""
    st = scheduler_status()
    sites = {s["name"]: {k: s.get(k) for k in ("replicas", "inflight", "tokens_per_s", "curtailed")}
             | {"healthy": len(engines_at(st, s["name"]))}
             for s in st["snapshot"]["sites"] if s["name"] in hosts}
    return (f"parked={st['parked_sites']} released={st['released_sites']} "
            f"targets={st['replica_targets']} sites={sites} last actions={st['actions'][-8:]}")


def waited(what: str, check, timeout: float, hosts: list[str]):
    """wait_for, failing with the scheduler's parking state in the message."""
    try:
        return wait_for(what, check, timeout, every=1.0)
    except pytest.fail.Exception as exc:
        pytest.fail(f"{exc}; {explain(hosts)}")


def monitors(site: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(naming.gpu_prefix(site))]


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
    before = ray.get(sched().configure.remote(park=True, park_after_s=5.0, cold_start_s=5.0))
    try:
        yield
    finally:
        ray.get(sched().configure.remote(**before))

        def back():
            st = scheduler_status()
            return at_rest(st) and all(engines_at(st, s) for s in ("edge-a", "cloud-a"))

        wait_for("every engine back once parking is off", back, timeout=420, every=1.0)


def test_the_dearer_site_parks_at_rest_and_comes_back_under_load(fabric, parking):
    model, spec = fabric.spec.model.id, fabric.spec
    hosts = [s.name for _, s in spec.hosting_sites(spec.model)]
    started = time.time()
    site = waited("one small-model site parked at rest, its engine stopped",
                  lambda: parked_site(hosts), 240, hosts)
    other = next(h for h in hosts if h != site)
    st = scheduler_status()
    assert st["parked_sites"] == [site] and st["replica_targets"][model] == 1
    assert engines_at(st, other)
    assert actions("park", site, started)[0]["reason"] == "demand"
    assert any(a.get("action") == "scale_replicas" and a["stopped_at"] == [site]
               for a in st["actions"] if a["at"] >= started)
    # its node is handed back: nothing of the fabric holds it (an autoscaler may release it)
    waited(f"{site}'s node handed back", lambda: not monitors(site) and actions(
        "hand_back", site, started), 60, hosts)
    assert monitors(other)

    # a load the other site cannot take alone unparks it at once (its engine starts; the
    # load runs on the other site meanwhile, every request a 200)
    rested = time.time()
    body = {"model": model, "messages": MSG, "max_tokens": 32, "ignore_eos": True}
    stop, results = threading.Event(), []

    def client(_):
        while not stop.is_set():
            r = HTTP.post(f"{fabric.base_url}/chat/completions", json=body, timeout=300)
            results.append(r.status_code)

    def back_under_load():
        st = scheduler_status()
        return site not in st["parked_sites"] and st["replica_targets"][model] == 2

    with cf.ThreadPoolExecutor(96) as pool:
        clients = [pool.submit(client, i) for i in range(96)]
        try:
            waited(f"{site} unparked by the load, its engine asked back", back_under_load, 120,
                   hosts)
        finally:
            stop.set()
        for c in clients:
            c.result()  # a client that raised fails the test
    assert actions("unpark", site, rested)[0]["reason"] == "demand"
    assert results and all(code == 200 for code in results), sorted(set(results))
    waited(f"{site}'s node monitored again", lambda: monitors(site) and actions(
        "take_back", site, rested), 60, hosts)
