"""A region is lost (its worker raylet removed): traffic moves to the sites left, and
traffic pinned to the lost region gets a 503 that says why. Runs last: it breaks the fabric."""

import contextlib
import time

import httpx
import psutil

import pytest
import ray

from conftest import HTTP

pytestmark = [pytest.mark.integration, pytest.mark.destructive]


def chat(fabric, **extra):
    return HTTP.post(f"{fabric.base_url}/chat/completions", timeout=60, json={
        "model": fabric.spec.model.id, "max_tokens": 4,
        "messages": [{"role": "user", "content": "still there?"}], **extra})


def test_losing_the_cloud_region_moves_traffic_to_the_edge(fabric):
    cloud_sites = {s.name for r in fabric.spec.regions if r.name == "cloud" for s in r.sites}
    assert {chat(fabric).headers.get("x-fabric-site") for _ in range(8)} & cloud_sites
    target = next(n["NodeID"] for n in ray.nodes()
                  if n["Alive"] and n["Labels"].get("fabric/site") == "cloud-a")
    cluster = fabric.cluster._cluster
    node = next(n for n in cluster.list_all_nodes() if n.node_id == target)
    # the machine is gone: its raylet and every process under it (engine, actors)
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    doomed = raylet.children(recursive=True)
    cluster.remove_node(node, allow_graceful=False)
    for p in doomed:
        with contextlib.suppress(psutil.Error):
            p.kill()

    deadline, streak, failures, sites = time.monotonic() + 120, 0, 0, []
    while time.monotonic() < deadline and streak < 10:
        try:
            r = chat(fabric)
        except httpx.HTTPError:  # a connection to the lost replica, cut
            r = None
        if r is not None and r.status_code == 200:
            streak += 1
            sites.append(r.headers.get("x-fabric-site"))
        else:  # requests already on their way to the lost replica
            streak, failures = 0, failures + 1
            time.sleep(0.5)
    assert streak == 10, f"never settled: {failures} failures, sites {sites[-10:]}"
    assert set(sites[-10:]) == {"edge-a"}
    # switchover bound: one client in a loop loses at most these requests (those already on
    # their way to the lost replica before the table and HAProxy drop it)
    print(f"region loss: {failures} failed request(s) during switchover")
    assert failures <= 10, failures

    pinned = chat(fabric, metadata={"fabric_privacy": "region", "fabric_region": "cloud"})
    assert pinned.status_code == 503, pinned.text
    message = pinned.json()["error"]["message"]
    assert "region=cloud" in message
