"""Tenants on the real fabric: API keys, rate limits with Retry-After, budgets, privacy
rights — each refusal in the OpenAI error shape, and each request on the ledger."""

import uuid

import httpx
import openai
import pytest

from conftest import tenant_key

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "hello"}]


def post(fabric, key=None, session=None, **extra):
    headers = {"x-session-id": session or uuid.uuid4().hex}
    if key:
        headers["authorization"] = f"Bearer {key}"
    body = {"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 3, **extra}
    return httpx.post(f"{fabric.base_url}/chat/completions", json=body, headers=headers, timeout=60)


def error_of(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    return err


def test_missing_or_wrong_key_is_401(fabric):
    assert "API key" in error_of(post(fabric), 401)["message"]
    error_of(post(fabric, key="not-a-key"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=fabric.base_url, api_key="wrong", max_retries=0).chat.completions.create(
            model=fabric.spec.model.id, messages=MSG, max_tokens=2)
    assert post(fabric, key="fabric-local").status_code == 200


def test_rate_limit_is_429_with_retry_after(fabric):
    # 4 requests/min for the tenant (its own: no other test spends it), 2 per replica over a
    # sliding minute: of 6 requests the first 2 pass wherever they land, at most 4 in all
    responses = [post(fabric, key=tenant_key("rate-test")) for _ in range(6)]
    codes = [r.status_code for r in responses]
    assert codes[:2] == [200, 200] and set(codes) == {200, 429} and codes.count(200) <= 4, codes
    limited = next(r for r in responses if r.status_code == 429)
    err = error_of(limited, 429)
    assert err["code"] == "rate_limit_exceeded" and 0 < int(limited.headers["retry-after"]) <= 60


def test_tenant_without_privacy_rights_is_403(fabric):
    r = post(fabric, key="trial-key", metadata={"fabric_privacy": "edge"})
    assert error_of(r, 403)["code"] == "permission_denied"


def test_tenant_held_to_a_region_must_pin_it(fabric):
    err = error_of(post(fabric, key="edge-only-key"), 403)
    assert "fabric_region" in err["message"] and "edge" in err["message"]
    error_of(post(fabric, key="edge-only-key", metadata={"fabric_region": "cloud"}), 403)
    pinned = post(fabric, key="edge-only-key", metadata={"fabric_region": "edge"})
    assert pinned.status_code == 200 and pinned.headers["x-fabric-site"] == "edge-a"
    regional = httpx.post(fabric.regional_urls["edge"] + "/chat/completions", timeout=60,
                          headers={"authorization": "Bearer edge-only-key"},
                          json={"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 3})
    assert regional.status_code == 200, regional.text


def test_daily_budget_is_402(fabric):
    session = f"prepaid-{uuid.uuid4().hex[:6]}"   # one session: one replica, one budget share
    assert post(fabric, key=tenant_key("budget-test"), session=session).status_code == 200
    r = post(fabric, key=tenant_key("budget-test"), session=session)
    assert error_of(r, 402)["code"] == "insufficient_quota"


def test_every_refusal_is_on_the_ledger_with_its_tenant(fabric):
    """403 (privacy right), 429 (rate) and 402 (budget): each refused request is a ledger row
    with its tenant, its status and no tokens."""
    from conftest import session_records

    session = f"refusals-{uuid.uuid4().hex[:6]}"
    limited, budget = tenant_key("refusals-test"), tenant_key("refusals-budget-test")
    got = [post(fabric, key=limited, session=session, metadata={"fabric_privacy": "edge"}).status_code]
    got += [post(fabric, key=limited, session=session).status_code for _ in range(2)]  # 1/min
    got += [post(fabric, key=budget, session=session).status_code for _ in range(2)]
    assert got == [403, 200, 429, 200, 402], got
    rows = session_records(fabric, session, 5)
    assert sorted((r["tenant"], r["status"]) for r in rows) == [
        ("refusals-budget-test", 200), ("refusals-budget-test", 402),
        ("refusals-test", 200), ("refusals-test", 403), ("refusals-test", 429)]
    assert all(r["completion_tokens"] == 0 for r in rows if r["status"] != 200)


def test_ledger_names_the_tenant_of_every_request(fabric):
    from conftest import session_records as records_for

    session = f"who-{uuid.uuid4().hex[:6]}"
    post(fabric, key="fabric-local", session=session)
    post(fabric, key="wrong", session=session)
    rows = records_for(fabric, session, 2)
    assert sorted((r["tenant"], r["status"]) for r in rows) == [("", 401), ("demo", 200)]
