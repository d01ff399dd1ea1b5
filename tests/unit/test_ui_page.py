"""The live page's pure parts: who may open it, and that it needs nothing off the machine."""

import hashlib
import json
import re

from fabric.layers.ui import LiveState, page


def test_the_page_is_the_operators_only():
    assert LiveState(None, loopback=True).refusal({}) is None
    far = LiveState(None, loopback=False).refusal({})
    assert far.status_code == 403 and "operator_key_sha256" in json.loads(far.body)["error"]["message"]
    keyed = LiveState(hashlib.sha256(b"ops-secret").hexdigest(), loopback=False)
    assert keyed.refusal({"key": "ops-secret"}) is None
    for query in ({}, {"key": "fabric-local"}):
        refused = keyed.refusal(query)
        assert refused.status_code == 401
        assert json.loads(refused.body)["error"]["code"] == "invalid_api_key"


def test_the_page_fetches_nothing_from_the_network():
    html = page()
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html)
    assert urls == ["data:,"]  # no script, style sheet, font or icon from anywhere
    assert re.findall(r"https?://[^\s\"'`]+", html) == ["http://www.w3.org/2000/svg"]  # a namespace
    assert "EventSource" in html and "/events" in html


def test_a_reloaded_page_gets_the_charts_history(monkeypatch):
    """The server keeps the chart's last five minutes: a page opened (or reloaded) later
    gets them with its first state instead of an empty chart."""
    import asyncio

    import fabric.layers.ui as ui

    clock = iter(range(0, 1000, 100))

    def gather():
        t = float(next(clock))
        return {"time": t, "sites": [
            {"site": "a", "routing_weight": 0.75, "tokens_per_s": 30.0, "curtailed": t >= 300},
            {"site": "b", "routing_weight": 0.25, "tokens_per_s": 10.0, "curtailed": False}]}

    monkeypatch.setattr(ui, "_gather", gather)
    monkeypatch.setattr(ui, "PERIOD_S", 0.0)
    live = LiveState()

    async def run():
        for _ in range(5):                   # t = 0 .. 400
            await live.latest()
        return await live.first()            # t = 500

    first = asyncio.run(run())
    assert [h["t"] for h in first["history"]] == [200.0, 300.0, 400.0, 500.0]  # 300 s window
    last = first["history"][-1]
    assert last["weights"] == {"a": 0.75, "b": 0.25} and last["shares"] == {"a": 0.75, "b": 0.25}
    assert last["curtailed"] == ["a"] and first["history"][0]["curtailed"] == []
    assert "history" not in asyncio.run(live.latest())   # later events carry only the state
