"""The headline no-hop path, refusals included: a model's own endpoint (``/models/<model>/v1``,
HAProxy straight to the engine) authenticates, enforces privacy, region and tenant rights in
the router and the engine's guard, and puts every refusal on the ledger with its tenant."""

import uuid

import httpx
import pytest

from conftest import session_records

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "hello"}]


def post(fabric, key, session, **metadata):
    headers = {"x-session-id": session}
    if key:
        headers["authorization"] = f"Bearer {key}"
    body = {"model": "tiny-llama", "messages": MSG, "max_tokens": 3}
    if metadata:
        body["metadata"] = metadata
    return httpx.post(f"{fabric.model_urls['tiny-llama']}/chat/completions", json=body,
                      headers=headers, timeout=60)


def refused(r, status, needle):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and needle in err["message"], err
    assert "x-fabric-model" not in r.headers  # answered on the no-hop path, not by a gateway
    return err


def test_refusals_on_a_models_own_endpoint_are_explicit_and_on_the_ledger(fabric):
    session = f"no-hop-{uuid.uuid4().hex[:8]}"
    refused(post(fabric, None, session), 401, "API key")
    refused(post(fabric, "not-a-key", session), 401, "invalid API key")
    refused(post(fabric, "fabric-local", session, fabric_region="mars"), 503, "region=mars")
    refused(post(fabric, "fabric-local", session, fabric_privacy="edge", fabric_region="cloud"),
            503, "privacy=edge")
    refused(post(fabric, "trial-key", session, fabric_privacy="edge"), 403, "privacy=edge")
    refused(post(fabric, "edge-only-key", session), 403, "fabric_region")
    ok = post(fabric, "edge-only-key", session, fabric_region="edge")
    assert ok.status_code == 200 and ok.headers["x-fabric-site"] == "edge-a", ok.text

    rows = session_records(fabric, session, 7)
    assert sorted((r["status"], r["tenant"]) for r in rows) == [
        (200, "edge-only"), (401, ""), (401, ""), (403, "edge-only"), (403, "trial"),
        (503, "demo"), (503, "demo")], rows
    assert all(r["model"] == "tiny-llama" and r["completion_tokens"] == 0
               for r in rows if r["status"] != 200)
