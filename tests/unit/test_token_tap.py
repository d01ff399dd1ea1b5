import json

from fabric.layers.llm import TokenTap


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunk(content):
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}}]}


def test_non_streaming_reads_usage():
    tap = TokenTap()
    tap.start({"headers": [(b"content-type", b"application/json")]})
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12}}).encode()
    tap.body(body[:10])
    tap.body(body[10:])
    assert tap.completion_tokens() == 12


def test_stream_counts_content_deltas():
    tap = TokenTap()
    tap.start({"headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
    tap.body(sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}))
    tap.body(sse(chunk("a")) + sse(chunk("b")))
    tap.body(sse(chunk(" c")) + b"data: [DONE]\n\n")
    assert tap.completion_tokens() == 3


def test_stream_prefers_reported_usage():
    tap = TokenTap()
    tap.start({"headers": [(b"content-type", b"text/event-stream")]})
    tap.body(sse(chunk("ab")))
    tap.body(sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}))
    assert tap.completion_tokens() == 2


def test_error_bodies_count_nothing():
    tap = TokenTap()
    tap.start({"headers": [(b"content-type", b"application/json")]})
    tap.body(b'{"error": {"message": "bad"}}')
    assert tap.completion_tokens() == 0
    tap = TokenTap()
    tap.start({"headers": [(b"content-type", b"application/json")]})
    tap.body(b"not json")
    assert tap.completion_tokens() == 0
