"""Layer 5, the OpenAI Batch API on the fabric's endpoints (``/v1`` and ``/<region>/v1``).

``/v1/files`` and ``/v1/batches`` as the OpenAI API documents them, so the official clients'
``files.create`` + ``batches.create`` work unchanged. The gateways serve them, and so does a
single-model fabric's engine at ``/v1`` (its middleware, no gateway in front); the deferred
queue keeps the files and batches (``fabric.layers.batches``) and runs each line as a deferred
job in the cheapest or greenest window of the completion window. A batch created at a
regional endpoint runs every line through that region's endpoint (pinned to the region).
The caller's key decides whose files and batches it sees: another tenant's are a 404.
"""

from __future__ import annotations

import asyncio
import json
import re

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from fabric.layers.deferred import DEFERRED_NAME
from fabric.layers.errors import openai_error

def _error(status: int, message: str, param=None, code=None) -> JSONResponse:
    return openai_error(status, message, None, param, code)


async def _replayed(raw: bytes, request: Request) -> Request:
    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}
    return Request(request.scope, receive)


# (method, path under /v1) -> (handler, how it is called); the ids are the fabric's own
_ID = r"([A-Za-z0-9_-]+)"
ROUTES = [("POST", r"files", "upload"), ("GET", r"files", "files"),
          ("GET", rf"files/{_ID}", "file_get"), ("GET", rf"files/{_ID}/content", "content"),
          ("DELETE", rf"files/{_ID}", "file_delete"), ("POST", r"batches", "create"),
          ("GET", r"batches", "batches"), ("GET", rf"batches/{_ID}", "get"),
          ("POST", rf"batches/{_ID}/cancel", "cancel")]
PREFIXES = ("/v1/files", "/v1/batches")


def route(method: str, path: str) -> tuple[str, tuple[str, ...]] | tuple[int, str]:
    """(handler name, path arguments) for a Batch API path (``/v1/...``), or (status, message)
    when nothing serves it: 404 for an unknown path, 405 for a known one with another method."""
    rest = path[len("/v1/"):].rstrip("/") if path.startswith("/v1/") else ""
    allowed = []
    for verb, pattern, name in ROUTES:
        m = re.fullmatch(pattern, rest)
        if m:
            if verb == method:
                return name, m.groups()
            allowed.append(verb)
    if allowed:
        return 405, f"{method} is not allowed on {path} (allowed: {', '.join(sorted(set(allowed)))})"
    return 404, f"no such path: {path}"


class BatchAPI:
    """What a gateway needs to serve the Batch API: its tenants' gate, its region, limits."""

    def __init__(self, gate, region: str | None, max_file: int):
        self.gate, self.via, self.max_file = gate, f"/{region}" if region else "", max_file
        self._queue = None

    async def call(self, request: Request, method: str, *args) -> JSONResponse | dict:
        from fabric.metering.tenants import Refusal

        tenant = self.gate.authenticate(request.headers.get("authorization", ""))
        if isinstance(tenant, Refusal):
            return _error(tenant.status, tenant.message, None, tenant.code)
        try:
            if self._queue is None:
                import ray

                from fabric.layers.naming import NAMESPACE
                self._queue = await asyncio.to_thread(ray.get_actor, DEFERRED_NAME, namespace=NAMESPACE)
            out = await self._queue.batch_api.remote(method, tenant.name, *args)
        except Exception as exc:
            self._queue = None
            return _error(503, f"the batch queue is not reachable now: {exc}")
        if "refused" in out:
            return _error(*out["refused"])
        return out

    async def _body(self, request: Request, limit: int) -> bytes | None:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def upload(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(400, "the upload must be multipart/form-data with 'file' and 'purpose'",
                          "file")
        raw = await self._body(request, self.max_file + 64 * 1024)  # the form's own framing
        if raw is None:
            return _error(400, f"the file is over the {self.max_file / 2**20:g} MiB limit", "file",
                          "file_too_large")
        try:
            form = await (await _replayed(raw, request)).form(max_part_size=64 * 1024)
        except Exception as exc:
            return _error(400, f"the upload must be multipart/form-data with 'file' and "
                          f"'purpose': {exc}", "file")
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str):
            return _error(400, "the upload has no 'file' part", "file", "missing_required_parameter")
        data = await upload.read()
        if len(data) > self.max_file:
            return _error(400, f"the file is over the {self.max_file / 2**20:g} MiB limit", "file",
                          "file_too_large")
        return self._json(await self.call(request, "upload", upload.filename or "", purpose, data))

    async def create(self, request: Request) -> Response:
        raw = await self._body(request, 1 << 20)
        if raw is None:
            return _error(400, "the request is over 1 MiB", "body")
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            return _error(400, f"request body is not valid JSON: {exc}", "body")
        return self._json(await self.call(request, "create", payload, self.via))

    async def content(self, request: Request, file_id: str) -> Response:
        out = await self.call(request, "file_content", file_id)
        if isinstance(out, Response):
            return out
        return Response(out["content"], media_type="application/jsonl",
                        headers={"content-disposition": f'attachment; filename="{out["filename"]}"'})

    async def batches(self, request: Request) -> Response:
        query = dict(request.query_params)
        unknown = sorted(set(query) - {"after", "limit"})
        if unknown:
            return _error(400, f"unknown parameter(s): {', '.join(unknown)}", unknown[0])
        limit = query.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 100:
            return _error(400, "limit must be a whole number from 1 to 100", "limit")
        return self._json(await self.call(request, "list", query.get("after"), int(limit)))

    async def files(self, request: Request) -> Response:
        query = dict(request.query_params)
        unknown = sorted(set(query) - {"purpose", "after", "limit", "order"})
        if unknown:
            return _error(400, f"unknown parameter(s): {', '.join(unknown)}", unknown[0])
        return self._json(await self.call(request, "file_list", query.get("purpose")))

    async def dispatch(self, request: Request, path: str) -> Response:
        """Serve one Batch API request (``path`` as under the endpoint: ``/v1/files/...``)."""
        name, args = route(request.method, path)
        if isinstance(name, int):
            return _error(name, args, None, "not_found" if name == 404 else "method_not_allowed")
        return await getattr(self, name)(request, *args)

    async def file_get(self, request: Request, file_id: str) -> Response:
        return self._json(await self.call(request, "file_get", file_id))

    async def file_delete(self, request: Request, file_id: str) -> Response:
        return self._json(await self.call(request, "file_delete", file_id))

    async def get(self, request: Request, batch_id: str) -> Response:
        return self._json(await self.call(request, "get", batch_id))

    async def cancel(self, request: Request, batch_id: str) -> Response:
        return self._json(await self.call(request, "cancel", batch_id))

    @staticmethod
    def _json(out) -> Response:
        return out if isinstance(out, Response) else JSONResponse(out)
