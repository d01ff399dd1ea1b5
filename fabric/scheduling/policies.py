"""Scheduling policies: pure functions from a signal snapshot to a routing table.

No Ray import here: the live scheduler actor and offline tools call the same code.
Policies register by name and the spec chooses one with a string.
"""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel, Field

from fabric.scheduling.table import RoutingTable


class RegionSignals(BaseModel):
    name: str
    healthy_replicas: int = Field(0, ge=0)


class Snapshot(BaseModel):
    """What the scheduler knows at one tick."""

    regions: list[RegionSignals]


Policy = Callable[[Snapshot, int], RoutingTable]
POLICIES: dict[str, Policy] = {}


def register(name: str):
    def deco(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn
    return deco


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None


@register("round_robin")
def round_robin(snapshot: Snapshot, version: int) -> RoutingTable:
    """Equal weight to every region with a healthy replica: requests alternate between regions.

    A region with no healthy replica gets weight 0, so traffic never waits on a dead site.
    If no region is healthy the table keeps every region at weight 1 (route somewhere and
    let the engine answer) rather than refusing everything on a stale signal.
    """
    healthy = {r.name: 1.0 for r in snapshot.regions if r.healthy_replicas > 0}
    weights = healthy or {r.name: 1.0 for r in snapshot.regions}
    full = {r.name: weights.get(r.name, 0.0) for r in snapshot.regions}
    return RoutingTable(version=version, policy="round_robin", weights=full)
