"""Per-request replica ranking from the routing table: pure, no Ray, no I/O.

Serve asks for ranks (best first); within a rank it takes the replica with the shortest
queue that accepts the request, and falls through to the next rank when all are full.
Constraints from the request (privacy, region) are hard: they filter before any weighting,
and a request with nowhere allowed to go is refused, never served elsewhere. Power and
price (the table's weights) are soft: inside the allowed set they steer, and if the table
gives every allowed site weight 0 the request is still served there rather than refused.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Callable, TypeVar

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


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class SessionRing:
    """Consistent hashing of sessions onto replicas: every router instance maps a session to
    the same replica with no shared state, a session only moves when its replica leaves the
    candidate set, and a lookup is a bisect (built once per set of replicas, not per request)."""

    VNODES = 16  # points per replica: enough to spread sessions evenly over a few replicas

    def __init__(self, replicas: Sequence[R], key: Callable[[R], str]) -> None:
        points = sorted((_hash64(f"{key(r)}#{v}"), i)
                        for i, r in enumerate(replicas) for v in range(self.VNODES))
        self._hashes = [h for h, _ in points]
        self._index = [i for _, i in points]

    def home(self, session: str) -> int:
        """The position of the session's replica in the list the ring was built from."""
        at = bisect.bisect(self._hashes, _hash64(session)) % len(self._hashes)
        return self._index[at]


class _Slices(Sequence):
    """Slices of one list read in order without copying: a rank over a big fleet is built in
    O(1) and only costs its length if Serve ever reads it (it reads rank 1 only when rank 0
    is full)."""

    __slots__ = ("_items", "_parts", "_len")

    def __init__(self, items: list, parts: list[tuple[int, int]]) -> None:
        self._items, self._parts = items, [(a, b) for a, b in parts if b > a]
        self._len = sum(b - a for a, b in self._parts)

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        for a, b in self._parts:
            yield from self._items[a:b]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(self)[i]
        if i < 0:
            i += self._len
        for a, b in self._parts:
            if i < b - a:
                return self._items[a + i]
            i -= b - a
        raise IndexError(i)


class _Allowed:
    """One replica list's replicas grouped by site for one kind of hints, and the table's
    view of them, each built once (per replica list and per table version)."""

    def __init__(self, replicas: Sequence, where: Callable, hints: Hints) -> None:
        self.by_site: dict[str | None, list] = {}
        unconstrained = hints.privacy == "none" and hints.region is None
        self.complete = True  # every replica had reported its site
        for replica in replicas:
            placed = where(replica)
            self.complete &= placed.site is not None
            if unconstrained or allowed(placed, hints):
                self.by_site.setdefault(placed.site, []).append(replica)
        self.table: RoutingTable | None = None
        self._rings: dict[frozenset, SessionRing] = {}  # per set of weighted sites

    def for_table(self, table: RoutingTable) -> "_Allowed":
        if table is not self.table:
            present = set(self.by_site)
            self.weights = table.allowed(present) or {s: 1.0 for s in present}
            self.flat, self.span = [], {}  # the weighted sites' replicas, site by site
            for site in sorted(self.weights, key=str):
                start = len(self.flat)
                self.flat.extend(self.by_site[site])
                self.span[site] = (start, len(self.flat))
            self.spill = [r for s, rs in self.by_site.items()
                          if s not in self.weights and s in table.overflow_sites for r in rs]
            self.table = table
        return self

    def ring(self, key: Callable) -> SessionRing:
        sites = frozenset(self.weights)
        if sites not in self._rings:
            self._rings = {sites: SessionRing(self.flat, key)}  # flat is a function of sites
        return self._rings[sites]


class RankCache:
    """What ``rank_by_table`` can reuse between requests: Serve hands the router the same
    replica list object until the replica set changes, and the table changes once per tick,
    so grouping replicas by site and hints happens then, not per request."""

    def __init__(self) -> None:
        self._replicas: object = None
        self._groups: dict[tuple, _Allowed] = {}

    def groups(self, replicas: Sequence, where: Callable, hints: Hints) -> _Allowed:
        if replicas is not self._replicas:
            self._replicas, self._groups = replicas, {}
        key = (hints.privacy, hints.region)
        found = self._groups.get(key)
        if found is None:
            found = _Allowed(replicas, where, hints)
            if found.complete:  # a replica without its site yet is grouped again next time
                self._groups[key] = found
        return found


def rank_by_table(table: RoutingTable, wrr: SmoothWeightedRoundRobin, replicas: Sequence[R],
                  where: Callable[[R], Placement], hints: Hints = Hints(),
                  session: str = "", key: Callable[[R], str] = str,
                  cache: RankCache | None = None) -> list[Sequence[R]]:
    """Rank 0: the replicas of the site the weights pick for this request — or, for a
    session, its own replica among those of sites that take traffic. Rank 1: the other sites
    with weight (overflow when rank 0 is full). Rank 2: the table's ``overflow`` sites, which
    take no traffic by weight but what the others cannot. Other sites at weight 0 (shed for
    power) are never offered while others are. With a ``cache`` the cost of a pick does not
    grow with the fleet."""
    check_hints(hints)
    groups = (cache or RankCache()).groups(replicas, where, hints)
    if not groups.by_site:
        if not replicas:
            return []
        raise NoAllowedReplica(
            "no replica satisfies " + ", ".join(
                f"{k}={v}" for k, v in (("privacy", hints.privacy), ("region", hints.region))
                if v not in (None, "none")))
    view = groups.for_table(table)
    site = wrr.pick(view.weights)
    a, b = view.span[site]
    if session:
        i = view.ring(key).home(session)
        return [rank for rank in ([view.flat[i]], _rest(view.flat, a, b, i), view.spill) if rank]
    return [rank for rank in (view.by_site[site], _Slices(view.flat, [(0, a), (b, len(view.flat))]),
                              view.spill) if rank]


def _rest(flat: list, a: int, b: int, mine: int) -> _Slices:
    """The chosen site's replicas first, then the other weighted sites', without ``mine``."""
    parts = [(a, b), (0, a), (b, len(flat))]
    out = []
    for lo, hi in parts:
        if lo <= mine < hi:
            out += [(lo, mine), (mine + 1, hi)]
        else:
            out.append((lo, hi))
    return _Slices(flat, out)
