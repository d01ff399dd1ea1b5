"""One real fabric per test session (local multi-node Ray cluster + vLLM on CPU), shared by
tests/integration and tests/reliability; tests marked ``destructive`` (they remove nodes or kill
engines) run after every other test."""

import httpx
import pytest

from fabric.cluster import free_port
from fabric.runtime import running_fabric
from fabric.spec import default_spec_path, load_spec


@pytest.fixture(scope="session")
def fabric(tmp_path_factory):
    spec = load_spec(default_spec_path())
    spec.endpoint.port = free_port()
    spec.metering.path = str(tmp_path_factory.mktemp("ledger"))
    with running_fabric(spec) as fab:
        yield fab


def session_records(fabric, session: str, expected: int, timeout: float = 30) -> list[dict]:
    """The ledger's records of one session, once at least ``expected`` are there (or the
    timeout passes); flushes the ledger each poll, riding out a ledger that is restarting."""
    import time

    import ray

    from fabric.layers import naming
    from fabric.metering.ledger import LEDGER_NAME
    from fabric.metering.report import read_usage

    deadline, rows = time.time() + timeout, []
    while time.time() < deadline:
        try:
            ray.get(ray.get_actor(LEDGER_NAME, namespace=naming.NAMESPACE).flush.remote())
        except (ray.exceptions.RayActorError, ValueError):
            pass
        table = read_usage(fabric.ledger_path)
        rows = [r for r in table.to_pylist() if r["session_id"] == session] if table.num_rows else []
        if len(rows) >= expected:
            break
        time.sleep(0.5)
    return rows


# Raw HTTP calls in the tests authenticate as the local spec's demo tenant (key "fabric-local").
HTTP = httpx.Client(headers={"authorization": "Bearer fabric-local"}, timeout=120)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)
