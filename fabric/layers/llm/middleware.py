"""The engine's data path: ASGI middleware inside the engine's own app (no extra hop) that
guards fabric hints, checks the tenant, stamps where the request ran, meters load and writes
one ``UsageRecord`` per generation request — refusals included, with no tokens."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from starlette.requests import Request

from fabric.layers.batch_api import PREFIXES as BATCH_PREFIXES
from fabric.layers.batch_api import BatchAPI
from fabric.layers.body import (buffer_body, header, parse_object, replaying, too_large,
                                with_usage_requested)
from fabric.layers.errors import error_body
from fabric.layers.llm.guard import hint_headers_in, refusal
from fabric.layers.llm.tap import LoadMeter, TokenTap
from fabric.metering.records import attribute, billed_usd, request_record
from fabric.metering.tenants import Gatekeeper, Refusal
from fabric.routing.pick import Placement

logger = logging.getLogger("fabric.llm")


@dataclass
class ReplicaContext:
    """What the data path needs to know about its replica to meter a request, refreshed in
    the background (never fetched per request)."""

    where: dict
    tier: str = ""
    price_in: float = 0.0    # $ per million prompt tokens
    price_out: float = 0.0   # $ per million completion tokens
    power_w: float = 0.0     # the node's GPU power now (measured or modelled)
    power_source: str = "model"
    pue: float = 1.0
    carbon_g_per_kwh: float = 0.0
    price_usd_per_mwh: float = 0.0
    policy: str | None = None          # the routing table this replica last saw
    table_version: int | None = None
    counterfactual: dict | None = None  # this site's least_load counterfactual, from the table
    places: dict | None = None  # the table's site_region, edge_sites and parked (the guard's)



class FabricMiddleware:
    """ASGI middleware inside the engine's own app (no extra hop): refuses requests whose
    fabric hints this replica may not serve, stamps the serving replica's region/site on every
    response, meters generation load, and writes one usage record per generation request.
    In a single-model fabric (its engine app at ``/``, no gateway in front) it also serves the
    Batch API there (``FABRIC_BATCH_MAX_FILE_MB`` set)."""

    GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")

    def __init__(self, app, headers: list[tuple[bytes, bytes]], meter: LoadMeter,
                 here: Placement, ctx: ReplicaContext, gate: Gatekeeper, metrics=None):
        self.app, self.headers, self.meter, self.here, self.ctx = app, headers, meter, here, ctx
        self.gate, self.metrics = gate, metrics
        self.max_body = int(float(os.environ.get("FABRIC_MAX_BODY_MB", "8")) * 2**20)
        max_file = os.environ.get("FABRIC_BATCH_MAX_FILE_MB")
        self.batch = None
        if max_file:
            self.batch = BatchAPI(gate, None, int(float(max_file) * 2**20))

    def _keep(self, record: dict) -> None:
        """Every usage record: to the ledger queue, and into the replica's metrics."""
        self.meter.records.append(record)
        if self.metrics is not None:
            try:
                self.metrics.observe(record, self.meter.inflight)
            except Exception as exc:  # metrics never fail or lose a request
                logger.warning("metrics: %s", exc)

    async def _refuse(self, send, status: int, reason: str, code: str | None = None,
                      param: str | None = "metadata", retry_after: float | None = None) -> None:
        payload = json.dumps(error_body(status, reason, None, param, code)).encode()
        extra = [(b"retry-after", str(int(retry_after)).encode())] if retry_after else []
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode())] + extra + self.headers})
        await send({"type": "http.response.body", "body": payload})

    def _record_refusal(self, scope, request, status, tenant, wall, started) -> None:
        tap = TokenTap()
        tap.status = status
        self._keep(self._record(scope, request, tap, "", wall, started, 1.0, tenant))

    async def __call__(self, scope, receive, send):
        if self.batch is not None and scope["type"] == "http":
            path, root = scope.get("path", ""), scope.get("root_path", "")
            path = path[len(root):] if root and path.startswith(root) else path
            if path.startswith(BATCH_PREFIXES):
                response = await self.batch.dispatch(Request(scope, receive), path)
                return await response(scope, receive, send)
        if scope["type"] != "http" or not scope.get("path", "").endswith(self.GENERATION_PATHS):
            return await self.app(scope, receive, send)
        started, wall = time.perf_counter(), time.time()
        declared = header(scope, b"content-length")
        too_large = declared.isdigit() and int(declared) > self.max_body
        body, replay = (b"", receive) if too_large else await buffer_body(receive, self.max_body)
        if too_large or body is None:
            await self._refuse(send, 413, too_large(self.max_body), "request_too_large", None)
            return self._record_refusal(scope, {}, 413, "", wall, started)
        request, invalid = parse_object(body)
        # refused requests are recorded too, with their status and no tokens
        behalf = header(scope, b"x-fabric-on-behalf-of")
        tenant = self.gate.identify(header(scope, b"authorization"), behalf)
        if isinstance(tenant, Refusal):
            await self._refuse(send, tenant.status, tenant.message, tenant.code, None)
            return self._record_refusal(scope, request, tenant.status, "", wall, started)
        if invalid:
            await self._refuse(send, 400, invalid, "invalid_request_body", None)
            return self._record_refusal(scope, request, 400, tenant.name, wall, started)
        refused = refusal(request, self.here, self.ctx.tier,
                          hint_headers_in(scope), self.ctx.places)
        if refused:
            status, reason, *retry = refused
            await self._refuse(send, status, reason, retry_after=retry[0] if retry else None)
            return self._record_refusal(scope, request, status, tenant.name, wall, started)
        metadata = request.get("metadata") if isinstance(request.get("metadata"), dict) else {}
        region = metadata.get("fabric_region")
        over = self.gate.admit(tenant, str(metadata.get("fabric_privacy", "none")),
                               region if isinstance(region, str) else None, self.ctx.tier)
        if over:
            await self._refuse(send, over.status, over.message, over.code, None, over.retry_after_s)
            return self._record_refusal(scope, request, over.status, tenant.name, wall, started)
        strip = False
        if request:
            new_body, strip = with_usage_requested(body, request)
            if strip:
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                              if k.lower() != b"content-length"]
                         + [(b"content-length", str(len(new_body)).encode())]}
                replay = replaying(new_body, receive)
        tap = TokenTap(strip_usage=strip)
        # the record's id (records.request_record): a name the fabric's own services gave the
        # request, else the engine's own request id (a client's x-request-id may repeat)
        named = bool(behalf and header(scope, b"x-fabric-request-id"))
        request_id = ""

        async def send_on(message):
            nonlocal request_id
            if message["type"] == "http.response.start":
                tap.start(message)
                if not named and not header(scope, b"x-request-id"):
                    request_id = next((v.decode() for k, v in message.get("headers", [])
                                       if k.lower() == b"x-request-id"), "")
                message = {**message, "headers": list(message.get("headers", [])) + self.headers}
            elif message["type"] == "http.response.body":
                message = {**message, "body": tap.body(message.get("body", b""))}
            await send(message)

        inflight_at_start = self.meter.inflight + 1
        self.meter.start()
        if self.metrics is not None:
            self.metrics.queue_depth(self.meter.inflight)
        try:
            await self.app(scope, replay, send_on)
        finally:
            tap.finish()
            concurrency = (inflight_at_start + self.meter.inflight) / 2
            self.meter.finish(tap.completion_tokens())
            record = self._record(scope, request, tap, request_id, wall, started, concurrency,
                                  tenant.name)
            self._keep(record)
            self.gate.charge(tenant, record["prompt_tokens"] + record["completion_tokens"],
                             record["billed_usd"])

    def _record(self, scope, request: dict, tap: TokenTap, request_id: str, wall: float,
                started: float, concurrency: float, tenant: str) -> dict:
        c = self.ctx
        now = time.perf_counter()
        latency = now - started
        energy, carbon, cost = attribute(c.power_w, latency, concurrency, c.pue,
                                         c.carbon_g_per_kwh, c.price_usd_per_mwh)
        prompt, completion = tap.prompt_tokens(), tap.completion_tokens()
        return request_record(
            lambda name: header(scope, name.encode()), request, ts=wall, tenant=tenant,
            status=tap.status, endpoint=scope.get("path", ""), request_id=request_id,
            tier=c.tier, region=c.where["region"], site=c.where["site"], node=c.where["node_id"],
            prompt_tokens=prompt, completion_tokens=completion,
            cached_tokens=tap.cached_tokens(),
            ttft_s=round((tap.first_token_at or now) - started, 6),
            latency_s=round(latency, 6), energy_j=round(energy, 6),
            carbon_g=round(carbon, 9), energy_cost_usd=round(cost, 12),
            billed_usd=round(billed_usd(prompt, completion, c.price_in, c.price_out), 12)
            if tap.status == 200 else 0.0,
            power_source=c.power_source,
            **counterfactual(c, energy),
        )


def counterfactual(c: ReplicaContext, energy_j: float) -> dict:
    """The record's policy, table version and least_load counterfactual (none before the
    replica has seen a table)."""
    if c.counterfactual is None:
        return {"policy": c.policy, "table_version": c.table_version}
    from fabric.scheduling.counterfactual import price

    usd, grams = price(energy_j, c.counterfactual)
    return {"policy": c.policy, "table_version": c.table_version,
            "counterfactual_site": c.counterfactual.get("site"),
            "counterfactual_energy_cost_usd": round(usd, 12), "counterfactual_carbon_g": round(grams, 9)}
