"""Layer 6: the central scheduler actor (named, detached, restartable).

Each tick it reads the fabric's signals, asks the configured policy (pure code in
``fabric.scheduling``) for a routing table, and serves that table to the request routers,
which poll it in the background. Versions are wall-clock milliseconds, so a restarted
scheduler's tables still supersede the ones routers hold.
"""

from __future__ import annotations

import asyncio
import time

import ray

from fabric.scheduling.policies import RegionSignals, Snapshot, get_policy
from fabric.scheduling.table import RoutingTable
from fabric.spec import REGION_LABEL, ROLE_LABEL, FabricSpec

from fabric.layers.naming import NAMESPACE, SCHEDULER as SCHEDULER_NAME  # noqa: F401


def snapshot_from_nodes(spec: FabricSpec, nodes: list[dict]) -> Snapshot:
    """Regions of the spec, with how many of their LLM-slot nodes are alive."""
    alive: dict[str, int] = {}
    for node in nodes:
        region = (node.get("Labels") or {}).get(REGION_LABEL)
        if node.get("Alive") and region:
            alive[region] = alive.get(region, 0) + 1
    return Snapshot(regions=[RegionSignals(name=r.name, healthy_replicas=alive.get(r.name, 0))
                             for r in spec.regions])


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Scheduler:
    def __init__(self, spec_json: str):
        self._spec = FabricSpec.model_validate_json(spec_json)
        self._policy = get_policy(self._spec.scheduler.policy)
        self._table = RoutingTable()
        self._ticks = 0
        self._loop_task = None

    async def _tick_forever(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self._spec.scheduler.tick_s)

    def tick(self) -> dict:
        snapshot = snapshot_from_nodes(self._spec, ray.nodes())
        version = max(int(time.time() * 1000), self._table.version + 1)
        self._table = self._policy(snapshot, version)
        self._ticks += 1
        return self._table.model_dump()

    async def routing_table(self) -> dict:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._tick_forever())
        if self._table.version == 0:
            self.tick()
        return self._table.model_dump()

    async def status(self) -> dict:
        return {"ticks": self._ticks, "table": self._table.model_dump()}


def start_scheduler(spec: FabricSpec):
    """Create the scheduler (or return the running one), pinned to the head node."""
    actor = Scheduler.options(
        name=SCHEDULER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        label_selector={ROLE_LABEL: "head"},
    ).remote(spec.model_dump_json())
    ray.get(actor.routing_table.remote())  # starts the tick loop; fails loudly if unplaceable
    return actor
