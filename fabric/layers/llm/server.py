"""The engine replica: ``ray.serve.llm``'s LLMServer that knows its site, wraps its app in the
fabric's middleware and reports its load, power and usage records in the background; and the
LLMConfig each model's deployment is built from."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import ray
from ray import serve
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer

from fabric.internals import SHARE_GLOO_DEVICE_ENV
from fabric.layers.llm.middleware import FabricMiddleware, ReplicaContext
from fabric.layers.llm.stats import EngineStats
from fabric.layers.llm.tap import LoadMeter
from fabric.metering.tenants import from_spec as tenant_gate
from fabric.metering.tenants import key_hash
from fabric.routing.pick import Placement
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
                  "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING",
                  # one gloo device for the worker's 13 process groups (internals.share_gloo_device)
                  SHARE_GLOO_DEVICE_ENV: "1"}


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

        self._metrics = EngineMetrics(where["region"], where["site"], self._llm_config.model_id)
        add_middleware(app, FabricMiddleware, headers=headers, meter=self._meter,
                       here=here, ctx=self._ctx, gate=gate, metrics=self._metrics)
        self._stats = EngineStats()
        self._stats.attach(self.engine)
        self._background = asyncio.get_running_loop().create_task(self._report(where))
        return app

    async def _report(self, where: dict, period_s: float = 0.5, heartbeat_s: float = 2.0,
                      context_s: tuple[float, float] = (2.0, 10.0)) -> None:
        """Push this engine's load to its node's GPUMonitor (modelled power follows it) and
        learn the node's power back: every half second while it serves, every two seconds at
        rest (a heartbeat: the monitor counts an engine that stops reporting as gone). Refresh
        the site's grid price and carbon and the routing table's policy, version and
        counterfactual for the usage records: every 2 s while it serves, 10 s at rest. Hand
        usage records to the ledger, keeping them until it acknowledges. Flush the requests'
        metrics (summed in-process) every period."""
        from fabric.layers import naming
        from fabric.metering.ledger import LEDGER_NAME, hand_over

        replica = serve.get_replica_context().replica_id.unique_id
        actors: dict[str, Any] = {}
        names = {"monitor": naming.gpu(where["site"], where["node_id"]), "sites": naming.SITES,
                 "ledger": LEDGER_NAME, "scheduler": naming.SCHEDULER}

        async def actor(key: str):
            if key not in actors:
                actors[key] = await asyncio.to_thread(ray.get_actor, names[key],
                                                      namespace=naming.NAMESPACE)
            return actors[key]

        loop = asyncio.get_running_loop()
        reported_at = context_at = -1e9
        seen = -1  # requests finished when last reported
        while True:
            await asyncio.sleep(period_s)
            try:
                self._metrics.flush()
            except Exception as exc:  # metrics never stop the engine's reports
                logger.warning("metrics: %s", exc)
            m = self._meter
            now = loop.time()
            busy = m.inflight > 0 or m.requests != seen
            if busy or now - reported_at >= heartbeat_s:
                reported_at, seen = now, m.requests
                try:
                    reading = await (await actor("monitor")).report_load.remote(
                        replica, m.take_utilisation(), m.inflight, m.requests, m.tokens_out,
                        model=self._llm_config.model_id, stats=self._stats.as_dict())
                    self._ctx.power_w, self._ctx.power_source = reading["power_w"], reading["source"]
                    self._ctx.pue = reading["pue"]
                except Exception:  # no monitor (yet): the engine serves on regardless
                    actors.pop("monitor", None)
                    try:  # a node handed back (parked) or new: its site starts one here
                        await (await actor("sites")).take_back.remote(where["site"],
                                                                      [where["node_id"]])
                    except Exception:
                        actors.pop("sites", None)
            if now - context_at >= context_s[0 if busy else 1]:
                context_at = now
                await self._refresh_context(actor, actors, where)
            if m.records:
                try:
                    await hand_over(m.records, await actor("ledger"))
                except Exception:  # ledger restarting: keep them and retry (ids dedupe)
                    actors.pop("ledger", None)

    async def _refresh_context(self, actor, actors: dict, where: dict) -> None:
        """The grid's price and carbon now, and what the records say about the decision:
        policy, table version, counterfactual."""
        try:
            grid = await (await actor("sites")).grid_state.remote(where["site"])
            self._ctx.carbon_g_per_kwh = grid["carbon_g_per_kwh"]
            self._ctx.price_usd_per_mwh = grid["price_usd_per_mwh"]
        except Exception:
            actors.pop("sites", None)
        try:
            table = await (await actor("scheduler")).routing_table.remote()
            self._ctx.policy, self._ctx.table_version = table["policy"], table["version"]
            self._ctx.counterfactual = table.get("counterfactual", {}).get(where["site"])
            self._ctx.places = {k: table.get(k) for k in ("site_region", "edge_sites", "parked")}
        except Exception:
            actors.pop("scheduler", None)


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
    if model.accelerator == "gpu":  # one bundle per GPU, on one node; vLLM's own GPU defaults
        tp = model.gpus_per_replica
        bundles = [{"GPU": 1, LLM_SLOT_RESOURCE: 1}] + [{"GPU": 1} for _ in range(tp - 1)]
        engine_kwargs = {"max_model_len": model.max_model_len,
                         **({"tensor_parallel_size": tp} if tp > 1 else {}), **model.engine_kwargs}
        placement, engine_env = {"bundles": bundles, "strategy": "STRICT_PACK"}, {}
    else:
        engine_kwargs = {**CPU_ENGINE_DEFAULTS, "max_model_len": model.max_model_len,
                         **model.engine_kwargs}
        placement = {"bundles": [{"CPU": 1, LLM_SLOT_RESOURCE: 1}]}
        engine_env = CPU_ENGINE_ENV
    return dict(
        model_loading_config={"model_id": model.id, "model_source": model_source},
        accelerator_config={"kind": model.accelerator},
        placement_group_config=placement,
        engine_kwargs=engine_kwargs,
        runtime_env={"env_vars": {
            **engine_env, "FABRIC_MODEL_TIER": model.tier,
            "FABRIC_PRICE_IN": str(model.price_usd_per_mtok_in),
            "FABRIC_PRICE_OUT": str(model.price_usd_per_mtok_out),
            "FABRIC_REPLICAS": str(num_replicas),
            "FABRIC_MAX_BODY_MB": str(spec.endpoint.max_body_mb),
            # one model: its engine app is the root endpoint and serves the Batch API there
            **({"FABRIC_BATCH_MAX_FILE_MB": str(spec.endpoint.max_file_mb)}
               if len(spec.models) == 1 else {}),
            "FABRIC_TENANTS": json.dumps([t.model_dump() for t in spec.tenants]),
            "FABRIC_INTERNAL_KEY_HASH": key_hash(internal_key) if internal_key else ""}},
        server_cls="fabric.layers.llm.server:FabricLLMServer",
        deployment_config={
            "name": model.id,
            "num_replicas": num_replicas,
            "max_ongoing_requests": 256,
            "placement_group_bundle_label_selector": [{SITE_LABEL: f"in({sites})"}],
            "request_router_config": {
                "request_router_class": "fabric.routing.router:FabricRequestRouter",
                "request_router_kwargs": {"refresh_s": min(spec.scheduler.tick_s, 1.0)},
            },
        },
    )
