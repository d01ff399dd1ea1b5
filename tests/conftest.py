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


# Raw HTTP calls in the tests authenticate as the local spec's demo tenant (key "fabric-local").
HTTP = httpx.Client(headers={"authorization": "Bearer fabric-local"}, timeout=120)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)
