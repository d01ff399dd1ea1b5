"""Scheduling policies: pure functions from a signal snapshot to a routing table.

No Ray import here: the live scheduler actor, tests and offline tools call the same code.
A policy registers by name (``class X(Policy, name="...")``) and the spec picks one with a
string. Each returns weights per site; the hot path turns them into per-request picks.
Policies may keep state between ticks (the fabric policy's hysteresis); the scheduler holds
one instance per run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, Field

from fabric.scheduling.plugins import resolve
from fabric.scheduling.signals import SiteSignals, Snapshot
from fabric.scheduling.table import RoutingTable

POLICIES: dict[str, type["Policy"]] = {}


class Policy:
    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init_subclass__(cls, name: str | None = None, **kw):
        super().__init_subclass__(**kw)
        cls.name = name or f"{cls.__module__}:{cls.__qualname__}"
        if name:
            POLICIES[name] = cls

    def __init__(self, **params):
        self.params = params

    def weights(self, snapshot: Snapshot) -> dict[str, float]:
        raise NotImplementedError

    spills: ClassVar[bool] = False  # unweighted serving sites with power take overflow

    def table(self, snapshot: Snapshot, version: int) -> RoutingTable:
        raw = self.weights(snapshot)
        weights = {s.name: round(max(0.0, raw.get(s.name, 0.0)), 4) for s in snapshot.sites}
        overflow = sorted(s.name for s in _serving(snapshot)
                          if self.spills and not weights[s.name] and s.headroom_w >= 0)
        return RoutingTable(
            version=version, policy=self.name, weights=weights, overflow=overflow,
            site_region={s.name: s.region for s in snapshot.sites},
            edge_sites=sorted(s.name for s in snapshot.sites if s.edge))


def policy_class(name: str) -> type["Policy"]:
    """A registered policy, or one named ``module:Class`` (a Policy subclass)."""
    return resolve(name, POLICIES, Policy, "policy")


def known_policy(name: str) -> str:
    """``name`` if it names a policy; else a ValueError listing the known ones."""
    policy_class(name)
    return name


def make_policy(name: str, **params) -> Policy:
    return policy_class(name)(**params)


def _serving(snapshot: Snapshot) -> list[SiteSignals]:
    return [s for s in snapshot.sites if s.replicas > 0]


def power_gate(sites: list[SiteSignals], shed: set[str], ramp: dict[str, float],
               readmit_headroom: float,
               serves_capped: Callable[[SiteSignals], bool] | None = None) -> list[SiteSignals]:
    """Power as a hard limit: a site with negative headroom is shed (``shed`` and ``ramp``
    updated in place) and readmitted only once its headroom exceeds ``readmit_headroom`` of its
    budget — not while its grid event lasts: capped GPUs bring the draw under the budget, and
    readmitting on that would flap a policy that does not know the capped capacity in and out.
    A policy that fills each site only up to what its budget lets its capped GPUs do passes
    ``serves_capped``: a curtailed site it accepts is readmitted during the event, at that
    capacity. Returns the sites not shed."""
    for s in sites:
        share = s.headroom_w / s.budget_w if s.budget_w else -1.0
        if s.headroom_w < 0:
            shed.add(s.name)
            ramp[s.name] = 0.0
        elif s.name in shed and share >= readmit_headroom and (
                not s.curtailed or (serves_capped is not None and serves_capped(s))):
            shed.discard(s.name)
    return [s for s in sites if s.name not in shed]


def _best(sites: list[SiteSignals], key) -> dict[str, float]:
    """All weight to the site(s) with the lowest key; ties share."""
    if not sites:
        return {}
    low = min(key(s) for s in sites)
    return {s.name: 1.0 for s in sites if key(s) == low}


class RoundRobin(Policy, name="round_robin"):
    """Equal weight to every site with a healthy replica, whatever its power, price or load:
    the baseline that ignores every signal but health."""

    def weights(self, snapshot):
        return {s.name: 1.0 for s in _serving(snapshot)}


class LeastLoad(Policy, name="least_load"):
    """Weight each serving site by its free share of batch slots (1 − load), so traffic
    drains toward idle engines; a saturated site keeps a token weight."""

    def weights(self, snapshot):
        return {s.name: max(0.02, 1.0 - s.load) for s in _serving(snapshot)}


class CheapestEnergy(Policy, name="cheapest_energy"):
    """Everything to the serving site with the lowest energy price; the other serving sites
    with power headroom are listed as overflow, taking only what its replicas cannot."""

    spills = True

    def weights(self, snapshot):
        return _best(_serving(snapshot), lambda s: s.price_usd_per_mwh)


class LowestCarbon(Policy, name="lowest_carbon"):
    """Everything to the serving site with the lowest grid carbon intensity right now; the
    others with power headroom take overflow only."""

    spills = True

    def weights(self, snapshot):
        return _best(_serving(snapshot), lambda s: s.carbon_g_per_kwh)


class FabricParams(BaseModel):
    price: float = Field(1.0, ge=0, description="weight of the price score")
    carbon: float = Field(1.0, ge=0, description="weight of the carbon score")
    load: float = Field(1.0, ge=0, description="weight of the free-capacity score")
    headroom: float = Field(0.5, ge=0, description="weight of the power-headroom score")
    slo_max_load: float = Field(0.9, gt=0, description="above this load a site only keeps a floor")
    readmit_headroom: float = Field(0.05, ge=0, description="headroom share needed to come back")
    ramp_per_tick: float = Field(0.25, gt=0, le=1, description="max weight regained per tick")
    regional_penalty: float = Field(0.15, ge=0, lt=1, description="score lost by a 'regional' site")
    far_penalty: float = Field(0.4, ge=0, lt=1, description="score lost by a 'far' site")


class ScoreBlend(Policy, name="score_blend"):
    """The fabric's policy before economic dispatch (kept as a baseline). Power-aware: a site with negative power headroom (curtailment, overload) gets no new
    traffic at once; the others are scored in [0, 1] on price, carbon, free capacity and
    headroom, combined with configurable weights. SLO guard: a site above ``slo_max_load``
    keeps only a floor weight. Hysteresis: a site shed for power comes back only once its
    curtailment (if any) is over and its headroom exceeds ``readmit_headroom`` of its budget
    (power caps lower the draw during the event; that is not headroom to come back on), and
    then regains at most
    ``ramp_per_tick`` of its weight per tick, so traffic returns gradually, without flapping."""

    def __init__(self, **params):
        super().__init__(**params)
        self.p = FabricParams(**params)
        self.shed: set[str] = set()           # sites shed for power
        self.ramp: dict[str, float] = {}      # site -> share of its score allowed (0..1)

    def _norm(self, sites, key):
        vals = [key(s) for s in sites]
        lo, hi = min(vals), max(vals)
        return {s.name: 1.0 if hi == lo else (hi - key(s)) / (hi - lo) for s in sites}

    def weights(self, snapshot):
        live = power_gate(_serving(snapshot), self.shed, self.ramp, self.p.readmit_headroom)
        if not live:
            return {}
        price, carbon = self._norm(live, lambda s: s.price_usd_per_mwh), self._norm(live, lambda s: s.carbon_g_per_kwh)
        out = {}
        total_w = self.p.price + self.p.carbon + self.p.load + self.p.headroom or 1.0
        for s in live:
            free = max(0.0, 1.0 - s.load)
            head = max(0.0, min(1.0, s.headroom_w / s.budget_w)) if s.budget_w else 0.0
            score = (self.p.price * price[s.name] + self.p.carbon * carbon[s.name]
                     + self.p.load * free + self.p.headroom * head) / total_w
            score *= 1.0 - {"regional": self.p.regional_penalty,
                            "far": self.p.far_penalty}.get(s.latency_class, 0.0)
            score = max(0.05, score)
            if s.load > self.p.slo_max_load:
                score = 0.05
            ramp = min(1.0, self.ramp.get(s.name, 1.0))
            out[s.name] = score * ramp
            self.ramp[s.name] = min(1.0, ramp + self.p.ramp_per_tick)
        if not any(out.values()):  # everything ramping from zero: let the first step in
            out = {k: 0.05 for k in out}
        return out


from fabric.scheduling import dispatch as _dispatch  # noqa: E402,F401  registers "fabric"
