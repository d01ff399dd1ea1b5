"""Bad input gets the right 4xx in the OpenAI error shape — never a 5xx, a crash or a hang."""

import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HTTP

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "hello"}]


def openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert isinstance(err, dict) and err.get("message") and "type" in err, err
    return err


@pytest.mark.parametrize("body, needle", [
    ({"messages": "hello"}, "messages"),                                  # wrong type
    ({"messages": MSG, "max_tokens": "ten"}, "max_tokens"),
    ({"messages": MSG, "temperature": "hot"}, "temperature"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "max_tokens": -1}, "max_tokens"),
    ({"messages": MSG, "metadata": {"fabric_privacy": "bogus"}}, "fabric_privacy"),
    ({"messages": MSG, "metadata": {"fabric_privacy": "region"}}, "fabric_region"),
    ({"messages": [{"role": "user", "content": "word " * 5000}], "max_tokens": 8}, "context"),
])
def test_bad_chat_requests_are_400(fabric, body, needle):
    r = HTTP.post(f"{fabric.base_url}/chat/completions",
                  json={"model": fabric.spec.model.id, **body}, timeout=60)
    err = openai_error(r, 400)
    assert needle.lower() in err["message"].lower()


def test_bad_completions_request_is_400(fabric):
    r = HTTP.post(f"{fabric.base_url}/completions",
                  json={"model": fabric.spec.model.id, "prompt": {"not": "a prompt"}}, timeout=60)
    openai_error(r, 400)


def test_unknown_model_is_404(fabric):
    r = HTTP.post(f"{fabric.base_url}/chat/completions", json={"model": "gpt-9", "messages": MSG})
    assert "gpt-9" in openai_error(r, 404)["message"]


def test_invalid_utf8_and_non_object_bodies_are_400(fabric):
    url = f"{fabric.base_url}/chat/completions"
    for raw in (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
                b"[1, 2, 3]", b"null", b""):
        r = HTTP.post(url, content=raw, headers={"content-type": "application/json"}, timeout=60)
        openai_error(r, 400)


def test_oversized_body_is_413_without_reading_it_all(fabric):
    limit = int(fabric.spec.endpoint.max_body_mb * 2**20)
    big = {"model": fabric.spec.model.id, "messages": [{"role": "user", "content": "x" * (limit + 1024)}]}
    r = HTTP.post(f"{fabric.base_url}/chat/completions", json=big, timeout=120)
    assert "too large" in openai_error(r, 413)["message"]


def test_a_slow_client_does_not_stall_others(fabric):
    """A client that trickles its body keeps its own connection busy, nobody else's."""
    url = urlparse(fabric.base_url)
    body = (b'{"model": "%s", "max_tokens": 4, "messages": [{"role": "user", "content": "slow"}]}'
            % fabric.spec.model.id.encode())
    head = (f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.hostname}\r\n"
            f"Authorization: Bearer fabric-local\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    reply: list[bytes] = []

    def trickle():
        with socket.create_connection((url.hostname, url.port), timeout=60) as s:
            s.sendall(head)
            for i in range(0, len(body), 16):
                s.sendall(body[i:i + 16])
                time.sleep(0.5)
            reply.append(s.recv(4096))

    t = threading.Thread(target=trickle)
    t.start()
    time.sleep(1.0)
    start = time.monotonic()
    r = HTTP.post(f"{fabric.base_url}/chat/completions",
                  json={"model": fabric.spec.model.id, "messages": MSG, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and t.is_alive()   # served while the slow body still trickles
    assert time.monotonic() - start < 30
    t.join(90)
    assert reply and reply[0].startswith(b"HTTP/1.1 200"), reply


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELDS = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["tiny-llama", "other"]) | JSON,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]) | JSON,
                                                "content": st.text(max_size=40) | JSON}), max_size=3) | JSON,
    "max_tokens": st.integers(-5, 12) | JSON, "temperature": st.floats(-1, 3) | JSON,
    "stream": st.booleans() | JSON, "n": st.integers(-1, 3), "top_p": st.floats(-1, 2) | JSON,
    "metadata": st.dictionaries(st.sampled_from(["fabric_privacy", "fabric_region", "fabric_tier", "x"]),
                                st.text(max_size=10), max_size=3) | JSON,
})


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=FIELDS)
def test_fuzzed_chat_bodies_never_get_a_5xx(fabric, body):
    r = HTTP.post(f"{fabric.base_url}/chat/completions", json=body, timeout=60)
    pinned = r.status_code == 503 and "no capacity allowed" in r.text  # a region nobody serves
    assert r.status_code < 500 or pinned, (body, r.status_code, r.text[:300])
    if r.status_code != 200:
        err = r.json()["error"]
        assert err["message"] and "type" in err
