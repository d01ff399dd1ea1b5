"""FabricRequestRouter: the Serve RequestRouter that applies the scheduler's routing table.

It runs where Serve already picks replicas (in direct-streaming mode, inside the app's
ingress request router that HAProxy asks), so the fabric's decision adds no hop to the
data path. The table is refreshed in the background by a long poll (the scheduler answers when the
table changes, so a router at rest sends one call every half minute); a routing decision
never waits on the scheduler, and keeps using the last table if the scheduler is down
(fail-static).
Sessions (``x-session-id``) stick to one replica while its site takes traffic — the same one
from every router instance (consistent hashing) — so vLLM's prefix cache already holds the
conversation at each step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from fabric.internals import request_payload, request_session
from fabric.routing.pick import (Hints, NoAllowedReplica, Placement, RankCache, parked_for,
                                 rank_by_table, request_hints)
from fabric.scheduling.table import RoutingTable, SmoothWeightedRoundRobin

logger = logging.getLogger("fabric.router")
LONG_POLL_S = 30.0  # a table that stands this long is confirmed by the scheduler's None


_PLACEMENTS: dict[str, Placement] = {}  # replica id -> placement (fixed for its lifetime)


def _replica_key(replica: RunningReplica) -> str:
    return replica.replica_id.unique_id


def replica_placement(replica: RunningReplica) -> Placement:
    rid = replica.replica_id.unique_id
    placed = _PLACEMENTS.get(rid)
    if placed is None:
        meta = getattr(replica, "replica_metadata", None) or {}
        if not meta:  # metadata not published yet: do not cache an empty placement
            return Placement(site=None, region=None)
        placed = _PLACEMENTS[rid] = Placement(site=meta.get("site"), region=meta.get("region"),
                                              edge=bool(meta.get("edge")))
    return placed


class FabricRequestRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, scheduler: str = "fabric:scheduler", namespace: str = "fabric",
                         refresh_s: float = 0.5, **_: object) -> None:
        self._scheduler_name = scheduler
        self._namespace = namespace
        self._refresh_s = refresh_s
        self.table = RoutingTable()
        self._wrr = SmoothWeightedRoundRobin()
        self._ranks = RankCache()  # per replica list and table: a pick does not scan the fleet
        self._scheduler = None
        self._refresher: Optional[asyncio.Task] = None
        self._woken: dict[str, float] = {}  # parked site -> when this router last woke it

    def apply_table(self, table: RoutingTable) -> bool:
        """Adopt a table if it is newer than the one held. Returns whether it was adopted."""
        if table.version <= self.table.version:
            return False
        self.table = table
        return True

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None
                              ) -> List[List[RunningReplica]]:
        self._ensure_refresher()
        hints, session = Hints(), ""
        if pending_request is not None:
            hints = request_hints(request_payload(pending_request))
            session = request_session(pending_request)
        try:
            return rank_by_table(self.table, self._wrr, candidate_replicas, replica_placement,
                                 hints, session, _replica_key, self._ranks)
        except NoAllowedReplica:
            # Nowhere allowed: hand it to any engine, whose own guard answers an explicit
            # OpenAI-style 503 saying why (a refusal here would reach the client as a bare
            # proxy error). The guard never serves a request outside its constraints. If a
            # parked site may serve it, wake that site: the client's retry finds it up.
            self._wake(parked_for(self.table, hints))
            return [list(candidate_replicas)]

    def _wake(self, sites: list[str]) -> None:
        now = time.monotonic()
        for site in sites:
            if self._scheduler is not None and now - self._woken.get(site, -1e9) > 5.0:
                self._woken[site] = now
                self._scheduler.wake.remote(site)  # fire and forget: never wait on it here

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        import ray

        while True:
            try:
                if self._scheduler is None:
                    self._scheduler = await asyncio.to_thread(
                        ray.get_actor, self._scheduler_name, namespace=self._namespace)
                # a long poll: answered at once if ours is out of date, else when the table
                # changes (or after LONG_POLL_S with None: nothing a router uses changed)
                data = await self._scheduler.routing_table.remote(self.table.version or None,
                                                                  LONG_POLL_S)
                if data is not None and self.apply_table(RoutingTable.model_validate(data)):
                    continue
            except Exception as exc:  # scheduler restarting or gone: keep the last table
                logger.debug("routing table refresh failed (keeping version %s): %s",
                             self.table.version, exc)
                self._scheduler = None
            await asyncio.sleep(self._refresh_s)
