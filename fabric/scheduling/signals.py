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
    # What a token costs to make here (static per site: its GPUs and PUE; 0 = unknown)
    pue: float = Field(1.0, ge=1.0)
    idle_w: float = Field(0.0, ge=0, description="IT power of all its GPUs idle")
    dynamic_w: float = Field(0.0, ge=0, description="serving GPUs at full load minus idle (IT)")
    j_per_token: float = Field(0.0, ge=0, description="IT joules per output token at full batch")
    service_s: float = Field(1.0, gt=0, description="a mean request's time in a batch slot")
    throughput_rps: float = Field(0.0, ge=0, description="requests/s its GPUs can do at full "
                                  "speed (compute bound; 0: the slots are the bound)")
    prefill_s: float = Field(0.0, ge=0, description="a mean request's TTFT with no wait")
    requests_per_s: float = Field(0.0, ge=0, description="requests routed here per second, lately")
    parked: bool = Field(False, description="its capacity is released (engines stopped)")
    budget_ahead_w: float | None = Field(None, ge=0, description="the lowest power budget its "
                                         "grid has scheduled over the next cold start (an "
                                         "announced curtailment); None: none known")
    replicas_max: int = Field(0, ge=0, description="engine replicas when none is parked "
                              "(0: as many as serve now)")
    model: str = Field("", description="the model it serves, where no engine reports it "
                       "(e.g. parked); else its engines say")
    extra: dict[str, float] = Field(default_factory=dict, description="any other signal by "
                                    "name (e.g. renewable_share, wue_l_per_kwh), for scorers")

    @property
    def serves(self) -> str:
        """The model this site's engines serve: merit orders and counterfactuals never mix models."""
        return self.model or (self.engines[0].model if self.engines else "")

    @property
    def headroom_w(self) -> float:
        return self.budget_w - self.facility_w

    @property
    def kv_cache_usage(self) -> float:
        """The fullest healthy engine's KV cache (0 when none reports it)."""
        return max((e.kv_cache_usage for e in self.engines
                    if e.healthy and e.kv_cache_usage is not None), default=0.0)

    @property
    def slots(self) -> int:
        return self.replicas * self.max_inflight_per_replica

    @property
    def speed(self) -> float:
        """Share of full serving speed its power budget allows (1 when its GPUs are unknown)."""
        from fabric.scheduling.capacity import power_speed

        return power_speed(self.budget_w, self.pue, self.idle_w, self.dynamic_w)

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


def site_signals(state: dict, edge: bool, max_inflight: int, latency_class: str = "regional",
                 static: dict | None = None) -> SiteSignals:
    """One site's signals from its AIFactory state (layer 2's view of layers 1–4), plus the
    site's static figures (``static``: pue, idle_w, dynamic_w, j_per_token, from its GPUs)."""
    from fabric.scheduling.scorers import renewable_share

    nodes = state.get("node_readings", [])
    engines = [ReplicaSignals(**e) for n in nodes for e in n.get("engines", [])]
    extra = {"renewable_share": renewable_share(state.get("source_mix") or {})}
    return SiteSignals(
        name=state["site"], region=state["region"], edge=edge, budget_w=state["budget_w"],
        facility_w=state["facility_power_w"], price_usd_per_mwh=state["price_usd_per_mwh"],
        carbon_g_per_kwh=max(0.0, state["carbon_g_per_kwh"]), curtailed=state["curtailed"],
        replicas=state["replicas"], inflight=sum(n["inflight"] for n in nodes),
        utilisation=max([n["engine_utilisation"] for n in nodes], default=0.0),
        tokens_per_s=sum(n.get("tokens_per_s", 0.0) for n in nodes),
        # requests_per_s stays 0: the live fabric counts demand and capacity in batch slots
        # (requests in flight; service time unknown, 1 s), and its engines' completions per
        # second would mix another unit in (and understate arrivals exactly when slots are full)
        max_inflight_per_replica=max_inflight, latency_class=latency_class, engines=engines,
        budget_ahead_w=state.get("budget_ahead_w"), extra=extra, **(static or {}))
