"""Layer 4: token generators — vLLM replicas served through ``ray.serve.llm``.

One deployment per model whose replicas spread over the sites (one LLM slot resource per
site raylet, restricted by label to the spec's regions). Each replica publishes its site
and region so the request router can apply the routing table, and stamps them on every
HTTP response (``x-fabric-region`` / ``x-fabric-site``) from inside the engine's own app:
no extra hop.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer

from fabric.spec import LLM_SLOT_RESOURCE, REGION_LABEL, SITE_LABEL, FabricSpec, ModelSpec

# Engine settings verified for vLLM on CPU (see README): small KV cache, eager mode.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,
    "gpu_memory_utilization": 0.2,  # on CPU: the share of RAM each engine checks is free
    "dtype": "bfloat16",
    "max_num_seqs": 64,
}
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                  "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING"}


class _FabricHeaders:
    """ASGI middleware: add the serving replica's region/site to every response."""

    def __init__(self, app, headers: list[tuple[bytes, bytes]]):
        self.app = app
        self.headers = headers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class FabricLLMServer(LLMServer):
    """LLMServer that knows where it runs."""

    def _where(self) -> dict[str, str]:
        labels = ray.get_runtime_context().get_node_labels()
        return {"region": labels.get(REGION_LABEL, ""), "site": labels.get(SITE_LABEL, ""),
                "node_id": ray.get_runtime_context().get_node_id()}

    def record_replica_metadata(self) -> dict:
        return self._where()

    async def __serve_build_asgi_app__(self):
        from ray.llm._internal.serve.core.server.llm_server import _add_middleware_to_built_app

        app = await super().__serve_build_asgi_app__()
        where = self._where()
        headers = [(b"x-fabric-region", where["region"].encode()),
                   (b"x-fabric-site", where["site"].encode())]
        _add_middleware_to_built_app(app, _FabricHeaders, headers=headers)
        return app


def llm_config(spec: FabricSpec, model: ModelSpec, model_source: str) -> LLMConfig:
    regions = ",".join(r.name for r in spec.regions)
    num_replicas = model.replicas_per_site * sum(1 for _, s in spec.sites if s.llm_slots)
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
            "placement_group_bundle_label_selector": [{REGION_LABEL: f"in({regions})"}],
            "request_router_config": {
                "request_router_class": "fabric.routing.router:FabricRequestRouter",
                "request_router_kwargs": {"refresh_s": min(spec.scheduler.tick_s, 1.0)},
                "request_routing_stats_period_s": 2,
            },
        },
    )
