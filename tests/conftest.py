"""One real fabric per test session (local multi-node Ray cluster + vLLM on CPU), shared by
tests/integration and tests/reliability; tests marked ``own_fabric`` (they start one of their own)
run before it starts, since two fabrics do not fit in this machine's memory, and tests marked
``destructive`` (they remove nodes or kill engines) run after every other test, also when the
order is shuffled (``--random-order``).

Tests that change shared state put it back: power through the ``power`` fixture (replay clocks
restored, then the scheduler seen at rest again), tenants' limits by each test having a tenant
of its own (``TEST_TENANTS``), so no test depends on what another left behind.
"""

import time

import httpx
import pytest

from fabric.cluster import free_port
from fabric.metering.tenants import key_hash
from fabric.runtime import running_fabric
from fabric.spec import TenantSpec, default_spec_path, load_spec

# Tenants owned by one test each (key = "<name>-key"): limits another test spent never leak in.
TEST_TENANTS = {
    "rate-test": {"requests_per_min": 4, "allowed_privacy": ["none"]},
    "budget-test": {"daily_budget_usd": 1e-9},
    "budget-hints-test": {"daily_budget_usd": 1e-9},
    "refusals-test": {"requests_per_min": 1, "allowed_privacy": ["none"]},
    "refusals-budget-test": {"daily_budget_usd": 1e-9},
}


def tenant_key(tenant: str) -> str:
    return f"{tenant}-key"


@pytest.fixture(scope="session")
def fabric(tmp_path_factory):
    spec = load_spec(default_spec_path())
    spec.endpoint.port = free_port()
    spec.metering.path = str(tmp_path_factory.mktemp("ledger"))
    # The replay starts after the profiles' scheduled curtailments: at 60x a week lasts hours,
    # so no curtailment arrives on its own mid-session; tests raise them on purpose (``power``).
    spec.power_clock.start_s = max((c.start_s + c.duration_s for _, s in spec.sites
                                    for c in s.power.curtailments), default=0.0)
    spec.scheduler.drain_after_s = 10  # a site short of power is drained sooner (test_drain)
    spec.tenants += [TenantSpec(name=name, api_key_sha256=key_hash(tenant_key(name)), **limits)
                     for name, limits in TEST_TENANTS.items()]
    with running_fabric(spec) as fab:
        yield fab


def wait_for(what: str, check, timeout: float, every: float = 0.5):
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def scheduler_status() -> dict:
    import ray

    from fabric.layers import naming

    return ray.get(ray.get_actor(naming.SCHEDULER, namespace=naming.NAMESPACE).status.remote())


class Power:
    """Moves sites' grid replays for a test; the fixture puts every clock back afterwards."""

    def __init__(self, spec):
        import ray

        from fabric.layers import naming

        self.spec = spec
        self.sites = ray.get_actor(naming.SITES, namespace=naming.NAMESPACE)
        self.saved = {s.name: ray.get(self.sites.clock_state.remote(s.name)) for _, s in spec.sites}

    def seek(self, site: str, offset_s: float, speed: float | None = None) -> dict:
        """Jump the site's replay to ``offset_s``, at ``speed`` (default: the fabric's own)."""
        import ray
        speed = self.saved[site]["speed"] if speed is None else speed
        return ray.get(self.sites.seek.remote(site, offset_s, speed))

    def curtailment(self, site: str):
        return next(s for _, s in self.spec.sites if s.name == site).power.curtailments[0]

    def restore(self) -> None:
        import ray
        for name, clock in self.saved.items():
            ray.get(self.sites.set_clock.remote(name, **clock))


def at_rest(status: dict) -> bool:
    """No site curtailed, capped, drained, shed, parked or still ramping back after a power
    event (or starting again after parking)."""
    snap = status.get("snapshot") or {"sites": []}
    return (not any(s["curtailed"] for s in snap["sites"]) and not status["capped_sites"]
            and not status["drained_sites"] and not status["shed_sites"]
            and not status["ramping_sites"] and not status["parked_sites"]
            and not status["released_sites"])


@pytest.fixture
def power(fabric):
    """Seek the sites' power replays in a test; afterwards every clock is restored and the test
    waits until the scheduler has readmitted every site (caps restored, engines back)."""
    p = Power(fabric.spec)
    try:
        yield p
    finally:
        p.restore()
        wait_for("the fabric back at rest after a power event", lambda: at_rest(scheduler_status()),
                 timeout=420, every=1.0)


def session_records(fabric, session: str, expected: int, timeout: float = 30) -> list[dict]:
    """The ledger's records of one session, once at least ``expected`` are there (or the
    timeout passes); flushes the ledger each poll, riding out a ledger that is restarting."""
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

# Power sources a reading may carry: modelled here, NVML where a driver is present.
POWER_SOURCES = {"model", "nvml"}


@pytest.hookimpl(trylast=True)  # after any shuffling plugin has reordered the items
def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        if item.get_closest_marker("own_fabric"):
            return 0
        return 2 if item.get_closest_marker("destructive") else 1
    items.sort(key=rank)
