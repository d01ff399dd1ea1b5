"""Layer 2: one AIFactory actor per site — capacity, PUE, nodes, replicas, facility power.

Facility power = IT power (the sum of the site's GPUMonitor readings) × PUE; headroom is
the PowerGrid's current budget minus that. Negative headroom is what the scheduler acts on.
"""

from __future__ import annotations

import asyncio
import time

import ray

from fabric.layers import naming
from fabric.spec import SiteSpec


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class AIFactory:
    def __init__(self, site_json: str, region: str):
        self.site = SiteSpec.model_validate_json(site_json)
        self.region = region
        self._found: tuple[float, list] = (0.0, [])  # (when, monitor handles)
        self._grid = None

    def where(self) -> dict:
        """The node this actor runs on and its labels (placement is checked, not assumed)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "labels": ctx.get_node_labels()}

    def _monitors(self, max_age_s: float = 10.0) -> list:
        """The site's GPUMonitor handles, looked up again every ``max_age_s`` (nodes join and
        leave) rather than every tick: listing named actors is a GCS round trip."""
        at, handles = self._found
        if handles and time.monotonic() - at < max_age_s:
            return handles
        prefix = naming.gpu_prefix(self.site.name)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == naming.NAMESPACE and a["name"].startswith(prefix)]
        handles = [ray.get_actor(n, namespace=naming.NAMESPACE) for n in sorted(names)]
        self._found = (time.monotonic(), handles)
        return handles

    @ray.method(enable_task_events=False)  # called every tick: no task event in the GCS
    async def state(self) -> dict:
        if self._grid is None:  # restartable and named: the handle outlives restarts
            self._grid = ray.get_actor(naming.power(self.site.name), namespace=naming.NAMESPACE)
        grid = self._grid
        monitors = self._monitors()
        try:
            grid_state, *readings = await asyncio.gather(grid.state.remote(),
                                                         *(m.reading.remote() for m in monitors))
        except ray.exceptions.RayActorError:  # a node (and its monitor) went: look again
            self._found = (0.0, [])
            monitors = self._monitors()
            grid_state, *readings = await asyncio.gather(grid.state.remote(),
                                                         *(m.reading.remote() for m in monitors))
        it_w = sum(r["power_w"] for r in readings)
        facility_w = it_w * self.site.pue
        sources = sorted({r["source"] for r in readings})
        return {
            "site": self.site.name, "region": self.region,
            "capacity_mw": self.site.capacity_mw, "pue": self.site.pue,
            "nodes": len(readings), "gpus": sum(len(r["gpus"]) for r in readings),
            "replicas": sum(r["replicas"] for r in readings),
            "it_power_w": round(it_w, 2), "facility_power_w": round(facility_w, 2),
            "power_source": ",".join(sources) or "none",
            "budget_w": grid_state["budget_w"], "headroom_w": round(grid_state["budget_w"] - facility_w, 2),
            "budget_ahead_w": grid_state.get("budget_ahead_w"),
            "price_usd_per_mwh": grid_state["price_usd_per_mwh"],
            "carbon_g_per_kwh": grid_state["carbon_g_per_kwh"],
            "curtailed": grid_state["curtailed"], "source_mix": grid_state["source_mix"],
            "node_readings": readings,
        }
