"""Layer 5, regional endpoints: ``/<region>/v1/...`` — the OpenAI API pinned to one region.

Each is a small Serve application on the head that stamps ``metadata.fabric_region`` on the
request and streams it through the fabric's global endpoint, whose request router then only
offers that region's replicas (and refuses, rather than reroutes, when there are none). This
costs one local HTTP pass that the global endpoint does not pay; clients that want no extra
hop set ``metadata.fabric_region`` on the global endpoint themselves.
"""

from __future__ import annotations

import json

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from ray import serve

from fabric.spec import ROLE_LABEL


def openai_error(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": status}}, status_code=status)


_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}
app = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0, "label_selector": {ROLE_LABEL: "head"}},
                  max_ongoing_requests=1000)
@serve.ingress(app)
class RegionalEndpoint:
    def __init__(self, region: str, upstream: str):
        self.region = region
        self.upstream = upstream.rstrip("/")
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10),
                                        limits=httpx.Limits(max_connections=1000))

    @app.get("/v1/models")
    async def models(self) -> Response:
        r = await self.client.get(f"{self.upstream}/models")
        return Response(r.content, status_code=r.status_code, media_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._forward("chat/completions", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._forward("completions", request)

    async def _forward(self, path: str, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return openai_error(400, f"request body is not valid JSON: {exc}", "BadRequestError", "body")
        if not isinstance(body, dict):
            return openai_error(400, "request body must be a JSON object", "BadRequestError", "body")
        metadata = body.pop("metadata", None)
        metadata = metadata if isinstance(metadata, dict) else {}
        # first in the body: the router reads it from a possibly truncated prefix
        body = {"metadata": {**metadata, "fabric_region": self.region}, **body}
        forward = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "x-session-id", "x-fabric-agent")}
        upstream = self.client.build_request("POST", f"{self.upstream}/{path}", json=body,
                                             headers=forward)
        try:
            r = await self.client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            return openai_error(503, f"region {self.region!r} is unreachable: {exc}", "ServiceUnavailableError")
        if r.status_code == 503:  # the router found no replica in this region
            await r.aclose()
            return openai_error(503, f"no capacity in region {self.region!r}", "ServiceUnavailableError")
        headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_HEADERS}
        return StreamingResponse(r.aiter_raw(), status_code=r.status_code, headers=headers,
                                 background=BackgroundTask(r.aclose))


def deploy_regional(spec, upstream: str) -> dict[str, str]:
    """One regional app per region; returns region -> base URL."""
    urls = {}
    for region in spec.regions:
        serve.run(RegionalEndpoint.bind(region.name, upstream), name=f"region-{region.name}",
                  route_prefix=f"/{region.name}", blocking=False)
        urls[region.name] = f"http://{spec.endpoint.host}:{spec.endpoint.port}/{region.name}/v1"
    return urls


def build_regional(args: dict):
    """Serve config builder (``import_path: fabric.layers.regional:build_regional``)."""
    return RegionalEndpoint.bind(args["region"], args["upstream"])
