"""Layer 5, gateways: where an endpoint must choose a model, or pin a region, before the
request router picks a replica.

A model's own app (``/v1`` when the fabric serves one model, ``/models/<slug>/v1`` for each
model otherwise) is the no-hop data path: HAProxy asks the model's request router for a
replica and streams bytes straight to its engine. A router only sees one model's replicas,
and HAProxy routes on the path alone, so a choice *between* models costs one local HTTP pass
through a gateway:

- ``/v1`` when the fabric serves several models: the model is the request's ``model``, or, for
  ``model: auto``, its ``fabric_tier`` hint or the complexity classifier
  (``fabric.scheduling.tiers``); the request goes on to that model's app.
- ``/<region>/v1``: the same, with ``metadata.fabric_region`` stamped, so the router offers
  only that region's replicas (and refuses, rather than reroutes, when there are none).

Gateways also read fabric hints from ``X-Fabric-*`` headers (tier, privacy, region, max
latency, deadline) into ``metadata``, and stamp their choice on the response
(``x-fabric-model``, ``x-fabric-tier``, ``x-fabric-tier-by``). They authenticate the key
first (limits are the engines' to apply) and write each request they refuse themselves to the
ledger, as the engines do: no request goes unrecorded.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.background import BackgroundTask

from fabric.layers.batch_api import BatchAPI
from fabric.layers.body import parse_object, read_limited, too_large
from fabric.layers.errors import openai_error
from fabric.metering.records import request_record
from fabric.metering.tenants import Refusal
from fabric.metering.tenants import from_spec as tenant_gate
from fabric.routing.pick import HINT_HEADERS
from fabric.scheduling.classify import load_classifier
from fabric.scheduling.tiers import AUTO, CatalogModel, ChoiceError, choose_model
from fabric.spec import ROLE_LABEL

FORWARD_HEADERS = ("authorization", "x-session-id", "x-fabric-agent", "x-request-id",
                   "x-fabric-on-behalf-of", "x-fabric-request-id")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}


def with_hints(body: dict, headers, region: str | None) -> dict:
    """The body with header hints and the endpoint's region merged into ``metadata`` (placed
    first: the router reads hints from a possibly truncated prefix of the body). Raises
    ChoiceError when the request pins another region than the endpoint's."""
    metadata = body.pop("metadata", None)
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    for header, key in HINT_HEADERS.items():
        value = headers.get(header)
        if value is not None and key not in metadata:
            metadata[key] = value
    if region is not None:
        if metadata.get("fabric_region") not in (None, region):
            raise ChoiceError(400, f"this endpoint serves region {region!r}; fabric_region="
                              f"{metadata['fabric_region']} asks for another", "metadata", "invalid_hint")
        metadata["fabric_region"] = region
    return {"metadata": metadata, **body}


app = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0, "label_selector": {ROLE_LABEL: "head"}},
                  max_ongoing_requests=1000)
@serve.ingress(app)
class Gateway:
    """``region``: the one region this gateway pins (its app is mounted at ``/<region>``);
    ``regions``: the regions it also serves at ``/<region>/v1`` beside ``/v1`` (its app is
    mounted at ``/``): one replica for every endpoint, not one per region."""

    def __init__(self, models: list[dict], region: str | None = None,
                 classifier: str = "fabric.scheduling.classify:RuleClassifier",
                 classifier_params: dict | None = None, max_body_mb: float = 8.0,
                 tenants: list[dict] | None = None, internal_key_hash: str = "",
                 max_file_mb: float = 200.0, regions: list[str] | None = None):
        self.region = region
        self.regions = set(regions or ())
        self.gate = tenant_gate(tenants or [], internal_key_hash or None, 1.0)
        self.batches = {r: BatchAPI(self.gate, r, int(max_file_mb * 2**20))
                        for r in {region, *self.regions}}
        self.records: list[dict] = []  # refusals made here, kept until the ledger has them
        self.metrics: dict[str | None, object] = {}  # region -> its refusal metrics
        self._shipper: asyncio.Task | None = None
        self.max_body = int(max_body_mb * 2**20)
        self.catalog = [CatalogModel(id=m["id"], tier=m["tier"], regions=frozenset(m["regions"]),
                                     edge=m["edge"]) for m in models]
        self.urls = {m["id"]: m["url"].rstrip("/") for m in models}
        self.classifier = load_classifier(classifier, classifier_params)
        self.created = int(time.time())
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10),
                                        limits=httpx.Limits(max_connections=1000))

    # /v1: this gateway's own endpoint (the whole fabric, or the region it is mounted for)
    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        return self._models(request, self.region)

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._forward("chat/completions", request, self.region)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._forward("completions", request, self.region)

    # the OpenAI Batch API (fabric.layers.batch_api: one route table for every endpoint)
    @app.api_route("/v1/files", methods=["GET", "POST", "DELETE"])
    async def files(self, request: Request) -> Response:
        return await self.batches[self.region].dispatch(request, "/v1/files")

    @app.api_route("/v1/files/{rest:path}", methods=["GET", "POST", "DELETE"])
    async def file(self, rest: str, request: Request) -> Response:
        return await self.batches[self.region].dispatch(request, f"/v1/files/{rest}")

    @app.api_route("/v1/batches", methods=["GET", "POST", "DELETE"])
    async def batches_(self, request: Request) -> Response:
        return await self.batches[self.region].dispatch(request, "/v1/batches")

    @app.api_route("/v1/batches/{rest:path}", methods=["GET", "POST", "DELETE"])
    async def batch_one(self, rest: str, request: Request) -> Response:
        return await self.batches[self.region].dispatch(request, f"/v1/batches/{rest}")

    # /<region>/v1: the regions this gateway serves beside /v1 (mounted at /)
    @app.get("/{region}/v1/models")
    async def region_models(self, region: str, request: Request) -> Response:
        return self._unknown(region) or self._models(request, region)

    @app.post("/{region}/v1/chat/completions")
    async def region_chat(self, region: str, request: Request) -> Response:
        return self._unknown(region) or await self._forward("chat/completions", request, region)

    @app.post("/{region}/v1/completions")
    async def region_completions(self, region: str, request: Request) -> Response:
        return self._unknown(region) or await self._forward("completions", request, region)

    @app.api_route("/{region}/v1/files", methods=["GET", "POST", "DELETE"])
    async def region_files(self, region: str, request: Request) -> Response:
        return self._unknown(region) or await self.batches[region].dispatch(request, "/v1/files")

    @app.api_route("/{region}/v1/files/{rest:path}", methods=["GET", "POST", "DELETE"])
    async def region_file(self, region: str, rest: str, request: Request) -> Response:
        return self._unknown(region) or await self.batches[region].dispatch(
            request, f"/v1/files/{rest}")

    @app.api_route("/{region}/v1/batches", methods=["GET", "POST", "DELETE"])
    async def region_batches(self, region: str, request: Request) -> Response:
        return self._unknown(region) or await self.batches[region].dispatch(request, "/v1/batches")

    @app.api_route("/{region}/v1/batches/{rest:path}", methods=["GET", "POST", "DELETE"])
    async def region_batch_one(self, region: str, rest: str, request: Request) -> Response:
        return self._unknown(region) or await self.batches[region].dispatch(
            request, f"/v1/batches/{rest}")

    def _unknown(self, region: str) -> JSONResponse | None:
        if region in self.regions:
            return None
        return openai_error(404, f"no endpoint /{region}/v1: the fabric's regions are "
                            f"{', '.join(sorted(self.regions)) or 'none here'}", None, None, "not_found")

    def _models(self, request: Request, region: str | None) -> JSONResponse:
        who = self.gate.authenticate(request.headers.get("authorization", ""))
        if isinstance(who, Refusal):
            return openai_error(who.status, who.message, "AuthenticationError", None, who.code)
        served = [m for m in self.catalog if region is None or region in m.regions]
        data = [{"id": AUTO, "object": "model", "created": self.created, "owned_by": "token-fabric",
                 "tier": AUTO}]
        data += [{"id": m.id, "object": "model", "created": self.created, "owned_by": "token-fabric",
                  "tier": m.tier, "regions": sorted(m.regions)} for m in served]
        return JSONResponse({"object": "list", "data": data})

    async def _forward(self, path: str, request: Request, region: str | None) -> Response:
        started, wall, body = time.perf_counter(), time.time(), {}

        def refuse(status: int, message: str, param: str | None = None,
                   code: str | int | None = None, tenant: str = "") -> JSONResponse:
            self._keep(request, body, status, tenant, wall, time.perf_counter() - started, region)
            return openai_error(status, message, None, param, code)

        who = self.gate.identify(request.headers.get("authorization", ""),  # engines check again
                                 request.headers.get("x-fabric-on-behalf-of", ""))
        if isinstance(who, Refusal):
            return refuse(who.status, who.message, None, who.code)
        raw = await read_limited(request.stream(), self.max_body,
                                 request.headers.get("content-length", ""))
        if raw is None:
            return refuse(413, too_large(self.max_body), None, "request_too_large", who.name)
        parsed, invalid = parse_object(raw)
        if invalid:
            return refuse(400, invalid, "body", tenant=who.name)
        body = parsed
        try:
            body = with_hints(dict(body), request.headers, region)
            choice = choose_model(body, self.catalog, self.classifier)
        except ChoiceError as exc:
            return refuse(exc.status, exc.message, exc.param, exc.code, who.name)
        body["metadata"]["fabric_tier"] = choice.tier
        body["model"] = choice.model
        forward = {k: v for k, v in request.headers.items() if k.lower() in FORWARD_HEADERS}
        upstream = self.client.build_request("POST", f"{self.urls[choice.model]}/{path}",
                                             json=body, headers=forward)
        try:
            r = await self.client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            return refuse(503, f"model {choice.model!r} is unreachable: {exc}", tenant=who.name)
        if r.status_code == 503 and "json" not in r.headers.get("content-type", ""):
            await r.aclose()  # no replica at all (the proxy answered, not an engine)
            where = f" in region {region!r}" if region else ""
            return refuse(503, f"no replica of model {choice.model!r}{where} can serve now",
                          tenant=who.name)
        headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_HEADERS}
        headers.update({"x-fabric-model": choice.model, "x-fabric-tier": choice.tier,
                        "x-fabric-tier-by": choice.by})
        if choice.score is not None:
            headers["x-fabric-tier-score"] = f"{choice.score:g}"
        return StreamingResponse(r.aiter_raw(), status_code=r.status_code, headers=headers,
                                 background=BackgroundTask(r.aclose))

    def _keep(self, request: Request, body: dict, status: int, tenant: str, wall: float,
              latency_s: float, region: str | None) -> None:
        """A usage record (no tokens) for a request refused here; the engines record the rest."""
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        record = request_record(
            lambda name: request.headers.get(name, ""), body, ts=wall, tenant=tenant,
            status=status, endpoint=request.url.path,
            tier=str(metadata.get("fabric_tier", "")), region=region or "",
            latency_s=round(latency_s, 6), power_source="")
        self.records.append(record)
        try:
            if region not in self.metrics:
                from fabric.metrics import EngineMetrics
                self.metrics[region] = EngineMetrics(region=region or "-", site="-", model="-")
            self.metrics[region].observe(record, None)
            self.metrics[region].flush()  # refusals are rare: no tick to wait for
        except Exception:  # metrics never fail or lose a request
            pass
        if self._shipper is None or self._shipper.done():
            self._shipper = asyncio.get_running_loop().create_task(self._ship())

    async def _ship(self, period_s: float = 0.5) -> None:
        """Hand kept records to the ledger until it has them all (a restarting ledger: retry)."""
        import ray

        from fabric.layers.naming import NAMESPACE
        from fabric.metering.ledger import LEDGER_NAME, hand_over

        ledger = None
        while self.records:
            await asyncio.sleep(period_s)
            try:
                ledger = ledger or await asyncio.to_thread(ray.get_actor, LEDGER_NAME,
                                                           namespace=NAMESPACE)
                await hand_over(self.records, ledger)
            except Exception:  # ledger restarting: keep them and retry (ids dedupe)
                ledger = None


def catalog(spec, urls: dict[str, str]) -> list[dict]:
    """The gateway's view of the spec's models: tier, hosting regions, edge, app URL."""
    edge_regions = {r.name for r in spec.regions if r.edge}
    out = []
    for m in spec.models:
        regions = sorted({region for region, _ in spec.hosting_sites(m)})
        out.append({"id": m.id, "tier": m.tier, "regions": regions,
                    "edge": bool(set(regions) & edge_regions), "url": urls[m.id]})
    return out


def gateway_args(spec, urls: dict[str, str], region: str | None,
                 internal_key_hash: str = "", regions: list[str] | None = None) -> dict:
    return {"models": catalog(spec, urls), "region": region, "regions": regions or [],
            "classifier": spec.scheduler.classifier,
            "classifier_params": spec.scheduler.classifier_params,
            "max_body_mb": spec.endpoint.max_body_mb,
            "max_file_mb": spec.endpoint.max_file_mb,
            "tenants": [t.model_dump() for t in spec.tenants],
            "internal_key_hash": internal_key_hash}


def build_gateway(args: dict):
    """Serve config builder (``import_path: fabric.layers.gateway:build_gateway``)."""
    return Gateway.bind(**args)


def regional_apps(spec, urls: dict[str, str], internal_key_hash: str = "") -> list[dict]:
    """The gateway apps, as Serve config entries: with several models one gateway at ``/``
    serves ``/v1`` and every ``/<region>/v1``; with one (whose engine app owns ``/``), one
    gateway per region at ``/<region>``."""
    from fabric.layers.distribution import APP_NAME
    if len(spec.models) > 1:
        return [{"name": APP_NAME, "route_prefix": "/",
                 "import_path": "fabric.layers.gateway:build_gateway",
                 "args": gateway_args(spec, urls, None, internal_key_hash,
                                      [r.name for r in spec.regions])}]
    return [{"name": f"region-{r.name}", "route_prefix": f"/{r.name}",
             "import_path": "fabric.layers.gateway:build_gateway",
             "args": gateway_args(spec, urls, r.name, internal_key_hash)} for r in spec.regions]


def regional_urls(spec) -> dict[str, str]:
    """region -> its OpenAI base URL (``/<region>/v1``)."""
    root = f"http://{spec.endpoint.host}:{spec.endpoint.port}"
    return {r.name: f"{root}/{r.name}/v1" for r in spec.regions}
