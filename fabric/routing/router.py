"""FabricRequestRouter: the Serve RequestRouter that applies the scheduler's routing table.

It runs where Serve already picks replicas (in direct-streaming mode, inside the app's
ingress request router that HAProxy asks), so the fabric's decision adds no hop to the
data path. The table is refreshed in the background; a routing decision never waits on
the scheduler, and keeps using the last table if the scheduler is down (fail-static).
"""

from __future__ import annotations

import asyncio
import logging
from typing import List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from fabric.routing.pick import rank_by_table, request_region
from fabric.scheduling.table import RoutingTable, SmoothWeightedRoundRobin

logger = logging.getLogger("fabric.router")


def replica_region(replica: RunningReplica) -> Optional[str]:
    return (getattr(replica, "replica_metadata", None) or {}).get("region")


class FabricRequestRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, scheduler: str = "fabric:scheduler", namespace: str = "fabric",
                         refresh_s: float = 0.5, **_: object) -> None:
        self._scheduler_name = scheduler
        self._namespace = namespace
        self._refresh_s = refresh_s
        self.table = RoutingTable()
        self._wrr = SmoothWeightedRoundRobin()
        self._scheduler = None
        self._refresher: Optional[asyncio.Task] = None

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
        args = pending_request.args if pending_request is not None else ()
        pinned = request_region(args[0]) if args else None
        return rank_by_table(self.table, self._wrr, candidate_replicas, replica_region, pinned)

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
                data = await self._scheduler.routing_table.remote()
                self.apply_table(RoutingTable.model_validate(data))
            except Exception as exc:  # scheduler restarting or gone: keep the last table
                logger.debug("routing table refresh failed (keeping version %s): %s",
                             self.table.version, exc)
                self._scheduler = None
            await asyncio.sleep(self._refresh_s)
