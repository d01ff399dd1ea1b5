import json

from fabric.layers.llm.tap import TokenTap


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
    tap.finish()
    assert tap.completion_tokens() == 12 and tap.prompt_tokens() == 9


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
    usage = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                          "prompt_tokens_details": {"cached_tokens": 1}}})
    assert tap.body(usage) == usage  # the client asked for it: passed on
    assert (tap.completion_tokens(), tap.prompt_tokens(), tap.cached_tokens()) == (2, 3, 1)


def test_usage_event_is_cut_when_the_client_did_not_ask():
    now = [0.0]
    tap = TokenTap(strip_usage=True, clock=lambda: now[0])
    tap.start({"status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    now[0] = 0.25
    first = sse(chunk("a"))
    assert tap.body(first) == first and tap.first_token_at == 0.25
    tail = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}) + b"data: [DONE]\n\n"
    out = tap.body(tail)
    assert b"usage" not in out and out.endswith(b"data: [DONE]\n\n")
    assert tap.completion_tokens() == 1 and tap.prompt_tokens() == 3 and tap.status == 200


def test_error_bodies_count_nothing():
    tap = TokenTap()
    tap.start({"headers": [(b"content-type", b"application/json")]})
    tap.body(b'{"error": {"message": "bad"}}')
    tap.finish()
    assert tap.completion_tokens() == 0
    tap = TokenTap()
    tap.start({"headers": [(b"content-type", b"application/json")]})
    tap.body(b"not json")
    tap.finish()
    assert tap.completion_tokens() == 0


def test_engine_guard_refuses_what_this_replica_may_not_serve():
    from fabric.layers.llm.guard import refusal
    from fabric.routing.pick import Placement

    cloud = Placement(site="cloud-a", region="cloud", edge=False)
    edge = Placement(site="edge-a", region="edge", edge=True)
    plain = {"messages": [], "metadata": {"user": "x"}}
    private = {"metadata": {"fabric_privacy": "edge"}, "messages": []}
    pinned = {"metadata": {"fabric_region": "mars"}}
    assert refusal(plain, cloud) is None and refusal({}, cloud) is None
    assert refusal(private, edge) is None
    status, reason, retry = refusal(private, cloud)
    assert status == 503 and "privacy=edge" in reason and retry > 0
    assert refusal(pinned, cloud)[0] == 503 and "region=mars" in refusal(pinned, cloud)[1]
    # with the table: a parked site that may serve it is named (transient: Retry-After); a
    # region no site of the fabric is in is a 503 for good (no Retry-After)
    table = {"site_region": {"edge-a": "edge", "cloud-a": "cloud"}, "edge_sites": ["edge-a"],
             "parked": ["edge-a"]}
    status, reason, retry = refusal(private, cloud, table=table)
    assert status == 503 and "edge-a parked" in reason and retry > 0
    status, reason, retry = refusal(pinned, cloud, table=table)
    assert status == 503 and "no site of this fabric is there" in reason and retry is None
    bad = {"metadata": {"fabric_privacy": "region"}}
    assert refusal(bad, edge) == (400, "fabric_privacy=region needs fabric_region")
