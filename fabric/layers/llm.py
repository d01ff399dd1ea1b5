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
import time
from types import SimpleNamespace
from typing import Any

import ray
from ray import serve
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer

from fabric.routing.pick import NoAllowedReplica, Placement, allowed, check_hints, request_hints
from fabric.spec import (EDGE_LABEL, LLM_SLOT_RESOURCE, REGION_LABEL, SITE_LABEL, FabricSpec,
                         ModelSpec)

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
    """Counts the completion tokens of one response as its bytes pass by.

    Exact where the engine reports usage (every non-streaming response; streams whose client
    asked for ``include_usage``); otherwise one per streamed content delta, which is one decode
    step — one token for n=1 without speculative decoding. Byte counting, no JSON parse per
    chunk: this runs on the data path.
    """

    MAX_BODY = 8 * 2**20

    def __init__(self) -> None:
        self.streaming = False
        self.deltas = 0
        self.usage_tokens: int | None = None
        self._buf = bytearray()

    def start(self, message: dict) -> None:
        for k, v in message.get("headers", []):
            if k.lower() == b"content-type":
                self.streaming = v.startswith(b"text/event-stream")

    def body(self, chunk: bytes) -> None:
        if self.streaming:
            self.deltas += chunk.count(_CONTENT) - chunk.count(_EMPTY)
            if b'"usage":{' in chunk and b'"completion_tokens"' in chunk:
                self.usage_tokens = _usage_from_sse(chunk)
        elif len(self._buf) < self.MAX_BODY:
            self._buf += chunk

    def completion_tokens(self) -> int:
        if not self.streaming and self._buf:
            import json
            try:
                return int(json.loads(self._buf).get("usage", {}).get("completion_tokens", 0))
            except (ValueError, AttributeError, TypeError):
                return 0
        return self.usage_tokens if self.usage_tokens is not None else max(0, self.deltas)


def _usage_from_sse(chunk: bytes) -> int | None:
    import json
    for line in chunk.split(b"\n"):
        if line.startswith(b"data: {") and b'"usage":{' in line:
            try:
                usage = json.loads(line[6:]).get("usage") or {}
                return int(usage.get("completion_tokens", 0))
            except (ValueError, TypeError):
                return None
    return None


def refusal(body: bytes, here: Placement) -> tuple[int, str] | None:
    """The engine's own guard on fabric hints: (status, reason) if this replica must not
    serve the request. Cheap for requests without hints (a byte search, no parse)."""
    if b"fabric_" not in body:
        return None
    try:
        metadata = json.loads(body).get("metadata")
    except (ValueError, AttributeError):
        return None  # malformed JSON: the engine answers 400 itself
    hints = request_hints(SimpleNamespace(metadata=metadata))
    try:
        check_hints(hints)
    except NoAllowedReplica as exc:
        return 400, str(exc)
    if allowed(here, hints):
        return None
    wanted = ", ".join(f"{k}={v}" for k, v in (("privacy", hints.privacy), ("region", hints.region))
                       if v not in (None, "none"))
    return 503, f"no capacity allowed for this request ({wanted}): no replica there can serve it now"


class _FabricMiddleware:
    """ASGI middleware inside the engine's own app (no extra hop): refuses requests whose
    fabric hints this replica may not serve, stamps the serving replica's region/site on every
    response, and meters generation load."""

    GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")

    def __init__(self, app, headers: list[tuple[bytes, bytes]], meter: LoadMeter,
                 here: Placement):
        self.app, self.headers, self.meter, self.here = app, headers, meter, here

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("path", "").endswith(self.GENERATION_PATHS):
            body, receive = await _buffer_body(receive)
            refused = refusal(body, self.here)
            if refused:
                status, reason = refused
                error = {"error": {"message": reason, "type": "ServiceUnavailableError" if status == 503
                                   else "BadRequestError", "param": "metadata", "code": status}}
                payload = json.dumps(error).encode()
                await send({"type": "http.response.start", "status": status, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode())] + self.headers})
                await send({"type": "http.response.body", "body": payload})
                return

        generation = scope.get("path", "").endswith(self.GENERATION_PATHS)
        tap = TokenTap() if generation else None

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                if tap:
                    tap.start(message)
                message = {**message, "headers": list(message.get("headers", [])) + self.headers}
            elif tap and message["type"] == "http.response.body":
                tap.body(message.get("body", b""))
            await send(message)

        if generation:
            self.meter.start()
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if generation:
                self.meter.finish(tap.completion_tokens())


async def _buffer_body(receive):
    """Read the whole request body, and return it with a receive() that replays it."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"", receive
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


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
        from ray.llm._internal.serve.core.server.llm_server import _add_middleware_to_built_app

        app = await super().__serve_build_asgi_app__()
        where = self._where()
        headers = [(b"x-fabric-region", where["region"].encode()),
                   (b"x-fabric-site", where["site"].encode())]
        self._meter = LoadMeter()
        here = Placement(site=where["site"], region=where["region"], edge=where["edge"])
        _add_middleware_to_built_app(app, _FabricMiddleware, headers=headers, meter=self._meter,
                                     here=here)
        self._load_task = asyncio.get_running_loop().create_task(self._report_load(where))
        return app

    async def _report_load(self, where: dict, period_s: float = 0.5) -> None:
        """Push this engine's load to its node's GPUMonitor (modelled power follows it)."""
        from fabric.layers import naming

        replica = serve.get_replica_context().replica_id.unique_id
        name = naming.gpu(where["site"], where["node_id"])
        monitor = None
        while True:
            await asyncio.sleep(period_s)
            try:
                if monitor is None:
                    monitor = await asyncio.to_thread(ray.get_actor, name, namespace=naming.NAMESPACE)
                monitor.report_load.remote(replica, self._meter.take_utilisation(),
                                           self._meter.inflight, self._meter.requests,
                                           self._meter.tokens_out)
            except Exception:  # no monitor (yet): the engine serves on regardless
                monitor = None


def llm_config(spec: FabricSpec, model: ModelSpec, model_source: str) -> LLMConfig:
    hosts = spec.hosting_sites(model)
    if not hosts:
        raise ValueError(f"model {model.id!r}: no site with an LLM slot hosts it")
    sites = ",".join(s.name for _, s in hosts)
    num_replicas = max(model.min_replicas, model.replicas_per_site * len(hosts))
    if model.max_replicas is not None:
        num_replicas = min(num_replicas, model.max_replicas)
    engine_kwargs = {**CPU_ENGINE_DEFAULTS, "max_model_len": model.max_model_len,
                     **model.engine_kwargs}
    return LLMConfig(
        model_loading_config={"model_id": model.id, "model_source": model_source},
        accelerator_config={"kind": "cpu"},
        placement_group_config={"bundles": [{"CPU": 1, LLM_SLOT_RESOURCE: 1}]},
        engine_kwargs=engine_kwargs,
        runtime_env={"env_vars": dict(CPU_ENGINE_ENV)},
        server_cls=FabricLLMServer,
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
