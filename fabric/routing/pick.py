"""Per-request replica ranking from the routing table: pure, no Ray, no I/O.

Serve asks for ranks (best first); within a rank it takes the replica with the shortest
queue that accepts the request, and falls through to the next rank when all are full.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from fabric.scheduling.table import RoutingTable, SmoothWeightedRoundRobin

R = TypeVar("R")


class NoAllowedReplica(RuntimeError):
    """The request may only run where no replica is: refuse it, never route elsewhere."""


def request_region(payload: object) -> str | None:
    """A region the request is pinned to: ``metadata.fabric_region`` in the body (set by a
    regional endpoint, or by a client that must stay in one region)."""
    metadata = getattr(payload, "metadata", None)
    if isinstance(metadata, dict):
        region = metadata.get("fabric_region")
        return region if isinstance(region, str) and region else None
    return None


def rank_by_table(table: RoutingTable, wrr: SmoothWeightedRoundRobin, replicas: Sequence[R],
                  region_of: Callable[[R], str | None], pinned: str | None = None) -> list[list[R]]:
    """Rank 0: the replicas of the region the table's weights pick for this request.
    Rank 1: replicas of other regions the table allows (overflow when rank 0 is full).
    Replicas in regions the table gives weight 0 are never offered while others exist.
    With no usable table (none received yet, or no region in it has a replica), regions
    take equal turns: the fail-open default is round-robin, never a stall.
    A request ``pinned`` to a region goes there or nowhere (NoAllowedReplica).
    """
    by_region: dict[str | None, list[R]] = {}
    for replica in replicas:
        by_region.setdefault(region_of(replica), []).append(replica)
    if pinned is not None:
        if not by_region.get(pinned):
            raise NoAllowedReplica(f"no replica in region {pinned!r}")
        return [by_region[pinned]]
    present = {r for r in by_region if r is not None}
    weights = table.allowed(present) or {r: 1.0 for r in present}
    region = wrr.pick(weights)
    if region is None:
        return [list(replicas)] if replicas else []
    overflow = [r for reg, rs in by_region.items() if reg != region and reg in weights for r in rs]
    return [by_region[region], overflow] if overflow else [by_region[region]]
