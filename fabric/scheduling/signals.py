"""What the scheduler knows at one tick: plain data, gathered from layers 1–4.

Kept free of Ray so policies, tests and an offline simulator share it, and so a federated
scheduler can receive it over HTTP unchanged.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


LATENCY_CLASSES = ("near", "regional", "far")


class ReplicaSignals(BaseModel):
    """One engine replica as its node reported it (None: the engine did not say)."""

    replica: str
    model: str = ""
    inflight: int = Field(0, ge=0)          # requests in its HTTP front end
    running: int | None = None              # in the engine's running batch
    waiting: int | None = None              # queued in the engine
    kv_cache_usage: float | None = None     # 0..1 of its KV-cache blocks in use
    tokens_per_s: float = Field(0.0, ge=0)
    healthy: bool = True                    # reported within the last few seconds


class SiteSignals(BaseModel):
    name: str
    region: str
    edge: bool = False
    budget_w: float = Field(0.0, ge=0)
    facility_w: float = Field(0.0, ge=0)
    price_usd_per_mwh: float = 0.0
    carbon_g_per_kwh: float = 0.0
    curtailed: bool = False
    replicas: int = Field(0, ge=0)       # healthy engine replicas reporting load
    inflight: int = Field(0, ge=0)       # requests running or waiting on them
    utilisation: float = Field(0.0, ge=0, le=1)
    tokens_per_s: float = Field(0.0, ge=0)
    max_inflight_per_replica: int = Field(64, ge=1)  # the engine's batch size (max_num_seqs)
    latency_class: str = Field("regional", description="the region's: near | regional | far")
    engines: list[ReplicaSignals] = Field(default_factory=list)

    @property
    def headroom_w(self) -> float:
        return self.budget_w - self.facility_w

    @property
    def kv_cache_usage(self) -> float:
        """The fullest healthy engine's KV cache (0 when none reports it)."""
        return max((e.kv_cache_usage for e in self.engines
                    if e.healthy and e.kv_cache_usage is not None), default=0.0)

    @property
    def load(self) -> float:
        """0 (idle) .. 1+ (saturated): in-flight requests per batch slot, or the KV cache's
        fill where that is higher — long contexts fill the cache before the batch."""
        slots = self.inflight / (max(1, self.replicas) * self.max_inflight_per_replica)
        return max(slots, self.kv_cache_usage)


class Snapshot(BaseModel):
    sites: list[SiteSignals]
    tick: int = 0

    def site(self, name: str) -> SiteSignals:
        return next(s for s in self.sites if s.name == name)
