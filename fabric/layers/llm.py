"""Layer 4: token generators — vLLM replicas served through ``ray.serve.llm``.

One deployment per model whose replicas spread over the sites (one LLM slot resource per
site raylet, restricted by label to the spec's regions). Each replica publishes its site
and region so the request router can apply the routing table, and stamps them on every
HTTP response (``x-fabric-region`` / ``x-fabric-site``) from inside the engine's own app:
no extra hop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import ray
from ray import serve
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer
from starlette.requests import Request

from fabric.layers.batch_api import PREFIXES as BATCH_PREFIXES
from fabric.layers.batch_api import BatchAPI
from fabric.layers.errors import error_body
from fabric.metering.records import attribute, billed_usd
from fabric.metering.tenants import Gatekeeper, Refusal, key_hash
from fabric.metering.tenants import from_spec as tenant_gate
from fabric.routing.pick import (HINT_HEADERS, NoAllowedReplica, Placement, allowed, check_hints,
                                 request_hints)
from fabric.spec import (EDGE_LABEL, LLM_SLOT_RESOURCE, REGION_LABEL, SITE_LABEL, FabricSpec,
                         ModelSpec)

logger = logging.getLogger("fabric.llm")

# Engine settings verified for vLLM on CPU (see README): small KV cache, eager mode.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,
    "gpu_memory_utilization": 0.2,  # on CPU: the share of RAM each engine checks is free
    "dtype": "bfloat16",
    "max_num_seqs": 64,
}
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                  "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING"}


class LoadMeter:
    """In-flight generation requests and the share of time the engine had any (its
    utilisation, as a GPU's "busy" counter would report it)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.inflight = 0
        self.requests = 0      # generation requests finished
        self.tokens_out = 0    # completion tokens they produced
        self.records: list[dict] = []  # usage records not yet acknowledged by the ledger
        self._busy = 0.0
        self._since = self._mark = clock()

    def _advance(self) -> None:
        now = self.clock()
        if self.inflight:
            self._busy += now - self._mark
        self._mark = now

    def start(self) -> None:
        self._advance()
        self.inflight += 1

    def finish(self, tokens_out: int = 0) -> None:
        self._advance()
        self.inflight -= 1
        self.requests += 1
        self.tokens_out += tokens_out

    def take_utilisation(self) -> float:
        """Busy share since the previous call."""
        self._advance()
        elapsed = self._mark - self._since
        util = self._busy / elapsed if elapsed > 0 else 0.0
        self._busy, self._since = 0.0, self._mark
        return min(1.0, util)


_CONTENT = b'"delta":{"content":"'
_EMPTY = b'"delta":{"content":""'


class TokenTap:
    """Watches one response's bytes: status, time to first token, and the usage the engine
    reports. Streams are made to report usage (``include_usage`` is added to the request when
    the client did not ask); the usage event is then removed before it reaches a client that
    did not ask for it. Without usage (an engine error mid-stream) completion tokens fall back
    to one per content delta. Byte searches per chunk, a JSON parse only on the usage event:
    this runs on the data path.
    """

    MAX_BODY = 8 * 2**20

    def __init__(self, strip_usage: bool = False, clock=time.perf_counter) -> None:
        self.strip_usage = strip_usage
        self.clock = clock
        self.status = 0
        self.streaming = False
        self.deltas = 0
        self.usage: dict | None = None
        self.first_token_at: float | None = None
        self._buf = bytearray()

    def start(self, message: dict) -> None:
        self.status = message.get("status", 0)
        for k, v in message.get("headers", []):
            if k.lower() == b"content-type":
                self.streaming = v.startswith(b"text/event-stream")

    def body(self, chunk: bytes) -> bytes:
        """Observe a body chunk; returns the bytes to send on (the usage event may be cut)."""
        if not self.streaming:
            if len(self._buf) < self.MAX_BODY:
                self._buf += chunk
            return chunk
        content = chunk.count(_CONTENT) - chunk.count(_EMPTY)
        if content > 0 and self.first_token_at is None:
            self.first_token_at = self.clock()
        self.deltas += content
        if b'"usage":{' in chunk:
            kept = []
            for event in chunk.split(b"\n\n"):
                if event.startswith(b"data: {") and b'"usage":{' in event:
                    try:
                        self.usage = json.loads(event[6:]).get("usage") or self.usage
                    except ValueError:
                        pass
                    if self.strip_usage and b'"choices":[]' in event:
                        continue
                kept.append(event)
            chunk = b"\n\n".join(kept)
        return chunk

    def finish(self) -> None:
        if not self.streaming and self._buf:
            try:
                self.usage = json.loads(self._buf).get("usage")
            except (ValueError, AttributeError):
                self.usage = None
            if self.first_token_at is None:
                self.first_token_at = self.clock()

    def completion_tokens(self) -> int:
        if self.usage:
            return int(self.usage.get("completion_tokens") or 0)
        return max(0, self.deltas) if self.streaming else 0

    def prompt_tokens(self) -> int:
        return int((self.usage or {}).get("prompt_tokens") or 0)

    def cached_tokens(self) -> int:
        details = (self.usage or {}).get("prompt_tokens_details") or {}
        return int(details.get("cached_tokens") or 0)


RETRY_NO_CAPACITY_S = 30  # an engine's cold start here: a parked or drained site's way back


def refusal(request: dict, here: Placement, tier: str = "",
            hint_headers: tuple[str, ...] = (), table: dict | None = None
            ) -> tuple | None:
    """The engine's own guard on fabric hints: (status, reason[, retry-after s]) if this replica must not
    serve the request (already parsed; {} for malformed JSON, which the engine answers).
    ``hint_headers``: the X-Fabric-* hint headers the request carries — on a model's own
    endpoint the router never sees headers, so a hint there would be ignored: refused instead.
    ``table``: the routing table last seen (its sites and parked ones), to tell a transient 503
    (a site that may serve it is starting, parked or short of power: Retry-After) from one
    no site of the fabric can ever lift."""
    if hint_headers:
        return 400, (f"{', '.join(hint_headers)}: a model's own endpoint routes on "
                     f"metadata.fabric_* hints only; send them there, or use a gateway "
                     f"(/<region>/v1, or /v1 when the fabric serves several models)")
    hints = request_hints(SimpleNamespace(metadata=request.get("metadata")))
    try:
        check_hints(hints)
    except NoAllowedReplica as exc:
        return 400, str(exc)
    metadata = request.get("metadata") if isinstance(request.get("metadata"), dict) else {}
    wanted_tier = metadata.get("fabric_tier", "auto")
    if wanted_tier not in ("auto", "small", "large"):
        return 400, "fabric_tier must be one of auto, small, large"
    if tier and wanted_tier not in ("auto", tier):
        return 400, (f"model {request.get('model')!r} is {tier}-tier but fabric_tier="
                     f"{wanted_tier}: name the model or the tier (model: auto, on a gateway)")
    if allowed(here, hints):
        return None
    wanted = ", ".join(f"{k}={v}" for k, v in (("privacy", hints.privacy), ("region", hints.region))
                       if v not in (None, "none"))
    table = table or {}
    edge = set(table.get("edge_sites", ()))
    sites = [name for name, region in table.get("site_region", {}).items()
             if allowed(Placement(name, region, name in edge), hints)]
    if table and not sites:
        return 503, (f"no capacity allowed for this request ({wanted}): no site of this "
                     f"fabric is there"), None
    parked = [name for name in sites if name in table.get("parked", ())]
    why = f"{', '.join(parked)} parked at low load, starting now" if parked else \
        "starting or short of power"
    return 503, (f"no capacity allowed for this request ({wanted}) is serving now ({why}); "
                 f"retry after {RETRY_NO_CAPACITY_S} s"), RETRY_NO_CAPACITY_S


class EngineStats:
    """The engine's latest scheduler stats (running and waiting requests, KV-cache use), taken
    from the stats vLLM already hands its loggers after each step — no extra call."""

    def __init__(self) -> None:
        self.running: int | None = None
        self.waiting: int | None = None
        self.kv_cache_usage: float | None = None

    def attach(self, engine) -> bool:
        """Wrap the engine's stat-logger manager; False where its stats are off or unreachable
        (then the signals say unknown, never a made-up value)."""
        from fabric.internals import wrap_stat_logger

        return wrap_stat_logger(engine, self.keep)

    def keep(self, stats) -> None:
        self.running = getattr(stats, "num_running_reqs", None)
        self.waiting = getattr(stats, "num_waiting_reqs", None)
        self.kv_cache_usage = getattr(stats, "kv_cache_usage", None)

    def as_dict(self) -> dict:
        return {"running": self.running, "waiting": self.waiting,
                "kv_cache_usage": self.kv_cache_usage}


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


_HINT_HEADER_KEYS = frozenset(h.encode() for h in HINT_HEADERS)  # one pass per request


def _header(scope, name: bytes) -> str:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return ""


def _with_usage_requested(body: bytes, request: dict) -> tuple[bytes, bool]:
    """For a stream whose client did not ask for usage, ask for it (exact metering); returns
    the body to send on and whether the usage event must be cut from the response."""
    if not request.get("stream"):
        return body, False
    options = request.get("stream_options") if isinstance(request.get("stream_options"), dict) else {}
    if options.get("include_usage"):
        return body, False
    request["stream_options"] = {**options, "include_usage": True}
    return json.dumps(request).encode(), True


class _FabricMiddleware:
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
        declared = _header(scope, b"content-length")
        too_large = declared.isdigit() and int(declared) > self.max_body
        body, replay = (b"", receive) if too_large else await _buffer_body(receive, self.max_body)
        if too_large or body is None:
            await self._refuse(send, 413, f"request body too large: the limit is "
                               f"{self.max_body / 2**20:g} MiB", "request_too_large", None)
            return self._record_refusal(scope, {}, 413, "", wall, started)
        request, invalid = _parse_object(body)
        # refused requests are recorded too, with their status and no tokens
        tenant = self.gate.authenticate(_header(scope, b"authorization"))
        behalf = _header(scope, b"x-fabric-on-behalf-of")
        if behalf and not isinstance(tenant, Refusal):
            tenant = self.gate.on_behalf_of(tenant, behalf)
        if isinstance(tenant, Refusal):
            await self._refuse(send, tenant.status, tenant.message, tenant.code, None)
            return self._record_refusal(scope, request, tenant.status, "", wall, started)
        if invalid:
            await self._refuse(send, 400, invalid, "invalid_request_body", None)
            return self._record_refusal(scope, request, 400, tenant.name, wall, started)
        refused = refusal(request, self.here, self.ctx.tier,
                          tuple(k.decode() for k, _ in scope.get("headers", ())
                                if k.lower() in _HINT_HEADER_KEYS), self.ctx.places)
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
            new_body, strip = _with_usage_requested(body, request)
            if strip:
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                              if k.lower() != b"content-length"]
                         + [(b"content-length", str(len(new_body)).encode())]}
                replay = _replaying(new_body, receive)
        tap = TokenTap(strip_usage=strip)
        # the fabric's own services name their requests (a batch line: one record, however
        # often it runs); a client's x-request-id may repeat, so it is not the record's id
        request_id = _header(scope, b"x-fabric-request-id") if behalf else ""

        async def send_on(message):
            nonlocal request_id
            if message["type"] == "http.response.start":
                tap.start(message)
                if not request_id and not _header(scope, b"x-request-id"):
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
        metadata = request.get("metadata") if isinstance(request.get("metadata"), dict) else {}
        energy, carbon, cost = attribute(c.power_w, latency, concurrency, c.pue,
                                         c.carbon_g_per_kwh, c.price_usd_per_mwh)
        prompt, completion = tap.prompt_tokens(), tap.completion_tokens()
        return {
            "request_id": request_id or f"fabric-{uuid.uuid4().hex}", "ts": wall,
            "tenant": tenant,
            "agent_id": _header(scope, b"x-fabric-agent") or str(metadata.get("fabric_agent", "")),
            "session_id": _header(scope, b"x-session-id") or str(metadata.get("fabric_session", "")),
            "model": str(request.get("model", "")), "tier": c.tier,
            "region": c.where["region"], "site": c.where["site"], "node": c.where["node_id"],
            "endpoint": scope.get("path", ""), "status": tap.status,
            "prompt_tokens": prompt, "completion_tokens": completion,
            "cached_tokens": tap.cached_tokens(),
            "ttft_s": round((tap.first_token_at or now) - started, 6),
            "latency_s": round(latency, 6), "energy_j": round(energy, 6),
            "carbon_g": round(carbon, 9), "energy_cost_usd": round(cost, 12),
            "billed_usd": round(billed_usd(prompt, completion, c.price_in, c.price_out), 12)
            if tap.status == 200 else 0.0,
            "power_source": c.power_source,
            **_counterfactual(c, energy),
        }


def _counterfactual(c: ReplicaContext, energy_j: float) -> dict:
    """The record's policy, table version and least_load counterfactual (none before the
    replica has seen a table)."""
    if c.counterfactual is None:
        return {"policy": c.policy, "table_version": c.table_version}
    from fabric.scheduling.counterfactual import price

    usd, grams = price(energy_j, c.counterfactual)
    return {"policy": c.policy, "table_version": c.table_version,
            "counterfactual_site": c.counterfactual.get("site"),
            "counterfactual_energy_cost_usd": round(usd, 12), "counterfactual_carbon_g": round(grams, 9)}


def _parse_object(body: bytes) -> tuple[dict, str]:
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


async def _buffer_body(receive, limit: int | None = None):
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
    return body, _replaying(body, receive)


def _replaying(body: bytes, receive):
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


class FabricLLMServer(LLMServer):
    """LLMServer that knows where it runs."""

    def _where(self) -> dict[str, str]:
        labels = ray.get_runtime_context().get_node_labels()
        return {"region": labels.get(REGION_LABEL, ""), "site": labels.get(SITE_LABEL, ""),
                "edge": labels.get(EDGE_LABEL) == "true",
                "node_id": ray.get_runtime_context().get_node_id()}

    def record_replica_metadata(self) -> dict:
        return self._where()

    async def __serve_build_asgi_app__(self):
        from fabric.internals import add_middleware

        app = await super().__serve_build_asgi_app__()
        where = self._where()
        headers = [(b"x-fabric-region", where["region"].encode()),
                   (b"x-fabric-site", where["site"].encode())]
        self._meter = LoadMeter()
        self._ctx = ReplicaContext(
            where=where, tier=os.environ.get("FABRIC_MODEL_TIER", ""),
            price_in=float(os.environ.get("FABRIC_PRICE_IN", "0")),
            price_out=float(os.environ.get("FABRIC_PRICE_OUT", "0")))
        here = Placement(site=where["site"], region=where["region"], edge=where["edge"])
        gate = tenant_gate(json.loads(os.environ.get("FABRIC_TENANTS", "[]")),
                           os.environ.get("FABRIC_INTERNAL_KEY_HASH"),
                           share=1.0 / max(1, int(os.environ.get("FABRIC_REPLICAS", "1"))))
        from fabric.metrics import EngineMetrics

        metrics = EngineMetrics(where["region"], where["site"], self._llm_config.model_id)
        add_middleware(app, _FabricMiddleware, headers=headers, meter=self._meter,
                       here=here, ctx=self._ctx, gate=gate, metrics=metrics)
        self._stats = EngineStats()
        self._stats.attach(self.engine)
        self._background = asyncio.get_running_loop().create_task(self._report(where))
        return app

    async def _report(self, where: dict, period_s: float = 0.5) -> None:
        """Every half second: push this engine's load to its node's GPUMonitor (modelled power
        follows it) and learn the node's power back; refresh the site's grid price and carbon;
        hand usage records to the ledger, keeping them until it acknowledges."""
        from fabric.layers import naming
        from fabric.metering.ledger import LEDGER_NAME, hand_over

        replica = serve.get_replica_context().replica_id.unique_id
        actors: dict[str, Any] = {}
        names = {"monitor": naming.gpu(where["site"], where["node_id"]),
                 "grid": naming.power(where["site"]), "ledger": LEDGER_NAME,
                 "scheduler": naming.SCHEDULER}

        async def actor(key: str):
            if key not in actors:
                actors[key] = await asyncio.to_thread(ray.get_actor, names[key],
                                                      namespace=naming.NAMESPACE)
            return actors[key]

        tick = 0
        while True:
            await asyncio.sleep(period_s)
            tick += 1
            m = self._meter
            try:
                reading = await (await actor("monitor")).report_load.remote(
                    replica, m.take_utilisation(), m.inflight, m.requests, m.tokens_out,
                    model=self._llm_config.model_id, stats=self._stats.as_dict())
                self._ctx.power_w, self._ctx.power_source = reading["power_w"], reading["source"]
                self._ctx.pue = reading["pue"]
            except Exception:  # no monitor (yet): the engine serves on regardless
                actors.pop("monitor", None)
            if tick % 4 == 1:
                try:
                    grid = await (await actor("grid")).state.remote()
                    self._ctx.carbon_g_per_kwh = grid["carbon_g_per_kwh"]
                    self._ctx.price_usd_per_mwh = grid["price_usd_per_mwh"]
                except Exception:
                    actors.pop("grid", None)
                try:  # what the records say about the decision: policy, version, counterfactual
                    table = await (await actor("scheduler")).routing_table.remote()
                    self._ctx.policy, self._ctx.table_version = table["policy"], table["version"]
                    self._ctx.counterfactual = table.get("counterfactual", {}).get(where["site"])
                    self._ctx.places = {k: table.get(k) for k in ("site_region", "edge_sites",
                                                                   "parked")}
                except Exception:
                    actors.pop("scheduler", None)
            if m.records:
                try:
                    await hand_over(m.records, await actor("ledger"))
                except Exception:  # ledger restarting: keep them and retry (ids dedupe)
                    actors.pop("ledger", None)


def llm_config(spec: FabricSpec, model: ModelSpec, model_source: str,
               internal_key: str = "") -> LLMConfig:
    return LLMConfig(**llm_config_fields(spec, model, model_source, internal_key))


def llm_config_fields(spec: FabricSpec, model: ModelSpec, model_source: str,
                      internal_key: str = "") -> dict:
    """The LLMConfig as plain data (also what `fabric serve-config` writes)."""
    hosts = spec.hosting_sites(model)
    if not hosts:
        raise ValueError(f"model {model.id!r}: no site with an LLM slot hosts it")
    sites = ",".join(s.name for _, s in hosts)
    num_replicas = max(model.min_replicas, model.replicas_per_site * len(hosts))
    if model.max_replicas is not None:
        num_replicas = min(num_replicas, model.max_replicas)
    engine_kwargs = {**CPU_ENGINE_DEFAULTS, "max_model_len": model.max_model_len,
                     **model.engine_kwargs}
    return dict(
        model_loading_config={"model_id": model.id, "model_source": model_source},
        accelerator_config={"kind": "cpu"},
        placement_group_config={"bundles": [{"CPU": 1, LLM_SLOT_RESOURCE: 1}]},
        engine_kwargs=engine_kwargs,
        runtime_env={"env_vars": {
            **CPU_ENGINE_ENV, "FABRIC_MODEL_TIER": model.tier,
            "FABRIC_PRICE_IN": str(model.price_usd_per_mtok_in),
            "FABRIC_PRICE_OUT": str(model.price_usd_per_mtok_out),
            "FABRIC_REPLICAS": str(num_replicas),
            "FABRIC_MAX_BODY_MB": str(spec.endpoint.max_body_mb),
            # one model: its engine app is the root endpoint and serves the Batch API there
            **({"FABRIC_BATCH_MAX_FILE_MB": str(spec.endpoint.max_file_mb)}
               if len(spec.models) == 1 else {}),
            "FABRIC_TENANTS": json.dumps([t.model_dump() for t in spec.tenants]),
            "FABRIC_INTERNAL_KEY_HASH": key_hash(internal_key) if internal_key else ""}},
        server_cls="fabric.layers.llm:FabricLLMServer",
        deployment_config={
            "name": model.id,
            "num_replicas": num_replicas,
            "max_ongoing_requests": 256,
            "placement_group_bundle_label_selector": [{SITE_LABEL: f"in({sites})"}],
            "request_router_config": {
                "request_router_class": "fabric.routing.router:FabricRequestRouter",
                "request_router_kwargs": {"refresh_s": min(spec.scheduler.tick_s, 1.0)},
                "request_routing_stats_period_s": 2,
            },
        },
    )
