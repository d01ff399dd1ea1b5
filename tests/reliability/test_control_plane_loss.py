"""The control plane dies mid-load: the scheduler and the token ledger are killed while
requests run. No request fails (routing goes on with the last table), no usage record is
lost or counted twice (engines keep records until the restarted ledger acknowledges them)."""

import concurrent.futures as cf
import time
import uuid

from conftest import HTTP, session_records
import pytest
import ray

from fabric.layers import naming
from fabric.metering.ledger import LEDGER_NAME

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "Keep going."}]


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
