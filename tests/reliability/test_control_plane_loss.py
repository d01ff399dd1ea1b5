"""The control plane dies mid-load: the scheduler and the token ledger are killed while
requests run. No request fails (routing goes on with the last table), no usage record is
lost or counted twice (engines keep records until the restarted ledger acknowledges them)."""

import concurrent.futures as cf
import contextlib
import subprocess
import sys
import time
import uuid

from conftest import HTTP, session_records
import pytest
import ray

from fabric.layers import blobs, naming
from fabric.metering.ledger import LEDGER_NAME

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "Keep going."}]
# a driver that builds a scheduler as `fabric up` does, from a spec of ``n`` sites, and exits
BIG_FLEET = """
import sys, ray
from fabric.cluster import connect
from fabric.layers import blobs, naming
from fabric.layers.scheduler import Scheduler
from fabric.spec import FabricSpec
address, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = FabricSpec.model_validate_json(sys.stdin.read())
region = spec.regions[0]
template = region.sites[0]
region.sites += [template.model_copy(update={"name": f"fleet-{i:04d}"}) for i in range(n)]
spec = FabricSpec.model_validate_json(spec.model_dump_json())  # checked as a loaded spec is
connect(address)
text = spec.model_dump_json()
key = blobs.put(text)
actor = Scheduler.options(name=name, namespace=naming.NAMESPACE, lifetime="detached").remote(key)
ray.get(actor.status.remote(), timeout=120)
print(key, len(text))
"""


def actor(name):
    return ray.get_actor(name, namespace=naming.NAMESPACE)


def table_version() -> int:
    return ray.get(actor(naming.SCHEDULER).routing_table.remote())["version"]


def test_killing_scheduler_and_ledger_mid_load_fails_and_loses_nothing(fabric):
    session = f"kill-{uuid.uuid4().hex[:8]}"
    body = {"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 24, "ignore_eos": True}

    def one(_):
        return HTTP.post(f"{fabric.base_url}/chat/completions", json=body, timeout=120,
                         headers={"x-session-id": session}).status_code

    before = table_version()
    with cf.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(one, i) for i in range(60)]
        time.sleep(1.0)
        ray.kill(actor(naming.SCHEDULER), no_restart=False)  # both restart (max_restarts=-1)
        ray.kill(actor(LEDGER_NAME), no_restart=False)       # the ledger recovers its WAL
        codes = [f.result() for f in futures]
    assert codes == [200] * 60

    rows = session_records(fabric, session, 60, timeout=60)
    ids = [r["request_id"] for r in rows]
    assert len(ids) == 60 and len(set(ids)) == 60          # none lost, none twice
    assert sum(r["completion_tokens"] for r in rows) == 60 * 24

    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if table_version() > before:
                break
        except ray.exceptions.RayActorError:
            pass
        time.sleep(0.5)
    assert table_version() > before  # the restarted scheduler publishes tables again


def test_a_scheduler_of_a_large_fleet_restarts_after_its_creator_has_exited(fabric):
    """A spec over Ray's 100 KiB inline limit would be an object owned by the process that
    created the actor (`fabric up`, which exits); the scheduler reads it from the cluster's
    key-value store instead, so it still restarts once its creator is gone."""
    name = f"fabric-test:fleet-{uuid.uuid4().hex[:8]}"  # not the fabric's: it never ticks
    driver = subprocess.run([sys.executable, "-c", BIG_FLEET, fabric.cluster.address, name, "300"],
                            input=fabric.spec.model_dump_json(), capture_output=True, text=True,
                            timeout=180)
    assert driver.returncode == 0, driver.stderr[-2000:]
    key, size = driver.stdout.split()[-2:]
    assert int(size) > 100 * 1024  # the case Ray would not restart
    try:
        ray.kill(actor(name), no_restart=False)
        sites = wait_for_answer(lambda: ray.get(actor(name).__ray_call__.remote(
            lambda self: len(self._sites)), timeout=30), timeout=90)
        assert sites == len(fabric.spec.sites) + 300
    finally:
        with contextlib.suppress(ValueError):
            ray.kill(actor(name), no_restart=True)
        blobs.clear(key)


def wait_for_answer(call, timeout: float):
    """``call()``'s answer once the actor is back (restarting actors refuse calls a while)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
