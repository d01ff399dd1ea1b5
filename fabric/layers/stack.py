"""Bring up (and down) the per-site and per-node actors of layers 1–3 from the spec."""

from __future__ import annotations

import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fabric.layers import naming
from fabric.layers.aidc import AIFactory
from fabric.layers.gpu import GPUMonitor
from fabric.spec import SITE_LABEL, FabricSpec


def _opts(name: str) -> dict:
    return {"name": name, "namespace": naming.NAMESPACE, "lifetime": "detached",
            "get_if_exists": True}


def start_layers(spec: FabricSpec) -> dict[str, list[str]]:
    """A site actor per site (its AIFactory, holding its PowerGrid) on the site's nodes, a
    GPUMonitor per site node. Returns the actor names by layer. Fails if a site of the spec
    has no node."""
    nodes = [n for n in ray.nodes() if n["Alive"] and SITE_LABEL in (n.get("Labels") or {})]
    t0 = time.time()  # one replay clock for every site
    # the grids report the lowest budget scheduled over a cold start (and two ticks) ahead
    from fabric.scheduling.dispatch import DispatchParams

    cold = spec.scheduler.params.get("cold_start_s", DispatchParams.model_fields["cold_start_s"].default)
    lookahead = float(cold) + 2 * spec.scheduler.tick_s
    names: dict[str, list[str]] = {"power": [], "aidc": [], "gpu": []}
    handles = []
    for region, site in spec.sites:
        site_nodes = [n for n in nodes if n["Labels"][SITE_LABEL] == site.name]
        if not site_nodes:
            raise RuntimeError(f"site {site.name!r} has no node labelled {SITE_LABEL}={site.name}")
        here = {"label_selector": {SITE_LABEL: site.name}}
        site_json = site.model_dump_json()
        factory = AIFactory.options(**_opts(naming.site(site.name)), **here).remote(
            site_json, region, spec.power_clock.speed, spec.power_clock.start_s, t0, lookahead)
        handles.append(factory.grid_state.remote())
        names["power"].append(naming.power(site.name))
        names["aidc"].append(naming.aidc(site.name))
        for node in site_nodes:
            name = naming.gpu(site.name, node["NodeID"])
            mon = GPUMonitor.options(**_opts(name), scheduling_strategy=NodeAffinitySchedulingStrategy(
                node["NodeID"], soft=False)).remote(site_json, node["NodeID"])
            handles.append(mon.reading.remote())
            names["gpu"].append(name)
    ray.get(handles, timeout=120)
    return names


def fabric_actor_names() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == naming.NAMESPACE and a["name"].startswith("fabric:"))


def stop_layers() -> None:
    """Kill every fabric actor (scheduler included) of an existing cluster."""
    for name in fabric_actor_names():
        try:
            ray.kill(ray.get_actor(name, namespace=naming.NAMESPACE), no_restart=True)
        except ValueError:
            pass
