"""Layer 2: one AIFactory actor per site — capacity, PUE, nodes, replicas, facility power.

Facility power = IT power (the sum of the site's GPUMonitor readings) × PUE; headroom is
the PowerGrid's current budget minus that. Negative headroom is what the scheduler acts on.
"""

from __future__ import annotations

import asyncio

import ray

from fabric.layers import naming
from fabric.spec import SiteSpec


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class AIFactory:
    def __init__(self, site_json: str, region: str):
        self.site = SiteSpec.model_validate_json(site_json)
        self.region = region

    def where(self) -> dict:
        """The node this actor runs on and its labels (placement is checked, not assumed)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "labels": ctx.get_node_labels()}

    def _monitors(self) -> list:
        prefix = naming.gpu_prefix(self.site.name)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == naming.NAMESPACE and a["name"].startswith(prefix)]
        return [ray.get_actor(n, namespace=naming.NAMESPACE) for n in sorted(names)]

    @ray.method(enable_task_events=False)  # called every tick: no task event in the GCS
    async def state(self) -> dict:
        grid = ray.get_actor(naming.power(self.site.name), namespace=naming.NAMESPACE)
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
            "price_usd_per_mwh": grid_state["price_usd_per_mwh"],
            "carbon_g_per_kwh": grid_state["carbon_g_per_kwh"],
            "curtailed": grid_state["curtailed"], "source_mix": grid_state["source_mix"],
            "node_readings": readings,
        }
