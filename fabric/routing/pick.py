"""Per-request replica ranking from the routing table: pure, no Ray, no I/O.

Serve asks for ranks (best first); within a rank it takes the replica with the shortest
queue that accepts the request, and falls through to the next rank when all are full.
Constraints from the request (privacy, region) are hard: they filter before any weighting,
and a request with nowhere allowed to go is refused, never served elsewhere. Power and
price (the table's weights) are soft: inside the allowed set they steer, and if the table
gives every allowed site weight 0 the request is still served there rather than refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from fabric.scheduling.table import RoutingTable, SmoothWeightedRoundRobin

R = TypeVar("R")
PRIVACY = ("none", "region", "edge")
# Hints a gateway also reads from headers (request routers see only the body's metadata).
HINT_HEADERS = {"x-fabric-tier": "fabric_tier", "x-fabric-privacy": "fabric_privacy",
                "x-fabric-region": "fabric_region", "x-fabric-max-latency-ms": "fabric_max_latency_ms",
                "x-fabric-deadline": "fabric_deadline"}


class NoAllowedReplica(RuntimeError):
    """The request may only run where no replica is: refuse it, never route elsewhere."""


@dataclass(frozen=True)
class Placement:
    """Where a replica runs, as the replica itself reported it."""

    site: str | None
    region: str | None
    edge: bool = False


@dataclass(frozen=True)
class Hints:
    """Fabric hints a request carries in ``metadata`` (``fabric_region``, ``fabric_privacy``)."""

    region: str | None = None
    privacy: str = "none"


def request_hints(payload: object) -> Hints:
    metadata = getattr(payload, "metadata", None)
    if not isinstance(metadata, dict):
        return Hints()
    region = metadata.get("fabric_region")
    privacy = metadata.get("fabric_privacy", "none")
    return Hints(region=region if isinstance(region, str) and region else None,
                 privacy=privacy if privacy in PRIVACY else "invalid")


def allowed(where: Placement, hints: Hints) -> bool:
    if hints.privacy == "edge" and not where.edge:
        return False
    return hints.region is None or where.region == hints.region


def check_hints(hints: Hints) -> None:
    if hints.privacy == "invalid":
        raise NoAllowedReplica(f"fabric_privacy must be one of {', '.join(PRIVACY)}")
    if hints.privacy == "region" and hints.region is None:
        raise NoAllowedReplica("fabric_privacy=region needs fabric_region")


def parked_for(table: RoutingTable, hints: Hints) -> list[str]:
    """The table's parked sites where the request may run (to wake when nothing else may)."""
    return [s for s in table.parked
            if allowed(Placement(s, table.site_region.get(s), s in table.edge_sites), hints)]


def session_replica(session: str, replicas: Sequence[R], key: Callable[[R], str]) -> R:
    """Rendezvous hashing: every router instance maps a session to the same replica, with no
    shared state, and a session only moves when its replica leaves the candidate set."""
    return max(replicas, key=lambda r: hashlib.blake2b(f"{session}|{key(r)}".encode(),
                                                       digest_size=8).digest())


def rank_by_table(table: RoutingTable, wrr: SmoothWeightedRoundRobin, replicas: Sequence[R],
                  where: Callable[[R], Placement], hints: Hints = Hints(),
                  session: str = "", key: Callable[[R], str] = str) -> list[list[R]]:
    """Rank 0: the replicas of the site the weights pick for this request — or, for a
    session, its own replica among those of sites that take traffic. Rank 1: the other sites
    with weight (overflow when rank 0 is full). Rank 2: the table's ``overflow`` sites, which
    take no traffic by weight but what the others cannot. Other sites at weight 0 (shed for
    power) are never offered while others are."""
    check_hints(hints)
    by_site: dict[str | None, list[R]] = {}
    unconstrained = hints.privacy == "none" and hints.region is None
    for replica in replicas:
        placed = where(replica)
        if unconstrained or allowed(placed, hints):
            by_site.setdefault(placed.site, []).append(replica)
    if not by_site:
        if not replicas:
            return []
        raise NoAllowedReplica(
            "no replica satisfies " + ", ".join(
                f"{k}={v}" for k, v in (("privacy", hints.privacy), ("region", hints.region))
                if v not in (None, "none")))
    present = set(by_site)
    weights = table.allowed(present) or {s: 1.0 for s in present}
    site = wrr.pick(weights)
    overflow = [r for s, rs in by_site.items() if s != site and s in weights for r in rs]
    spill_sites = table.overflow_sites
    spill = [r for s, rs in by_site.items() if s not in weights and s in spill_sites for r in rs]
    ranks = [rank for rank in (by_site[site], overflow, spill) if rank]
    if session:
        mine = session_replica(session, [r for s, rs in by_site.items() if s in weights for r in rs], key)
        rest = [r for r in by_site[site] + overflow if r is not mine]
        ranks = [rank for rank in ([mine], rest, spill) if rank]
    return ranks
