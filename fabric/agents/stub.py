"""A trivial OpenAI-shaped responder, to measure the swarm machinery alone.

It answers chat completions instantly with ``max_tokens`` words in one SSE chunk plus a usage
chunk, counting prompt "tokens" as words — no model, no fabric. bench/agents.py points 10,000
agents at it; the unit tests of the agent loop use it too. Run: ``python -m fabric.agents.stub
--port 8077``.
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

_DONE = b"data: [DONE]\n\n"
EDGE = web.AppKey("edge", bool)  # whether privacy=edge requests are served


def _words(messages) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
        messages, max_tokens = body["messages"], int(body.get("max_tokens") or 16)
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": {"message": "invalid request", "type": "invalid_request_error"}},
                                 status=400)
    meta = body.get("metadata") or {}
    if meta.get("fabric_privacy") == "edge" and not request.app[EDGE]:
        return web.json_response({"error": {"message": "privacy=edge: no edge site here",
                                            "type": "service_unavailable"}}, status=503)
    prompt = _words(messages)
    headers = {"content-type": "text/event-stream", "x-fabric-region": "stub", "x-fabric-site": "stub-1"}
    if not body.get("stream"):
        return web.json_response({"id": "stub", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok " * max_tokens}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": max_tokens,
                      "total_tokens": prompt + max_tokens}}, headers=headers)
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    text = " ".join(f"w{i}" for i in range(max_tokens))
    await resp.write(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode()
                     + b"\n\ndata: " + json.dumps({"choices": [], "usage": {
                         "prompt_tokens": prompt, "completion_tokens": max_tokens,
                         "total_tokens": prompt + max_tokens}}).encode() + b"\n\n" + _DONE)
    await resp.write_eof()
    return resp


async def models(_request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "stub-model", "object": "model"}]})


def make_app(edge: bool = True) -> web.Application:
    app = web.Application()
    app[EDGE] = edge
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8077)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None, backlog=4096)
