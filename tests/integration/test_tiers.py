"""The right task to the right model, for real: the local fabric serves a small model (edge-a,
cloud-a) and a large one (cloud-b); /v1 chooses between them by name, tier hint or classifier."""

import httpx

from conftest import HTTP
import openai
import pytest

pytestmark = pytest.mark.integration
SIMPLE = [{"role": "user", "content": "hi there"}]
CODE = [{"role": "user", "content": "```python\ndef f(x):\n    return x\n```\nWhy does it fail?"}]


def ask(url, messages=SIMPLE, model="auto", headers=None, stream=False, **metadata):
    body = {"model": model, "messages": messages, "max_tokens": 4, "stream": stream}
    if metadata:
        body["metadata"] = metadata
    return HTTP.post(f"{url}/chat/completions", json=body, headers=headers or {}, timeout=120)


def served(r):
    assert r.status_code == 200, r.text
    return r.headers["x-fabric-model"], r.headers["x-fabric-tier"], r.headers["x-fabric-site"]


def test_models_listed_with_their_tiers(fabric):
    client = openai.OpenAI(base_url=fabric.base_url, api_key="fabric-local", max_retries=0)
    listed = {m.id: m.model_extra["tier"] for m in client.models.list().data}
    assert listed == {"auto": "auto", "tiny-llama": "small", "tiny-llama-large": "large"}
    edge = HTTP.get(f"{fabric.regional_urls['edge']}/models").json()["data"]
    assert [m["id"] for m in edge] == ["auto", "tiny-llama"]     # the large model is not there


def test_tier_hints_and_names_choose_the_model(fabric):
    url = fabric.base_url
    for _ in range(3):
        assert served(ask(url, fabric_tier="large")) == ("tiny-llama-large", "large", "cloud-b")
        model, tier, site = served(ask(url, fabric_tier="small"))
        assert (model, tier) == ("tiny-llama", "small") and site in ("edge-a", "cloud-a")
    assert served(ask(url, model="tiny-llama-large"))[0] == "tiny-llama-large"
    r = ask(url, model="tiny-llama-large", fabric_tier="small")
    assert r.status_code == 400 and "fabric_tier=small" in r.json()["error"]["message"]
    r = ask(url, model="gpt-9")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_auto_classifies_simple_and_complex_work(fabric):
    simple, code = ask(fabric.base_url), ask(fabric.base_url, messages=CODE)
    assert served(simple)[:2] == ("tiny-llama", "small") and simple.headers["x-fabric-tier-by"] == "classifier"
    assert served(code)[:2] == ("tiny-llama-large", "large")
    assert float(code.headers["x-fabric-tier-score"]) >= 0.5
    # streaming through the gateway: the events arrive, the stream ends with [DONE]
    r = ask(fabric.base_url, messages=CODE, stream=True)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


def test_constraints_hold_across_tiers(fabric):
    url = fabric.base_url
    # privacy=edge: complex work stays on the edge's small model; an explicit large is refused
    for _ in range(3):
        model, _, site = served(ask(url, messages=CODE, fabric_privacy="edge"))
        assert (model, site) == ("tiny-llama", "edge-a")
    r = ask(url, fabric_tier="large", fabric_privacy="edge")
    assert r.status_code == 503
    assert "no large-tier model can serve this request (privacy=edge)" in r.json()["error"]["message"]
    # the edge region's endpoint, and hints as headers (read by the gateway)
    assert served(ask(fabric.regional_urls["edge"], messages=CODE))[2] == "edge-a"
    model, _, site = served(ask(url, headers={"x-fabric-privacy": "edge", "x-fabric-tier": "small"}))
    assert (model, site) == ("tiny-llama", "edge-a")


def test_each_model_has_its_own_no_hop_endpoint(fabric):
    small, large = fabric.model_urls["tiny-llama"], fabric.model_urls["tiny-llama-large"]
    assert small.endswith("/models/tiny-llama/v1")
    r = ask(large, model="tiny-llama-large")
    assert r.status_code == 200 and r.headers["x-fabric-site"] == "cloud-b"
    assert "x-fabric-model" not in r.headers                     # no gateway on this path
    # the engine's own guard: a tier or a header hint it cannot honour is refused, not ignored
    r = ask(small, model="tiny-llama", fabric_tier="large")
    assert r.status_code == 400 and "small-tier" in r.json()["error"]["message"]
    r = ask(small, model="tiny-llama", headers={"x-fabric-privacy": "edge"})
    assert r.status_code == 400 and "x-fabric-privacy" in r.json()["error"]["message"]


def test_gateway_refusals_are_authenticated_and_recorded(fabric):
    from conftest import session_records

    url, session = fabric.base_url, "gateway-refusals"
    bad = httpx.post(f"{url}/chat/completions", timeout=60, headers={
        "authorization": "Bearer not-a-key", "x-session-id": session},
        json={"model": "gpt-9", "messages": SIMPLE})
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "AuthenticationError"
    assert httpx.get(f"{url}/models", timeout=60).status_code == 401  # the catalogue too
    assert ask(url, model="gpt-9", headers={"x-session-id": session}).status_code == 404
    assert ask(fabric.regional_urls["edge"], headers={"x-session-id": session},
               fabric_tier="large").status_code == 503           # no large model at the edge
    rows = session_records(fabric, session, 3)
    got = sorted((r["status"], r["tenant"], r["model"], r["region"], r["completion_tokens"])
                 for r in rows)
    assert got == [(401, "", "", "", 0), (404, "demo", "gpt-9", "", 0),
                   (503, "demo", "auto", "edge", 0)], got
