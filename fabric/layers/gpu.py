"""Layer 3: one GPUMonitor actor per node — NVML readings, or a labelled model of power.

Without an NVIDIA driver the node's GPUs (from its site's node pool) are modelled: power =
idle + (TDP − idle) × utilisation, where utilisation is the share of recent time the node's
engine had requests in flight, pushed by the engine replica itself. Every modelled reading
carries ``source="model"``.
"""

from __future__ import annotations

import time

import ray

from fabric.gpu import ModelledGpus, NvmlGpus
from fabric.spec import SiteSpec

LOAD_STALE_S = 3.0  # no report for this long: the engine is gone or idle
RATE_WINDOW_S = 5.0  # tokens/s and requests/s are averaged over this


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class GPUMonitor:
    def __init__(self, site_json: str, node_id: str):
        self.site = SiteSpec.model_validate_json(site_json)
        self.node_id = node_id
        pool = self.site.node_pools[0]
        self.gpus = NvmlGpus.try_open() or ModelledGpus(pool.gpu_type, pool.gpus_per_node,
                                                        pool.tdp_w, pool.idle_w)
        self._load: dict[str, tuple[float, int, float]] = {}  # replica -> (util, inflight, at)
        self._counts: dict[str, list[tuple[float, int, int]]] = {}  # replica -> (at, reqs, tokens)
        self._engine: dict[str, dict] = {}  # replica -> model and engine stats

    def where(self) -> dict:
        """The node this actor runs on and its labels (placement is checked, not assumed)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "labels": ctx.get_node_labels()}

    @ray.method(enable_task_events=False)  # called every tick: no task event in the GCS
    def report_load(self, replica: str, utilisation: float, inflight: int,
                    requests: int = 0, tokens_out: int = 0, model: str = "",
                    stats: dict | None = None) -> dict:
        """Record an engine's load (and its scheduler stats: running, waiting, KV-cache use);
        answer with the node's power now (for energy metering)."""
        now = time.time()
        self._load[replica] = (utilisation, inflight, now)
        self._engine[replica] = {"model": model, **(stats or {})}
        window = self._counts.setdefault(replica, [])
        window.append((now, requests, tokens_out))
        while len(window) > 2 and now - window[0][0] > RATE_WINDOW_S:
            window.pop(0)
        util, _, _ = self._engine_load()
        return {"power_w": round(sum(g.power_w for g in self.gpus.read(util)), 2),
                "source": self.gpus.source, "pue": self.site.pue}

    def _replicas(self) -> list[dict]:
        """Each engine replica that reported here: load, engine stats, tokens/s, health (a
        replica that stopped reporting is unhealthy until it is forgotten)."""
        now = time.time()
        out = []
        for replica, (util, inflight, at) in sorted(self._load.items()):
            if now - at > 20 * LOAD_STALE_S:
                continue
            window = self._counts.get(replica, [])
            tok_s = 0.0
            if len(window) >= 2 and window[-1][0] > window[0][0]:
                tok_s = (window[-1][2] - window[0][2]) / (window[-1][0] - window[0][0])
            engine = self._engine.get(replica, {})
            out.append({"replica": replica, "model": engine.get("model", ""), "inflight": inflight,
                        "running": engine.get("running"), "waiting": engine.get("waiting"),
                        "kv_cache_usage": engine.get("kv_cache_usage"),
                        "tokens_per_s": round(tok_s, 1), "healthy": now - at < LOAD_STALE_S})
        return out

    def _rates(self) -> tuple[float, float, int]:
        """Requests/s and tokens/s over the last few seconds, and tokens out since start."""
        now = time.time()
        req_s = tok_s = 0.0
        total = 0
        for window in self._counts.values():
            total += window[-1][2]
            if now - window[-1][0] > LOAD_STALE_S or len(window) < 2:
                continue
            (t0, r0, k0), (t1, r1, k1) = window[0], window[-1]
            if t1 > t0:
                req_s += (r1 - r0) / (t1 - t0)
                tok_s += (k1 - k0) / (t1 - t0)
        return req_s, tok_s, total

    def _engine_load(self) -> tuple[float, int, int]:
        now = time.time()
        live = [(u, n) for u, n, at in self._load.values() if now - at < LOAD_STALE_S]
        return min(1.0, sum(u for u, _ in live)), sum(n for _, n in live), len(live)

    @ray.method(enable_task_events=False)  # called every tick: no task event in the GCS
    def reading(self) -> dict:
        util, inflight, replicas = self._engine_load()
        req_s, tok_s, tokens_total = self._rates()
        gpus = [g.model_dump() for g in self.gpus.read(util)]
        return {"site": self.site.name, "node_id": self.node_id, "source": self.gpus.source,
                "gpus": gpus, "power_w": round(sum(g["power_w"] for g in gpus), 2),
                "engine_utilisation": round(util, 4), "inflight": inflight, "replicas": replicas,
                "requests_per_s": round(req_s, 2), "tokens_per_s": round(tok_s, 1),
                "tokens_out_total": tokens_total, "engines": self._replicas()}

    def set_power_limit(self, index: int, watts: float) -> dict:
        return self.gpus.set_power_limit(index, watts)
