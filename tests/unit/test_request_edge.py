"""The request edge, defined once (engine middleware, gateway, tenants' API): body limit,
JSON-object parse, and the engine's pure data-path modules loading without Serve."""

import asyncio
import subprocess
import sys

import pytest

from fabric.layers.body import buffer_body, parse_object, read_limited, too_large


@pytest.mark.parametrize("raw, why", [
    (b'{"model": "m"}', ""),
    (b"[1, 2]", "request body must be a JSON object, not list"),
    (b"{oops", "request body is not valid JSON"),
    (b'{"a": "\xff"}', "request body is not valid UTF-8 (byte 7)"),
])
def test_parse_object_says_what_is_wrong(raw, why):
    parsed, invalid = parse_object(raw)
    assert invalid.startswith(why) and (parsed == {"model": "m"}) == (not why)


async def chunks(*parts):
    for p in parts:
        yield p


def test_read_limited_stops_past_the_limit_and_on_a_declared_length():
    run = asyncio.run
    assert run(read_limited(chunks(b"ab", b"cd"), 4)) == b"abcd"
    assert run(read_limited(chunks(b"ab", b"cde"), 4)) is None
    assert run(read_limited(chunks(b"ab"), 4, declared="5")) is None  # nothing read
    assert too_large(8 * 2**20) == "request body too large: the limit is 8 MiB"


def test_buffer_body_replays_the_body_once_then_defers_to_the_client():
    messages = [{"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.request", "body": b"c"}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    async def go():
        body, replay = await buffer_body(receive, limit=10)
        return body, await replay(), await replay()

    body, first, then = asyncio.run(go())
    assert body == b"abc" and first["body"] == b"abc" and then["type"] == "http.disconnect"


def test_the_engine_data_path_loads_without_serve_or_vllm():
    code = ("import sys; import fabric.layers.llm.middleware, fabric.layers.llm.guard, "
            "fabric.layers.llm.tap, fabric.layers.llm.stats, fabric.layers.body; "
            "print(sorted(m for m in ('ray.serve', 'vllm', 'ray.serve.llm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def run_middleware(body: bytes, headers=()):
    """One request through the engine middleware, with a stand-in engine app (a test double:
    the real engine path is the live tests'); returns (status, response body, records)."""
    import json

    from fabric.layers.llm.middleware import FabricMiddleware, ReplicaContext
    from fabric.layers.llm.tap import LoadMeter
    from fabric.metering.records import UsageRecord
    from fabric.metering.tenants import from_spec
    from fabric.routing.pick import Placement

    answer = json.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}})

    async def engine(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer.encode()})

    meter = LoadMeter()
    ctx = ReplicaContext(where={"region": "r", "site": "s", "node_id": "n"}, tier="small",
                         price_in=1.0, price_out=2.0, power_w=100.0, carbon_g_per_kwh=400.0)
    app = FabricMiddleware(engine, [(b"x-fabric-site", b"s")], meter,
                           Placement("s", "r", False), ctx, from_spec([], None, 1.0))
    sent, messages = [], [{"type": "http.request", "body": body}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/v1/chat/completions",
             "headers": [(b"content-length", str(len(body)).encode()), *headers]}
    asyncio.run(app(scope, receive, send))
    for r in meter.records:
        assert UsageRecord(**r).model_dump() == r  # every field the record's model defines
    return sent[0]["status"], sent[1]["body"], meter.records


def test_the_engine_middleware_writes_one_full_record_per_request_refused_or_served():
    status, _, records = run_middleware(b'{"model": "m", "messages": []}')
    assert status == 200 and len(records) == 1
    r = records[0]
    assert (r["prompt_tokens"], r["completion_tokens"], r["site"], r["tier"]) == (5, 7, "s", "small")
    assert r["billed_usd"] == pytest.approx((5 * 1.0 + 7 * 2.0) / 1e6) and r["energy_j"] >= 0

    status, body, records = run_middleware(b"[1]")
    assert status == 400 and b"must be a JSON object" in body
    assert len(records) == 1 and records[0]["status"] == 400 and records[0]["completion_tokens"] == 0

    status, _, records = run_middleware(b'{"model": "m"}', [(b"x-fabric-privacy", b"edge")])
    assert status == 400 and records[0]["status"] == 400  # a hint header on the engine endpoint


def test_every_edge_writes_who_and_what_from_the_same_rule():
    from fabric.metering.records import request_record

    def headers(**h):
        return lambda name: h.get(name.replace("-", "_"), "")

    body = {"model": "m", "metadata": {"fabric_agent": "meta-agent", "fabric_session": "s1"}}
    r = request_record(headers(x_fabric_agent="hdr-agent", x_request_id="client-1"), body,
                       ts=1.0, tenant="acme", status=429, endpoint="/v1/chat/completions")
    assert (r["agent_id"], r["session_id"], r["model"], r["status"]) == ("hdr-agent", "s1", "m", 429)
    assert r["request_id"].startswith("fabric-") and r["completion_tokens"] == 0  # never the client's id
    # a name the fabric's services gave a request they may retry: its last word takes it, an
    # outcome they retry does not (the ledger keeps an id's first record: the retry's would go)
    named = headers(x_fabric_request_id="batch-7", x_fabric_on_behalf_of="acme")
    for status, keeps in ((200, True), (400, True), (403, True), (429, False), (503, False)):
        rid = request_record(named, {}, ts=1.0, tenant="acme", status=status, endpoint="/")["request_id"]
        assert (rid == "batch-7") == keeps, status
    # only on behalf of an identified tenant; otherwise the engine's own id, else a fresh one
    assert request_record(named, {}, ts=1.0, tenant="", status=401, endpoint="/")["request_id"] != "batch-7"
    assert request_record(headers(), [], ts=1.0, tenant="t", status=200, endpoint="/",
                          request_id="engine-9", prompt_tokens=3)["request_id"] == "engine-9"
