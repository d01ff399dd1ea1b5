"""Replica targets on the real fabric: a site short of power for ``drain_after_s`` loses its
engines (Serve's target for the model drops within its min/max, and only that site's engine
stops), requests keep being served elsewhere, and the engine comes back with the power."""

import concurrent.futures as cf

import pytest
import ray

from conftest import HTTP, wait_for
from fabric.layers import naming

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "drain?"}]


def ask(fabric):
    r = HTTP.post(f"{fabric.base_url}/chat/completions", timeout=120, json={
        "model": fabric.spec.model.id, "messages": MSG, "max_tokens": 4})
    return r.status_code, r.headers.get("x-fabric-site")


def burst(fabric, n):
    with cf.ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda _: ask(fabric), range(n)))


def scheduler_status():
    return ray.get(ray.get_actor(naming.SCHEDULER, namespace=naming.NAMESPACE).status.remote())


def engines(status, model):
    """site -> ids of the model's healthy engine replicas reporting there."""
    return {s["name"]: sorted(e["replica"] for e in s["engines"]
                              if e["model"] == model and e["healthy"])
            for s in status["snapshot"]["sites"]}


def serve_replicas(model):
    """(target, RUNNING replica ids) of the model's engine deployment, as Serve holds them."""
    from fabric.internals import serve_controller
    details = ray.get(serve_controller().get_serve_instance_details.remote())
    for app in details["applications"].values():
        for name, dep in app["deployments"].items():
            if name == model or name.endswith(":" + model):
                return dep["target_num_replicas"], sorted(
                    r["replica_id"] for r in dep["replicas"] if r["state"] == "RUNNING")
    raise AssertionError(f"no deployment for {model}")


def test_a_site_short_of_power_loses_its_engines_and_gets_them_back(fabric, power):
    model, spec = fabric.spec.model.id, fabric.spec
    hosts = [s.name for _, s in spec.hosting_sites(spec.model)]
    assert hosts == ["edge-a", "cloud-a"] and spec.model.min_replicas == 1
    before = engines(scheduler_status(), model)
    assert before["edge-a"] and before["cloud-a"]
    assert serve_replicas(model) == (2, sorted(before["edge-a"] + before["cloud-a"]))
    cut = power.curtailment("cloud-a")

    codes: list[int] = []
    power.seek("cloud-a", cut.start_s)  # cloud-a's grid cuts it below its idle draw
    try:
        def drained():
            codes.extend(code for code, _ in burst(fabric, 4))  # traffic flows throughout
            st = scheduler_status()
            return next((a for a in st["actions"] if a.get("action") == "scale_replicas"
                         and a["model"] == model and a["stopped_at"] == ["cloud-a"]), None)

        action = wait_for("cloud-a's engine to be stopped", drained, spec.scheduler.drain_after_s + 120)
        assert action["from"] == 2 and action["to"] == 1 and "cloud-a" in action["drained_sites"]
        st = scheduler_status()
        assert st["replica_targets"][model] == 1 and "cloud-a" in st["drained_sites"]
        # only cloud-a's engine went: the edge engine is the same replica, still running
        target, running = wait_for("Serve to settle on one replica",
                                   lambda: (r := serve_replicas(model))[1] == before["edge-a"] and r, 60)
        assert target == 1
        # the large model's only host was not short of power: untouched
        assert st["replica_targets"].get("tiny-llama-large", 1) == 1
        after = burst(fabric, 8)
        assert all(code == 200 for code, _ in after) and {s for _, s in after} == {"edge-a"}
    finally:
        power.restore()  # power is back
    assert codes and all(code == 200 for code in codes), codes

    def back():
        st = scheduler_status()
        now = engines(st, model)
        fresh = now["cloud-a"] and now["cloud-a"] != before["cloud-a"]
        return fresh and st["replica_targets"][model] == 2 and now

    now = wait_for("a new engine on cloud-a", back, 300)
    assert now["edge-a"] == before["edge-a"]
    assert serve_replicas(model)[0] == 2
    # and traffic returns to it (the policy ramps the readmitted site back up)
    wait_for("traffic on cloud-a", lambda: any(s == "cloud-a" for _, s in burst(fabric, 8)), 120)
    actions = [a for a in scheduler_status()["actions"] if a.get("action") == "scale_replicas"]
    assert actions[-1]["from"] == 1 and actions[-1]["to"] == 2
    assert not [a for a in scheduler_status()["actions"] if a.get("action") == "scale_failed"]
