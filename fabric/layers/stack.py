"""Bring up (and down) the per-site and per-node actors of layers 1–3 from the spec."""

from __future__ import annotations

import json
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fabric.layers import blobs, naming
from fabric.layers.aidc import Sites
from fabric.layers.gpu import GPUMonitor
from fabric.spec import ROLE_LABEL, SITE_LABEL, FabricSpec


def _opts(name: str) -> dict:
    return {"name": name, "namespace": naming.NAMESPACE, "lifetime": "detached",
            "get_if_exists": True}


def ensure_monitor(site_json: str, site: str, node_id: str):
    """The GPUMonitor of a site's node, started there if it has none (nodes join, and a node
    handed back gets one again when it serves). Returns its handle."""
    return GPUMonitor.options(**_opts(naming.gpu(site, node_id)),
                              scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
                              ).remote(site_json, node_id)


def site_nodes(site: str) -> list[str]:
    """The ids of the live nodes labelled with ``site``."""
    return [n["NodeID"] for n in ray.nodes()
            if n["Alive"] and (n.get("Labels") or {}).get(SITE_LABEL) == site]


def start_layers(spec: FabricSpec, nodes_may_come: bool = False) -> dict[str, list[str]]:
    """The Sites actor (every site's AIFactory, each holding its PowerGrid) on the head — a
    site's state outlives its nodes, which an autoscaler may release when the site is parked —
    and a GPUMonitor per site node. Returns the actor names by layer. A site with no node
    fails, unless ``nodes_may_come`` (an autoscaling cluster starts them on demand)."""
    t0 = time.time()  # one replay clock for every site
    # the grids report the lowest budget scheduled over a cold start (and two ticks) ahead
    from fabric.scheduling.dispatch import DispatchParams

    cold = spec.scheduler.params.get("cold_start_s", DispatchParams.model_fields["cold_start_s"].default)
    lookahead = float(cold) + 2 * spec.scheduler.tick_s
    names: dict[str, list[str]] = {"power": [naming.SITES], "aidc": [naming.SITES], "gpu": []}
    listed = json.dumps([(region, site.model_dump_json()) for region, site in spec.sites])
    sites = Sites.options(**_opts(naming.SITES), label_selector={ROLE_LABEL: "head"}).remote(
        blobs.put(listed),
        spec.power_clock.speed, spec.power_clock.start_s, t0, lookahead)
    handles = []
    for _, site in spec.sites:
        nodes = site_nodes(site.name)
        if not nodes and not nodes_may_come:
            raise RuntimeError(f"site {site.name!r} has no node labelled {SITE_LABEL}={site.name}")
        handles.append(sites.grid_state.remote(site.name))
        for node in nodes:
            handles.append(ensure_monitor(site.model_dump_json(), site.name, node).reading.remote())
            names["gpu"].append(naming.gpu(site.name, node))
    ray.get(handles, timeout=120)
    return names


def fabric_actor_names() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == naming.NAMESPACE and a["name"].startswith("fabric:"))


def stop_layers() -> None:
    """Kill every fabric actor (scheduler included) of an existing cluster, and forget the
    specs they were built from."""
    for name in fabric_actor_names():
        try:
            ray.kill(ray.get_actor(name, namespace=naming.NAMESPACE), no_restart=True)
        except ValueError:
            pass
    blobs.clear()
