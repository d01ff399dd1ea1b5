"""What the scheduler knows at one tick: plain data, gathered from layers 1–4.

Kept free of Ray so policies, tests and an offline simulator share it, and so a federated
scheduler can receive it over HTTP unchanged.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


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

    @property
    def headroom_w(self) -> float:
        return self.budget_w - self.facility_w

    @property
    def load(self) -> float:
        """In-flight requests per replica slot, 0 (idle) .. 1+ (saturated)."""
        return self.inflight / (max(1, self.replicas) * self.max_inflight_per_replica)


class Snapshot(BaseModel):
    sites: list[SiteSignals]
    tick: int = 0

    def site(self, name: str) -> SiteSignals:
        return next(s for s in self.sites if s.name == name)
