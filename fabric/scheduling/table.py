"""The routing table: the one thing the scheduler hands to the hot path.

The scheduler recomputes it every tick; whatever picks replicas keeps its own copy and
never waits for a new one (fail-static: if the scheduler is gone, the last table holds).
"""

from __future__ import annotations

import heapq
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
    keep_engines: dict[str, int] = Field(default_factory=dict, description="sites the policy "
                                         "runs with only part of their engines: site -> engines "
                                         "to keep (the others may stop)")
    cost_usd_per_mtok: dict[str, float] = Field(default_factory=dict, description="each site's "
                                                "marginal cost of a million tokens, as ranked")
    counterfactual: dict[str, dict] = Field(default_factory=dict, description="site -> what a "
                                            "joule spent there would have cost and emitted "
                                            "under least_load (fabric.scheduling.counterfactual)")

    def routing_key(self) -> tuple:
        """What a router routes by (not the costs the records carry): a table republished
        with the same key changes nothing on the hot path."""
        return (self.policy, tuple(sorted(self.weights.items())), tuple(sorted(self.site_region.items())),
                tuple(self.edge_sites), tuple(self.overflow), tuple(self.parked))

    @cached_property
    def overflow_sites(self) -> frozenset[str]:
        """``overflow`` as a set, built once per table (the hot path asks per replica)."""
        return frozenset(self.overflow)

    def allowed(self, sites: set[str]) -> dict[str, float]:
        """The weights restricted to the given sites, dropping zero weights."""
        return {s: w for s, w in self.weights.items() if s in sites and w > 0}


class SmoothWeightedRoundRobin:
    """Deterministic, evenly interleaved weighted picks in O(log sites) (stride scheduling).

    Each key's next pick is due at a virtual time ``base + (n + 1) / weight``; the earliest
    due key (ties by name) goes next. With weights {a: 1, b: 1} it alternates a, b, a, b;
    with {a: 3, b: 1} it yields a, a, b, a — never long runs, so short tests see the intended
    shares. A new weights dict keeps each key's position (a table republished every tick
    does not restart the sequence); the same dict object is recognised without a scan, so a
    pick does not grow with the fleet.
    """

    def __init__(self) -> None:
        self._given: dict[str, float] = {}  # the dict last asked with (recognised by identity)
        self._weights: dict[str, float] = {}  # its positive weights
        self._state: dict[str, list[float]] = {}  # key -> [base, n]
        self._heap: list[tuple[float, str]] = []
        self._now = 0.0

    def _adopt(self, weights: dict[str, float]) -> None:
        self._given = weights
        old, state, weights = self._weights, {}, {k: w for k, w in weights.items() if w > 0}
        for key, weight in weights.items():
            last = self._now
            if key in self._state:  # its last pick; never overdue after a raise (no burst)
                base, n = self._state[key]
                last = max(base + n / old[key], self._now - 1 / weight)
            state[key] = [last, 0]
        self._weights, self._state = weights, state
        self._heap = sorted((b + 1 / weights[k], k) for k, (b, _) in state.items())

    def pick(self, weights: dict[str, float]) -> str | None:
        if weights is not self._given and weights != self._given:
            self._adopt(weights)
        if not self._heap:
            return None
        due, key = self._heap[0]
        st = self._state[key]
        st[1] += 1
        heapq.heapreplace(self._heap, (st[0] + (st[1] + 1) / self._weights[key], key))
        self._now = due
        return key
