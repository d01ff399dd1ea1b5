"""Layer 3: one GPUMonitor actor per node — NVML readings, or a labelled model of power.

Without an NVIDIA driver the node's GPUs (from its site's node pool) are modelled: power =
idle + (TDP − idle) × utilisation, where utilisation is the share of recent time the node's
engine had requests in flight, pushed by the engine replica itself. Every modelled reading
carries ``source="model"``.

Readers follow the node with ``watch`` (a long poll): a new reading is published when an
engine's report changes what the reading says (power to 1 % of the node's TDP, load, engine
stats, health), when a report goes stale, when a power limit is set, and for NVML every few
seconds; an idle node publishes nothing.
"""

from __future__ import annotations

import asyncio
import time

import ray

from fabric.gpu import ModelledGpus, NvmlGpus
from fabric.layers.watch import Watched
from fabric.spec import SiteSpec

LOAD_STALE_S = 5.0  # no report for this long: the engine is gone (idle engines report every 2 s)
RATE_WINDOW_S = 5.0  # tokens/s and requests/s are averaged over this
NVML_REFRESH_S = 5.0  # real GPUs drift on their own: their readings are re-read this often


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
        self._tdp_w = pool.tdp_w * pool.gpus_per_node
        self._published = Watched()  # the last reading readers were given (``watch``)
        self._published_key: tuple | None = None
        self._poke: asyncio.Event | None = None  # a report came: recompute the next stale edge
        self._watchdog: asyncio.Task | None = None

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
        self._publish()
        return {"power_w": round(sum(g.power_w for g in self.gpus.read(util)), 2),
                "source": self.gpus.source, "pue": self.site.pue}

    @ray.method(enable_task_events=False)  # a long poll per reader: no task event in the GCS
    async def watch(self, since: int | None = None, wait_s: float = 30.0) -> tuple[int, dict | None]:
        """The node's reading once it differs from version ``since`` (at once if it already
        does): (version, reading or None if unchanged)."""
        if self._watchdog is None or self._watchdog.done():
            self._publish(force=True)
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_time())
        return await self._published.answer(since, wait_s)

    def _key(self, r: dict) -> tuple:
        """What a reading says that readers act on (NVML's watt-level jitter left out)."""
        step = max(1.0, 0.01 * self._tdp_w)
        return (round(r["power_w"] / step), r["engine_utilisation"] > 0, r["inflight"], r["replicas"],
                round(r["requests_per_s"], 1), round(r["tokens_per_s"]), r["tokens_out_total"],
                tuple(g["power_limit_w"] for g in r["gpus"]),
                tuple((e["replica"], e["model"], e["inflight"], e["running"], e["waiting"],
                       None if e["kv_cache_usage"] is None else round(e["kv_cache_usage"], 3),
                       round(e["tokens_per_s"]), e["healthy"]) for e in r["engines"]))

    def _publish(self, force: bool = False) -> None:
        """Publish the reading now if readers follow and it says something new."""
        if self._watchdog is None and not force:
            return
        reading = self.reading()
        key = self._key(reading)
        if force or key != self._published_key:
            self._published_key = key
            self._published.value = reading
            self._published.bump()
        if self._poke is not None:
            self._poke.set()

    async def _watch_time(self) -> None:
        """Republish when time alone changes the reading: a report going stale (an engine gone
        or a rate window emptied), a replica forgotten, and real GPUs drifting."""
        while True:
            self._poke = asyncio.Event()
            now = time.time()
            edges = [at + d for _, _, at in self._load.values()
                     for d in (LOAD_STALE_S, 20 * LOAD_STALE_S) if at + d > now]
            edges += [w[-1][0] + d for w in self._counts.values() if w
                      for d in (LOAD_STALE_S, RATE_WINDOW_S) if w[-1][0] + d > now]
            if self.gpus.source == "nvml":
                edges.append(now + NVML_REFRESH_S)
            wait = min(edges, default=now + 3600.0) - now + 0.01
            try:
                await asyncio.wait_for(self._poke.wait(), wait)
                continue  # a report published already; only the edges moved
            except asyncio.TimeoutError:
                pass
            self._publish()

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
        result = self.gpus.set_power_limit(index, watts)
        self._publish()
        return result
