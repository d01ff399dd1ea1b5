"""The routing table: the one thing the scheduler hands to the hot path.

The scheduler recomputes it every tick; whatever picks replicas keeps its own copy and
never waits for a new one (fail-static: if the scheduler is gone, the last table holds).
"""

from __future__ import annotations

from functools import cached_property

from pydantic import BaseModel, Field


class RoutingTable(BaseModel):
    """Traffic weights per site. ``version`` only grows, so stale tables are ignored."""

    version: int = Field(0, ge=0)
    policy: str = "none"
    weights: dict[str, float] = Field(default_factory=dict, description="site -> share >= 0")
    site_region: dict[str, str] = Field(default_factory=dict)
    edge_sites: list[str] = Field(default_factory=list)
    overflow: list[str] = Field(default_factory=list, description="sites at weight 0 that may "
                                "still take what the weighted sites cannot (their replicas full)")
    parked: list[str] = Field(default_factory=list, description="sites whose capacity the "
                              "policy does not need: their engines may stop, their nodes go")
    cost_usd_per_mtok: dict[str, float] = Field(default_factory=dict, description="each site's "
                                                "marginal cost of a million tokens, as ranked")
    counterfactual: dict[str, dict] = Field(default_factory=dict, description="site -> what a "
                                            "joule spent there would have cost and emitted "
                                            "under least_load (fabric.scheduling.counterfactual)")

    @cached_property
    def overflow_sites(self) -> frozenset[str]:
        """``overflow`` as a set, built once per table (the hot path asks per replica)."""
        return frozenset(self.overflow)

    def allowed(self, sites: set[str]) -> dict[str, float]:
        """The weights restricted to the given sites, dropping zero weights."""
        return {s: w for s, w in self.weights.items() if s in sites and w > 0}


class SmoothWeightedRoundRobin:
    """Nginx's smooth weighted round-robin: deterministic, evenly interleaved picks.

    With weights {a: 1, b: 1} it alternates a, b, a, b; with {a: 3, b: 1} it yields
    a, a, b, a — never long runs, so short tests see the intended shares.
    """

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def pick(self, weights: dict[str, float]) -> str | None:
        if not weights:
            return None
        total = sum(weights.values())
        for key, weight in weights.items():
            self._current[key] = self._current.get(key, 0.0) + weight
        best = max(sorted(weights), key=lambda k: self._current[k])
        self._current[best] -= total
        for key in list(self._current):
            if key not in weights:
                del self._current[key]
        return best
