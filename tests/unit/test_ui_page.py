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
