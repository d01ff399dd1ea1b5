"""Run a workload as agent swarms inside the Ray cluster: spread AgentSwarm actors over the
nodes, give each a share of the agents, show live progress, and always take the actors down
again — at the end, on a duration, on Ctrl-C or on a caller's stop event."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from fabric.agents.agent import Endpoint
from fabric.agents.report import SwarmReport, build_report
from fabric.agents.swarm import _actor_class
from fabric.agents.workload import Workload, load_workload


def endpoint_model(base_url: str, api_key: str) -> str:
    """The first model the endpoint serves (``GET /models``), for workloads that name none."""
    req = urllib.request.Request(f"{base_url}/models", headers={"authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())["data"]
    except Exception as exc:
        raise RuntimeError(f"cannot list the models of {base_url} ({exc}); is the fabric up?") from None
    if not data:
        raise RuntimeError(f"{base_url} serves no model")
    return data[0]["id"]


def _usage_rows(run_id: str, expected: int, timeout_s: float = 20.0) -> list[dict] | None:
    """This run's usage records from the fabric's ledger, or None where nothing meters."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import ray

    from fabric.layers import naming
    from fabric.metering.ledger import LEDGER_NAME

    try:
        ledger = ray.get_actor(LEDGER_NAME, namespace=naming.NAMESPACE)
        root = ray.get(ledger.info.remote(), timeout=10)["root"]
    except Exception:
        return None
    deadline, rows = time.monotonic() + timeout_s, []
    while True:  # engines ship records in the background: wait until this run's are all in
        ray.get(ledger.flush.remote(), timeout=30)
        usage = Path(root) / "usage"
        if any(usage.glob("date=*/*.parquet")):  # read only this run's rows, not the whole ledger
            rows = ds.dataset(usage, format="parquet", partitioning="hive").to_table(
                columns=["request_id", "prompt_tokens", "completion_tokens", "billed_usd",
                         "energy_j", "carbon_g"],
                filter=pc.starts_with(ds.field("agent_id"), f"{run_id}/")).to_pylist()
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def run(workload: Workload | str | Path, agents: int = 16, duration_s: float | None = None,
        base_url: str = "http://127.0.0.1:8000/v1", api_key: str = "fabric-local",
        swarms: int | None = None, seed: int = 0, console=None, progress: bool = True,
        stop: threading.Event | None = None, connections: int = 0,
        meter: bool = True) -> SwarmReport:
    """Run ``agents`` agents of ``workload`` as swarms in the connected Ray cluster.

    ``duration_s`` ends the run (agents finish their current step); ``stop`` ends it at once
    (agents are cancelled mid-step, their requests closed). The swarm actors are killed in
    every case. ``base_url`` is seen from inside the cluster: each node runs the fabric's
    proxy, so the loopback default reaches the node-local one."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("not connected to a Ray cluster: call fabric.cluster.connect(address) "
                           "or start one with `fabric up`")
    wl = workload if isinstance(workload, Workload) else load_workload(workload)
    if agents < 1:
        raise ValueError("agents must be >= 1")
    if wl.tasks_per_agent is None and not duration_s:
        raise ValueError(f"workload {wl.name!r} runs tasks until the duration ends: give a duration")
    import random

    endpoint = Endpoint(base_url.rstrip("/"), api_key, wl.model or endpoint_model(base_url, api_key))
    nodes = [n for n in ray.nodes() if n["Alive"]]
    n_swarms = max(1, min(swarms or len(nodes), agents))
    run_id = f"swarm-{uuid.uuid4().hex[:8]}"
    offsets = wl.arrival.start_offsets(agents, random.Random(f"{seed}/arrival"))
    AgentSwarm = _actor_class()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_ids = sorted(n["NodeID"] for n in nodes)  # one swarm per node, round-robin
    actors = [AgentSwarm.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_ids[k % len(node_ids)], soft=False),
        name=f"fabric:swarm:{run_id}:{k}", namespace="fabric").remote() for k in range(n_swarms)]
    stopped_early, t0 = False, time.monotonic()
    try:
        ray.get([a.start.remote(wl, list(range(k, agents, n_swarms)), offsets[k::n_swarms],
                                endpoint, duration_s, seed, run_id, connections)
                 for k, a in enumerate(actors)], timeout=120)
        stopped_early = _watch(actors, wl, agents, duration_s, stop, console, progress)
        if stopped_early:
            ray.get([a.stop.remote() for a in actors], timeout=60)
        results = ray.get([a.results.remote() for a in actors], timeout=120)
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
    wall = time.monotonic() - t0
    steps = [s for st, _ in results for s in st]
    usage = [u for _, u in results]
    rows = None
    if meter:
        sent = sum(1 for s in steps if s.status)  # every answered request has a record
        rows = _usage_rows(run_id, sent)
    return build_report(run_id, wl.name, agents, sorted(steps, key=lambda s: (s.agent, s.task, s.depth, s.started_s)),
                        sum(u["tasks"] for u in usage), wall,
                        [{k: u[k] for k in ("pid", "node_id", "cpu_cores", "cpu_s", "rss_mib")} for u in usage],
                        rows, stopped_early)


def _watch(actors, wl: Workload, agents: int, duration_s: float | None,
           stop: threading.Event | None, console, show: bool) -> bool:
    """Poll the swarms until they finish; True when the run was cut short (duration passed
    with steps still running, Ctrl-C, or ``stop``)."""
    import ray
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    total = agents * wl.tasks_per_agent if wl.tasks_per_agent else None
    grace_s = 30.0  # after the duration, running steps get this long to finish
    t0 = time.monotonic()
    with Progress(TextColumn("[bold]swarm[/]"), BarColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, disable=not show, transient=False) as bar:
        task = bar.add_task("", total=total or duration_s)
        try:
            while True:
                if stop is not None and stop.wait(0.5):
                    return True
                if stop is None:
                    time.sleep(0.5)
                p = ray.get([a.progress.remote() for a in actors], timeout=60)
                s = {k: sum(x[k] for x in p) for k in ("active", "tasks", "ok", "refused",
                                                       "errors", "tokens_out")}
                bar.update(task, completed=s["tasks"] if total else min(duration_s, time.monotonic() - t0),
                           description=f"{s['active']} agents active, {s['tasks']} tasks, {s['ok']} steps ok, "
                                       f"{s['refused']} refused, {s['errors']} errors, {s['tokens_out']:,} tokens out")
                if all(x["done"] for x in p):
                    return False
                if duration_s and time.monotonic() - t0 > duration_s + grace_s:
                    return True
        except KeyboardInterrupt:
            return True
