"""A tenant reads its own usage through the endpoint, and nobody else's."""

import time
import uuid

import httpx
import pytest

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "hello"}]
KEYS = {"demo": "fabric-local", "edge-only": "edge-only-key"}


def generate(fabric, key: str, agent: str, region: str | None = None) -> None:
    body = {"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 4}
    if region:
        body["metadata"] = {"fabric_region": region}
    r = httpx.post(f"{fabric.base_url}/chat/completions", json=body, timeout=60,
                   headers={"authorization": f"Bearer {key}", "x-fabric-agent": agent})
    assert r.status_code == 200, r.text


def usage(fabric, key: str | None, **params) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(fabric.tenant_api_url + "/usage", params=params, headers=headers, timeout=30)


def rows_by_agent(fabric, key: str, want: dict[str, int], timeout_s: float = 30) -> dict:
    """The tenant's usage grouped by agent, once the agents in ``want`` show their counts (the
    ledger writes records within about a second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = usage(fabric, key, group_by="agent_id")
        assert r.status_code == 200, r.text
        body = r.json()
        seen = {row["agent_id"]: row["requests"] for row in body["data"]}
        if all(seen.get(a) == n for a, n in want.items()) or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def test_each_tenant_sees_only_its_own_usage(fabric):
    run = uuid.uuid4().hex[:8]
    mine, theirs = f"usage-{run}-edge", f"usage-{run}-demo"
    for _ in range(3):
        generate(fabric, KEYS["edge-only"], mine, region="edge")
    for _ in range(2):
        generate(fabric, KEYS["demo"], theirs)

    edge = rows_by_agent(fabric, KEYS["edge-only"], {mine: 3})
    assert edge["object"] == "fabric.usage" and edge["tenant"] == "edge-only"
    agents = {row["agent_id"]: row for row in edge["data"]}
    assert agents[mine]["requests"] == 3 and agents[mine]["completion_tokens"] > 0
    assert theirs not in agents                    # the other tenant's agent is invisible
    assert edge["totals"]["requests"] >= 3 and edge["totals"]["billed_usd"] > 0

    demo = rows_by_agent(fabric, KEYS["demo"], {theirs: 2})
    assert demo["tenant"] == "demo"
    assert {row["agent_id"]: row["requests"] for row in demo["data"]}[theirs] == 2
    assert mine not in {row["agent_id"] for row in demo["data"]}

    # it is only ever served on the edge (refusals elsewhere are on its bill too, with no tokens)
    regions = usage(fabric, KEYS["edge-only"], group_by="region").json()["data"]
    assert {row["region"] for row in regions if row["completion_tokens"]} == {"edge"}


def test_usage_requests_that_are_refused(fabric):
    for key, status in ((None, 401), ("not-a-key", 401)):
        r = usage(fabric, key)
        assert r.status_code == status and r.json()["error"]["code"] == "invalid_api_key"
    # no parameter names another tenant: asking for one is an error, not a silent no-op
    r = usage(fabric, KEYS["edge-only"], tenant="demo")
    assert r.status_code == 400 and "unknown parameter" in r.json()["error"]["message"]
    r = usage(fabric, KEYS["demo"], since="last tuesday")
    assert r.status_code == 400 and "ISO 8601" in r.json()["error"]["message"]
