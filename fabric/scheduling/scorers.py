"""Scorers: what one more token costs at a site, one concern per class. Pure.

Each scorer maps a site's signals to a marginal cost in dollars per million output tokens, so
scorers add up and the merit order is their sum. A scorer registers by name
(``class X(Scorer, name="...")``); the spec lists which run and with what weight
(``scheduler.scorers: {energy_price: 1, carbon: 1}``) and each scorer's own parameters
(``scheduler.scorer_params: {carbon: {usd_per_t: 100}}``); ``module:Class`` names one that
lives outside the fabric. Signals a scorer needs beyond the standard ones travel in
``SiteSignals.extra``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fabric.scheduling.plugins import resolve
from fabric.scheduling.signals import SiteSignals

SCORERS: dict[str, type["Scorer"]] = {}
J_PER_MWH = 3.6e9
TOKENS = 1e6  # costs are per million output tokens


def mwh_per_mtok(site: SiteSignals) -> float:
    """Facility energy of a million output tokens at this site (MWh)."""
    return site.j_per_token * site.pue * TOKENS / J_PER_MWH


class Scorer:
    """Base: ``cost(site)`` in $ per million output tokens (lower is better)."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init_subclass__(cls, name: str, **kw):
        super().__init_subclass__(**kw)
        cls.name = name
        SCORERS[name] = cls

    def __init__(self, **params: Any):
        self.p = self.Params(**params)

    def cost(self, site: SiteSignals) -> float:
        raise NotImplementedError


class EnergyPrice(Scorer, name="energy_price"):
    """The grid's price of the energy a token takes: $/MWh × MWh per token (GPU type, PUE)."""

    def cost(self, site):
        return site.price_usd_per_mwh * mwh_per_mtok(site)


class Carbon(Scorer, name="carbon"):
    """The token's emissions (grid gCO2/kWh × its energy) priced at ``usd_per_t`` a tonne."""

    class Params(Scorer.Params):
        usd_per_t: float = Field(100.0, ge=0, description="carbon price, $ per tonne CO2")

    def cost(self, site):
        grams = max(0.0, site.carbon_g_per_kwh) * mwh_per_mtok(site) * 1e3
        return grams / 1e6 * self.p.usd_per_t


class RenewableShare(Scorer, name="renewable_share"):
    """Energy not from wind, solar or hydro (the grid's source mix now), priced at
    ``usd_per_mwh``: what buying certificates for that share would cost."""

    class Params(Scorer.Params):
        usd_per_mwh: float = Field(20.0, ge=0)

    def cost(self, site):
        share = site.extra.get("renewable_share", 0.0)
        return (1.0 - min(1.0, max(0.0, share))) * mwh_per_mtok(site) * self.p.usd_per_mwh


class Latency(Scorer, name="latency_class"):
    """A surcharge for sites far from the users: the price of a slower answer."""

    class Params(Scorer.Params):
        regional_usd_per_mtok: float = Field(0.0, ge=0)
        far_usd_per_mtok: float = Field(0.0, ge=0)

    def cost(self, site):
        return {"regional": self.p.regional_usd_per_mtok,
                "far": self.p.far_usd_per_mtok}.get(site.latency_class, 0.0)


def scorer_class(name: str) -> type[Scorer]:
    """A registered scorer, or ``module:Class``; a ValueError names the known ones."""
    return resolve(name, SCORERS, Scorer, "scorer")


class Scoring:
    """The configured scorers and weights: a site's marginal cost is their weighted sum."""

    def __init__(self, weights: dict[str, float], params: dict[str, dict] | None = None):
        params = params or {}
        unknown = set(params) - set(weights)
        if unknown:
            raise ValueError(f"parameters for scorers not listed in scorers: {sorted(unknown)}")
        self.scorers = [(scorer_class(name)(**params.get(name, {})), float(w))
                        for name, w in weights.items() if w]

    def cost(self, site: SiteSignals) -> float:
        return sum(w * s.cost(site) for s, w in self.scorers)

    def breakdown(self, site: SiteSignals) -> dict[str, float]:
        return {s.name: round(w * s.cost(site), 9) for s, w in self.scorers}


RENEWABLE_SOURCES = ("wind", "solar", "hydro")


def renewable_share(source_mix: dict[str, float]) -> float:
    total = sum(source_mix.values())
    return sum(source_mix.get(k, 0.0) for k in RENEWABLE_SOURCES) / total if total > 0 else 0.0
