"""The request edge's body handling, defined once for every edge of the fabric (engine
middleware, gateway, tenants' API): a size-limited read, the JSON-object parse and the
messages a client gets when either fails."""

from __future__ import annotations

import json


def too_large(limit: int) -> str:
    """The 413 message for a body over ``limit`` bytes."""
    return f"request body too large: the limit is {limit / 2**20:g} MiB"


def parse_object(body: bytes) -> tuple[dict, str]:
    """The request as a dict, or ({}, why it is not a JSON object)."""
    try:
        request = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return {}, f"request body is not valid UTF-8 (byte {exc.start})"
    except ValueError as exc:
        return {}, f"request body is not valid JSON: {exc}"
    if not isinstance(request, dict):
        return {}, f"request body must be a JSON object, not {type(request).__name__}"
    return request, ""


async def read_limited(chunks, limit: int, declared: str = "") -> bytes | None:
    """The body from an async iterator of chunks, or None once it passes ``limit`` bytes
    (refused on a declared Content-Length before any of it is read)."""
    if declared.isdigit() and int(declared) > limit:
        return None
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def buffer_body(receive, limit: int | None = None):
    """Read the whole request body, and return it with a receive() that replays it; (None,
    receive) once it passes ``limit`` bytes (the rest is not read)."""
    chunks, more, size = [], True, 0
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"", receive
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if limit is not None and size > limit:
            return None, receive
        more = message.get("more_body", False)
    body = b"".join(chunks)
    return body, replaying(body, receive)


def replaying(body: bytes, receive):
    """A receive() that yields ``body`` once, then defers to the real one (which reports the
    client's disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def header(scope, name: bytes) -> str:
    """An ASGI request's header (``name`` lower-case), "" when absent."""
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return ""


def with_usage_requested(body: bytes, request: dict) -> tuple[bytes, bool]:
    """For a stream whose client did not ask for usage, ask for it (exact metering); returns
    the body to send on and whether the usage event must be cut from the response."""
    if not request.get("stream"):
        return body, False
    options = request.get("stream_options") if isinstance(request.get("stream_options"), dict) else {}
    if options.get("include_usage"):
        return body, False
    request["stream_options"] = {**options, "include_usage": True}
    return json.dumps(request).encode(), True
