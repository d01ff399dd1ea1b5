"""The federation's data path against stand-in members (an httpx transport answering as a
member would): retries before the first byte, a cut stream's error event, the table from the
members' snapshots, usage merged. The real path (two Ray clusters) is
tests/integration/test_federation.py."""

import asyncio
import json

import httpx

from fabric.federation.server import Federation, build_app
from fabric.federation.spec import parse_federation

SPEC = {"members": [{"name": "west", "url": "http://west:1", "regions": ["west"]},
                    {"name": "east", "url": "http://east:1", "regions": ["east"]}],
        "health": {"readmit_after": 2}, "tick_s": 1.0}


def snapshot(site: str, region: str, price: float, edge: bool = False) -> dict:
    return {"name": region, "regions": [{"name": region, "edge": edge, "sites": [site]}],
            "models": [{"id": "tiny", "tier": "small", "regions": [region], "edge": edge}],
            "snapshot": {"tick": 1, "sites": [{
                "name": site, "region": region, "edge": edge, "budget_w": 10000.0,
                "facility_w": 1000.0, "price_usd_per_mwh": price, "carbon_g_per_kwh": 100.0,
                "replicas": 1, "pue": 1.2, "idle_w": 300.0, "dynamic_w": 2000.0,
                "j_per_token": 0.5, "model": "tiny",
                "engines": [{"replica": f"{site}-r", "model": "tiny"}]}]}}


class CutStream(httpx.AsyncByteStream):
    async def __aiter__(self):
        yield b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
        raise httpx.ReadError("the member's node is gone")


class Members:
    """Stand-in members: what each answers, and every call they got."""

    def __init__(self):
        self.down: set[str] = set()      # refuse connections
        self.cut: set[str] = set()       # cut streams after the first event
        self.calls: list[tuple[str, str]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        member, path = request.url.host, request.url.path
        self.calls.append((member, path))
        if member in self.down:
            raise httpx.ConnectError("connection refused")
        if path.endswith("/federation/snapshot"):
            site, price = ("west-a", 200.0) if member == "west" else ("east-a", 40.0)
            return httpx.Response(200, json=snapshot(site, member, price, member == "west"))
        if path.endswith("/fabric/v1/usage"):
            n = 3 if member == "west" else 5
            return httpx.Response(200, json={"object": "fabric.usage", "tenant": "demo",
                                             "totals": {"requests": n, "prompt_tokens": 10 * n,
                                                        "completion_tokens": n, "energy_j": 1.0},
                                             "group_by": None, "data": []})
        body = json.loads(request.content)
        if body.get("stream"):
            if member in self.cut:
                return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                      stream=CutStream())
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=b'data: {"choices":[]}\n\ndata: [DONE]\n\n')
        return httpx.Response(200, json={"served_by": member, "path": path})


def run(members: Members, steps):
    async def go():
        fed = Federation(parse_federation(SPEC),
                         httpx.AsyncClient(transport=httpx.MockTransport(members.handler)))
        app = build_app(fed)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://fed") as client:
            await fed.tick()
            return await steps(fed, client)
    return asyncio.run(go())


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_the_table_weights_the_cheaper_member_and_pins_hold():
    members = Members()

    async def steps(fed, client):
        assert fed.table.weights["east-a"] > fed.table.weights.get("west-a", 0)  # $40 vs $200
        plain = [(await client.post("/v1/chat/completions", json=CHAT)).json()["served_by"]
                 for _ in range(6)]
        pinned = await client.post("/west/v1/chat/completions", json=CHAT)
        edge = await client.post("/v1/chat/completions",
                                 json={**CHAT, "metadata": {"fabric_privacy": "edge"}})
        return plain, pinned, edge

    plain, pinned, edge = run(members, steps)
    assert plain.count("east") >= 5, plain
    assert pinned.json() == {"served_by": "west", "path": "/west/v1/chat/completions"}
    assert pinned.headers["x-fabric-member"] == "west"
    assert edge.json()["served_by"] == "west"


def test_a_refused_connection_is_retried_elsewhere_and_takes_the_member_out():
    members = Members()

    async def steps(fed, client):
        members.down.add("east")
        r = await client.post("/v1/chat/completions", json=CHAT)  # east first, then west
        states = {m.name: m.state for m in fed.members}
        pinned = await client.post("/east/v1/chat/completions", json=CHAT)
        members.down.clear()
        await fed.tick()  # one good answer is not enough to come back
        after_one = {m.name: m.state for m in fed.members}
        await fed.tick()
        return r, states, pinned, after_one, {m.name: m.state for m in fed.members}

    r, states, pinned, after_one, back = run(members, steps)
    assert r.status_code == 200 and r.json()["served_by"] == "west"
    assert states == {"west": "in", "east": "out"}
    assert pinned.status_code == 503 and "held by member 'east'" in pinned.json()["error"]["message"]
    assert after_one["east"] == "coming back" and back["east"] == "in"


def test_a_stream_its_member_cut_ends_with_an_error_event():
    members = Members()
    members.cut.add("east")

    async def steps(fed, client):
        r = await client.post("/east/v1/chat/completions", json={**CHAT, "stream": True})
        return r, {m.name: m.state for m in fed.members}

    r, states = run(members, steps)
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[0].startswith('data: {"choices"')
    error = json.loads(events[1].removeprefix("data: "))["error"]
    assert error["code"] == "member_lost" and "east" in error["message"]
    assert events[-1] == "data: [DONE]" and states["east"] == "out"


def test_bad_input_and_unknown_places_get_openai_errors():
    members = Members()

    async def steps(fed, client):
        return [await client.post("/v1/chat/completions", content=b"{nope"),
                await client.post("/mars/v1/chat/completions", json=CHAT),
                await client.post("/v1/chat/completions", json={**CHAT, "model": "huge"}),
                await client.post("/v1/chat/completions",
                                  json={**CHAT, "metadata": {"fabric_privacy": "region"}}),
                await client.get("/v2/anything")]

    bad, mars, huge, privacy, unknown = run(members, steps)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "body"
    assert mars.status_code == 404 and "no member of the federation holds region 'mars'" in mars.text
    assert huge.status_code == 404 and huge.json()["error"]["code"] == "model_not_found"
    assert privacy.status_code == 400 and "needs fabric_region" in privacy.text
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_tenants_usage_is_summed_over_members_and_says_when_one_is_missing():
    members = Members()

    async def steps(fed, client):
        whole = (await client.get("/fabric/v1/usage")).json()
        members.down.add("west")
        part = (await client.get("/fabric/v1/usage")).json()
        return whole, part

    whole, part = run(members, steps)
    assert whole["totals"]["requests"] == 8 and whole["complete"]
    assert whole["totals"]["prompt_tokens"] == 80
    assert part["totals"]["requests"] == 5 and not part["complete"]
    assert part["members"]["west"].startswith("unreachable")
