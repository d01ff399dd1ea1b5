"""`fabric status`: one view per layer, gathered from the layer actors of a running fabric."""

from __future__ import annotations

import json
from pathlib import Path

import ray

from fabric.layers import naming
from fabric.model import cache_root


def run_file() -> Path:
    """Where `fabric up` records the running local fabric (address, endpoint)."""
    return cache_root() / "run" / "current.json"


def record_run(info: dict) -> None:
    path = run_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2))


def clear_run() -> None:
    run_file().unlink(missing_ok=True)


def read_run() -> dict | None:
    try:
        return json.loads(run_file().read_text())
    except (OSError, ValueError):
        return None


def metrics_urls() -> list[str]:
    """Every live node's Prometheus endpoint (Ray's metrics agent; ``ray_fabric_*`` among them)."""
    return sorted(f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
                  for n in ray.nodes() if n["Alive"] and n.get("MetricsExportPort"))


def gather(endpoint: str | None = None, regional: dict | None = None) -> dict:
    """Snapshot of every layer (the caller is connected to the cluster)."""
    from fabric.layers.stack import fabric_actor_names
    from fabric.metering.ledger import LEDGER_NAME
    from fabric.scheduling.scorers import renewable_share

    names = fabric_actor_names()
    sites = (ray.get(ray.get_actor(naming.SITES, namespace=naming.NAMESPACE).states.remote(),
                     timeout=30) if naming.SITES in names else [])
    table, replicas, st = None, None, {}
    if naming.SCHEDULER in names:
        scheduler = ray.get_actor(naming.SCHEDULER, namespace=naming.NAMESPACE)
        table = ray.get(scheduler.routing_table.remote(), timeout=30)
        st = ray.get(scheduler.status.remote(), timeout=30)
        replicas = {"targets": st.get("replica_targets", {}), "drained": st.get("drained_sites", []),
                    "parked": st.get("parked_sites", [])}
    recent = None
    if LEDGER_NAME in names:  # the last minute per site and model (the live page's)
        try:
            ledger = ray.get_actor(LEDGER_NAME, namespace=naming.NAMESPACE)
            recent = ray.get(ledger.recent_summary.remote(60.0), timeout=30)
        except Exception:  # a restarting ledger leaves it out this time
            recent = None
    nodes = [{"site": s["site"], "region": s["region"], **{k: r[k] for k in (
        "node_id", "source", "power_w", "engine_utilisation", "inflight", "replicas",
        "tokens_per_s", "requests_per_s")},
        "gpus": r["gpus"], "engines": r.get("engines", [])} for s in sites for r in s["node_readings"]]
    regions: dict[str, dict] = {}
    for s in sites:
        reg = regions.setdefault(s["region"], {"region": s["region"], "sites": [], "replicas": 0,
                                               "inflight": 0, "tokens_per_s": 0.0,
                                               "requests_per_s": 0.0, "weight": None})
        reg["sites"].append(s["site"])
        reg["replicas"] += s["replicas"]
        reg["inflight"] += sum(r["inflight"] for r in s["node_readings"])
        reg["tokens_per_s"] += sum(r["tokens_per_s"] for r in s["node_readings"])
        reg["requests_per_s"] += sum(r["requests_per_s"] for r in s["node_readings"])
        if table:
            reg["weight"] = (reg["weight"] or 0.0) + table["weights"].get(s["site"], 0.0)
            s["routing_weight"] = table["weights"].get(s["site"], 0.0)
            s["cost_usd_per_mtok"] = table.get("cost_usd_per_mtok", {}).get(s["site"])
        reg["endpoint"] = (regional or {}).get(s["region"]) or endpoint
        s["renewable_share"] = round(renewable_share(s.get("source_mix") or {}), 4)
    return {"sites": [{k: v for k, v in s.items() if k != "node_readings"} for s in sites],
            "nodes": nodes, "regions": list(regions.values()), "routing_table": table,
            "replica_targets": replicas, "policy": st.get("policy"), "tick": st.get("ticks"),
            "actions": st.get("actions", []), "recent": recent,
            "actors": names, "metrics": metrics_urls()}


def render(snap: dict, console) -> None:
    from rich.table import Table

    t = Table(title="L1/L2 sites (power replayed from grid data)", title_justify="left")
    for col in ("site", "region", "budget kW", "draw kW", "headroom kW", "$/MWh", "gCO2/kWh",
                "curtailed", "$/Mtok", "weight", "power source"):
        t.add_column(col, justify="left" if col in ("site", "region", "power source") else "right")
    for s in snap["sites"]:
        cost = s.get("cost_usd_per_mtok")  # the merit order's marginal cost (dispatch policy)
        t.add_row(s["site"], s["region"], f"{s['budget_w'] / 1e3:.1f}",
                  f"{s['facility_power_w'] / 1e3:.2f}", f"{s['headroom_w'] / 1e3:.2f}",
                  f"{s['price_usd_per_mwh']:.1f}", f"{s['carbon_g_per_kwh']:.0f}",
                  "yes" if s["curtailed"] else "no", "-" if cost is None else f"{cost:.4f}",
                  f"{s.get('routing_weight', 0):.2f}", s["power_source"])
    console.print(t)
    t = Table(title="L3 nodes and GPUs", title_justify="left")
    for col in ("site", "node", "power", "GPUs", "util", "running+waiting"):
        t.add_column(col)
    for n in snap["nodes"]:
        t.add_row(n["site"], n["node_id"][:8], f"{n['power_w']:.0f} W source={n['source']}",
                  f"{len(n['gpus'])}× {n['gpus'][0]['name'] if n['gpus'] else '-'}",
                  f"{n['engine_utilisation']:.0%}", str(n["inflight"]))
    console.print(t)
    t = Table(title="L4 engines (vLLM's own scheduler stats)", title_justify="left")
    for col in ("site", "model", "replica", "in flight", "running", "waiting", "KV cache", "tokens/s", "healthy"):
        t.add_column(col)
    unknown = lambda v, fmt="{}": "-" if v is None else fmt.format(v)  # noqa: E731
    for n in snap["nodes"]:
        for e in n.get("engines", []):
            t.add_row(n["site"], e["model"] or "-", e["replica"][-8:], str(e["inflight"]),
                      unknown(e["running"]), unknown(e["waiting"]),
                      unknown(e["kv_cache_usage"], "{:.1%}"), f"{e['tokens_per_s']:.0f}",
                      "yes" if e["healthy"] else "no")
    console.print(t)
    t = Table(title="L4–L6 regions, replicas, routing", title_justify="left")
    for col in ("region", "sites", "replicas", "running+waiting", "tokens/s", "weight", "endpoint"):
        t.add_column(col)
    for r in snap["regions"]:
        t.add_row(r["region"], ", ".join(r["sites"]), str(r["replicas"]), str(r["inflight"]),
                  f"{r['tokens_per_s']:.0f}",
                  "-" if r["weight"] is None else f"{r['weight']:.2f}", r["endpoint"] or "-")
    console.print(t)
    if snap["routing_table"]:
        console.print(f"routing table v{snap['routing_table']['version']} "
                      f"policy={snap['routing_table']['policy']}")
    if snap.get("replica_targets"):
        r = snap["replica_targets"]
        console.print("replica targets: " + (", ".join(f"{m}={n}" for m, n in r["targets"].items())
                                             or "-")
                      + (f" (engines stopped at {', '.join(r['drained'])}: short of power)"
                         if r["drained"] else "")
                      + (f" (parked at low load: {', '.join(r['parked'])})"
                         if r.get("parked") else ""))
