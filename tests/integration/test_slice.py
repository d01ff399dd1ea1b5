"""The thin slice through all layers, for real: Ray cluster, Serve, HAProxy, vLLM on CPU."""

import json
import math

import httpx  # noqa: F401

from conftest import HTTP
import openai
import pytest
import ray

from fabric.client import AgentWorkload, run_workload
from fabric.layers import naming

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "Plan the next step of the migration."}]


@pytest.fixture
def client(fabric):
    return openai.OpenAI(base_url=fabric.base_url, api_key="fabric-local", max_retries=0)


def test_at_low_load_the_cheapest_site_takes_the_small_models_traffic(fabric):
    """Merit order: cloud-a (hydro, the lowest $ + carbon per token) takes the small model's
    traffic while it is below its SLO-safe utilisation."""
    import asyncio

    wl = AgentWorkload(agents=6, steps=3, max_tokens=16, model=fabric.spec.model.id,
                       session_affinity=False)
    report = asyncio.run(run_workload(fabric.base_url, wl))
    s = report.summary
    assert s["requests"] == 18 and s["errors"] == 0, s
    assert s["site_share"].get("cloud-a", 0) >= 0.7, s["site_share"]
    table = ray.get(ray.get_actor(naming.SCHEDULER, namespace=naming.NAMESPACE).routing_table.remote())
    costs = table["cost_usd_per_mtok"]
    assert costs["cloud-a"] < costs["edge-a"] and table["overflow"][:1] == ["edge-a"]
    # each agent's prompt grows: every step carries the previous answers
    for agent in range(6):
        steps = [r for r in report.results if r.agent == agent]
        prompts = [r.prompt_tokens for r in steps]
        assert prompts == sorted(prompts) and prompts[0] < prompts[-1]
    # (a step whose tokens decode to no text has no first-token time: random weights can do that)
    assert all(r.ttft_s <= r.latency_s for r in report.results if not math.isnan(r.ttft_s))


def test_a_load_the_cheapest_site_cannot_take_alone_spills_to_the_next(fabric):
    """More requests in flight than cloud-a's SLO-safe share of its batch slots: the excess
    goes to edge-a, the next site in merit order, and no request fails."""
    import concurrent.futures as cf

    body = {"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 96, "ignore_eos": True}

    def client(_):
        out = []
        for _ in range(4):
            r = HTTP.post(f"{fabric.base_url}/chat/completions", json=body, timeout=300)
            out.append((r.status_code, r.headers.get("x-fabric-site")))
        return out

    with cf.ThreadPoolExecutor(96) as pool:
        results = [x for rs in pool.map(client, range(96)) for x in rs]
    assert all(code == 200 for code, _ in results), {c for c, _ in results}
    sites = [site for _, site in results]
    assert sites.count("edge-a") >= 0.1 * len(sites), {s: sites.count(s) for s in set(sites)}
    assert sites.count("cloud-a") > sites.count("edge-a")          # the cheapest still first


def test_chat_completion_usage_matches_generated_tokens(client, fabric):
    resp = client.chat.completions.create(
        model=fabric.spec.model.id, messages=MSG, max_tokens=12,
        extra_body={"return_token_ids": True, "ignore_eos": True})
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    generated = choice.model_extra["token_ids"]
    assert resp.usage.completion_tokens == len(generated) == 12
    assert resp.usage.prompt_tokens == len(resp.model_extra["prompt_token_ids"])
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_completions_endpoint(client, fabric):
    forced = 5  # ignore_eos: the engine generates exactly max_tokens
    resp = client.completions.create(model=fabric.spec.model.id, prompt="The fabric", max_tokens=forced,
                                     extra_body={"ignore_eos": True})
    assert resp.object == "text_completion" and resp.usage.completion_tokens == forced


def test_streaming_yields_chunks_and_done(fabric):
    body = {"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    with HTTP.stream("POST", f"{fabric.base_url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-fabric-region"] in {"edge", "cloud"}
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) >= 2
    assert chunks[-1]["usage"]["completion_tokens"] == 8


def test_openai_client_streaming(client, fabric):
    # the random-weight model may stop at once or emit tokens that decode to nothing: the
    # count is forced (ignore_eos) and the invariant checked, not the text
    stream = client.chat.completions.create(model=fabric.spec.model.id, messages=MSG,
                                            max_tokens=6, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert any(c.choices for c in chunks)
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == 6, usage


def test_models_lists_the_models(client, fabric):
    assert [m.id for m in client.models.list().data] == ["auto", *(m.id for m in fabric.spec.models)]


def _assert_openai_error(r: httpx.Response, status: int):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["message"]
    return err


@pytest.mark.parametrize("body, status, needle", [
    ({"model": "no-such-model", "messages": MSG}, 404, "no-such-model"),
    ({"model": "tiny-llama", "messages": MSG, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny-llama", "messages": MSG, "max_tokens": -5}, 400, "max_tokens"),
])
def test_bad_requests_get_openai_errors(fabric, body, status, needle):
    r = HTTP.post(f"{fabric.base_url}/chat/completions", json=body, timeout=60)
    err = _assert_openai_error(r, status)
    assert needle in err["message"]


def test_malformed_json_is_400(fabric):
    r = HTTP.post(f"{fabric.base_url}/chat/completions", content=b'{"model": "tiny-llama", ',
                   headers={"content-type": "application/json"}, timeout=60)
    err = _assert_openai_error(r, 400)
    assert "JSON" in err["message"]


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=0)


def test_scheduler_serves_a_versioned_site_table(fabric):
    import time

    import ray

    from fabric.layers.scheduler import NAMESPACE, SCHEDULER_NAME

    sched = ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
    first = ray.get(sched.routing_table.remote())
    assert first["policy"] == "fabric"
    assert set(first["weights"]) == {"edge-a", "cloud-a", "cloud-b"}
    assert first["edge_sites"] == ["edge-a"]
    time.sleep(fabric.spec.scheduler.tick_s * 3)
    assert ray.get(sched.routing_table.remote())["version"] > first["version"]
    # the snapshot holds every engine replica with vLLM's own scheduler stats
    for region in ("edge", "cloud", "edge", "cloud"):  # pinned: every small engine serves
        HTTP.post(f"{fabric.base_url}/chat/completions", timeout=60, json={
            "model": "tiny-llama", "messages": MSG, "max_tokens": 8,
            "metadata": {"fabric_region": region}})
    time.sleep(2)
    sites = {s["name"]: s for s in ray.get(sched.status.remote())["snapshot"]["sites"]}
    models = {name: {e["model"] for e in s["engines"]} for name, s in sites.items()}
    assert models == {"edge-a": {"tiny-llama"}, "cloud-a": {"tiny-llama"}, "cloud-b": {"tiny-llama-large"}}
    engines = [e for s in sites.values() for e in s["engines"]]
    assert all(e["healthy"] for e in engines)
    assert all(0 <= e["kv_cache_usage"] <= 1 and e["running"] >= 0 and e["waiting"] >= 0
               for e in engines if e["model"] == "tiny-llama")   # they have served: stats known
    assert {s["latency_class"] for s in sites.values()} == {"regional"}


def test_replicas_are_placed_on_their_regions_nodes(fabric):
    """Placement is real: each region's node holds exactly one engine placement group."""
    import ray

    from fabric.spec import LLM_SLOT_RESOURCE

    nodes = {n["NodeID"]: n["Labels"] for n in ray.nodes() if n["Alive"]}
    engine_nodes = [pg["bundles_to_node_id"][0] for pg in ray.util.placement_group_table().values()
                    if pg["state"] == "CREATED" and LLM_SLOT_RESOURCE in pg["bundles"][0]]
    assert sorted(nodes[n]["fabric/region"] for n in engine_nodes) == ["cloud", "cloud", "edge"]
    assert sorted(nodes[n]["fabric/site"] for n in engine_nodes) == ["cloud-a", "cloud-b", "edge-a"]


def test_regional_endpoints_pin_their_region(fabric):
    assert set(fabric.regional_urls) == {"edge", "cloud"}
    for region, url in fabric.regional_urls.items():
        client = openai.OpenAI(base_url=url, api_key="fabric-local", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["auto", *{
            "edge": ["tiny-llama"], "cloud": ["tiny-llama", "tiny-llama-large"]}[region]]
        for stream in (False, True, False, True):
            # the random-weight model may stop at once or emit tokens that decode to nothing:
            # the count is forced (ignore_eos) and the usage checked, not the text
            raw = client.chat.completions.with_raw_response.create(
                model=fabric.spec.model.id, messages=MSG, max_tokens=4, stream=stream,
                extra_body={"ignore_eos": True},
                **({"stream_options": {"include_usage": True}} if stream else {}))
            assert raw.headers["x-fabric-region"] == region
            parsed = raw.parse()
            if stream:
                usage = [c.usage for c in parsed if c.usage]
                assert usage and usage[-1].completion_tokens >= 1, usage
            else:
                assert parsed.usage.completion_tokens >= 1
    r = HTTP.post(f"{fabric.regional_urls['edge']}/chat/completions", content=b"{nope",
                   headers={"content-type": "application/json"}, timeout=60)
    _assert_openai_error(r, 400)
    r = HTTP.post(f"{fabric.regional_urls['edge']}/chat/completions", timeout=60,
                   json={"model": "tiny-llama", "messages": MSG, "max_tokens": 0})
    _assert_openai_error(r, 400)


def test_region_pin_on_the_global_endpoint(fabric):
    for region in ("edge", "cloud", "edge"):
        r = HTTP.post(f"{fabric.base_url}/chat/completions", timeout=60, json={
            "model": "tiny-llama", "messages": MSG, "max_tokens": 4,
            "metadata": {"fabric_region": region}})
        assert r.status_code == 200 and r.headers["x-fabric-region"] == region
    r = HTTP.post(f"{fabric.base_url}/chat/completions", timeout=60, json={
        "model": "tiny-llama", "messages": MSG, "max_tokens": 4,
        "metadata": {"fabric_region": "mars"}})
    err = _assert_openai_error(r, 503)  # refused with the reason, never served elsewhere
    assert "region=mars" in err["message"]
