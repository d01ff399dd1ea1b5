"""Layer 2: the fabric's sites (AI factories) — capacity, PUE, nodes, replicas, facility power.

Facility power = IT power (the sum of a site's GPUMonitor readings) × PUE; headroom is the
site's grid budget minus that. Negative headroom is what the scheduler acts on.

One actor on the head, ``Sites`` (``fabric:sites``), holds an ``AIFactory`` per site, and each
AIFactory holds its site's PowerGrid (layer 1, ``fabric.layers.power``): a site's two layers
are read together every time, and one process for every site keeps the fabric's footprint
flat however many sites it has (each Ray worker process costs ~0.008 cores at rest; a
thousand sites were a thousand processes). Every call names its site. The state is kept
current without polling: each grid's next edge is known in advance, and each GPUMonitor is
followed with a long poll that answers only when its reading says something new. The
scheduler follows all sites with one long poll (``watch``) that answers with the sites that
changed: a fabric at rest costs it one call every half minute, and a curtailment or a load
change travels up in one call.

The actor runs on the head, not on the sites' nodes (a site's state outlives its nodes), and
it tends each site's monitors: one on every live node of the site, except nodes the scheduler
handed back (``hand_back``: a parked site's nodes whose engines it stopped). Those hold nothing
of the fabric, so a cluster autoscaler may release them; ``take_back`` (the site unparked, or
an engine starting there) monitors them again, and a node the autoscaler starts for the site
gets its monitor when it joins.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Callable

import ray

from fabric.layers import naming
from fabric.layers.power import PowerGrid
from fabric.layers.watch import FOLLOW_WAIT_S, WatchedMap, follow
from fabric.spec import SiteSpec

MONITORS_EVERY_S = 30.0  # nodes join and leave: the sites' monitors are listed again this often


class ClusterView:
    """The live nodes and the GPU monitors of the cluster, listed at most once a second for all
    sites together (each listing is a GCS round trip). Blocking: called off the event loop."""

    def __init__(self, max_age_s: float = 1.0) -> None:
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._nodes: list[dict] = []
        self._monitors: list[str] = []

    def _fresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._at < self.max_age_s:
                return
            self._nodes = [n for n in ray.nodes() if n["Alive"]]
            self._monitors = sorted(
                a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == naming.NAMESPACE and a["name"].startswith("fabric:gpu:"))
            self._at = time.monotonic()

    def forget(self) -> None:
        """Monitors were started or stopped: the next call lists again."""
        with self._lock:
            self._at = -1e9

    def nodes(self, site: str) -> list[str]:
        """The ids of the live nodes labelled with ``site``."""
        from fabric.spec import SITE_LABEL

        self._fresh()
        return [n["NodeID"] for n in self._nodes
                if (n.get("Labels") or {}).get(SITE_LABEL) == site]

    def monitors(self, site: str) -> list[str]:
        self._fresh()
        prefix = naming.gpu_prefix(site)
        return [m for m in self._monitors if m.startswith(prefix)]


class AIFactory:
    """One site: its grid, its monitors' last readings, and the state composed from them,
    published into the Sites actor's map (``publish``) whenever it changes."""

    def __init__(self, site: SiteSpec, region: str, grid: PowerGrid, view: ClusterView,
                 publish: Callable[[str, dict], bool]):
        self.site, self.region, self.grid, self.view = site, region, grid, view
        self._publish = publish
        self._readings: dict[str, dict] = {}  # monitor name -> its last reading
        self._followers: dict[str, asyncio.Task] = {}  # monitor name -> its follower
        self._handles: dict[str, object] = {}
        self._loop: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None  # the grid's clock moved, or a monitor was lost
        self._relist = True
        self._handed_back: set[str] = set()  # node ids whose capacity the scheduler released
        self._starting: asyncio.Lock | None = None

    async def ensure_running(self) -> None:
        """Read every monitor once, then keep the state current (first call, or after a
        restart of the actor)."""
        if self._loop is not None and not self._loop.done():
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:  # concurrent first callers: one reads, the others wait
            if self._loop is not None and not self._loop.done():
                return
            names = await asyncio.to_thread(self.view.monitors, self.site.name)
            readings = await asyncio.gather(*(self._first_reading(n) for n in names))
            self._readings = {n: r for n, r in zip(names, readings) if r is not None}
            self._compose()
            self._wake = asyncio.Event()
            self._loop = asyncio.get_running_loop().create_task(self._keep_current())

    async def _first_reading(self, name: str) -> dict | None:
        """A monitor's reading, None if it does not answer (its node gone, say): one site's
        lost monitor holds up neither its site nor the others."""
        try:
            return await (await self._handle(name)).reading.remote()
        except Exception:
            self._handles.pop(name, None)
            self._relist = True
            return None

    async def _keep_current(self) -> None:
        """Republish at each of the grid's edges, follow the site's monitors, and list them
        again every ``MONITORS_EVERY_S`` (or at once after one is lost)."""
        listed = -MONITORS_EVERY_S
        loop = asyncio.get_running_loop()
        while True:
            if self._relist or loop.time() - listed >= MONITORS_EVERY_S:
                try:
                    await self._follow_monitors()
                    self._relist, listed = False, loop.time()
                except Exception:  # the GCS busy: try again in a second
                    self._relist = True
            wait = min(self.grid.next_change_in_s(), MONITORS_EVERY_S,
                       1.0 if self._relist else float("inf"))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait + 0.001)
            except asyncio.TimeoutError:
                pass
            self._compose()

    async def _handle(self, name: str):
        """A named actor's handle, looked up once (off the event loop: a GCS call)."""
        if name not in self._handles:
            self._handles[name] = await asyncio.to_thread(ray.get_actor, name,
                                                          namespace=naming.NAMESPACE)
        return self._handles[name]

    def _tend_monitors(self) -> list[str]:
        """A monitor on each live node of the site that is not handed back, none on the others
        (a node handed back holds nothing of the fabric: an autoscaler may release it).
        Returns the monitors' names. Blocking (GCS calls): run off the event loop."""
        from fabric.layers.stack import ensure_monitor

        alive = set(self.view.nodes(self.site.name))
        wanted = {naming.gpu(self.site.name, n): n for n in alive - self._handed_back}
        names = set(self.view.monitors(self.site.name))
        for name in names - set(wanted):  # a node gone or handed back: its monitor goes too
            try:
                ray.kill(ray.get_actor(name, namespace=naming.NAMESPACE), no_restart=True)
            except ValueError:
                pass
        for name in set(wanted) - names:
            ensure_monitor(self.site.model_dump_json(), self.site.name, wanted[name])
        if names != set(wanted):
            self.view.forget()
        self._handed_back &= alive  # a released node that comes back is a new node
        return sorted(wanted)

    async def _follow_monitors(self) -> None:
        names = await asyncio.to_thread(self._tend_monitors)
        for gone in set(self._followers) - set(names):
            self._followers.pop(gone).cancel()
            self._handles.pop(gone, None)
            self._readings.pop(gone, None)
        for name in names:
            task = self._followers.get(name)
            if task is None or task.done():
                handle = await self._handle(name)
                self._followers[name] = asyncio.get_running_loop().create_task(follow(
                    lambda since, wait, h=handle: h.watch.remote(since, wait),
                    lambda reading, name=name: self._on_reading(name, reading),
                    on_error=lambda exc, name=name: self._lost(name)))
        self._compose()

    def _on_reading(self, name: str, reading: dict) -> None:
        self._readings[name] = reading
        self._compose()

    def _lost(self, name: str) -> None:
        """A monitor stopped answering (restarting, or its node gone): leave its reading out
        and list the site's monitors again."""
        if self._readings.pop(name, None) is not None:
            self._compose()
        self._handles.pop(name, None)
        self._relist = True
        if self._wake is not None:
            self._wake.set()

    async def hand_back(self, node_ids: list[str]) -> list[str]:
        """These nodes serve nothing now (their engines were stopped for parking): their
        monitors go, so nothing of the fabric holds them and an autoscaler may release them.
        Their power is no longer counted (as the simulator counts a released node). Returns
        the nodes handed back."""
        await self.ensure_running()
        self._handed_back |= set(node_ids)
        await self._follow_monitors()
        return sorted(self._handed_back)

    async def take_back(self, node_ids: list[str] | None = None) -> list[str]:
        """Monitor these nodes again (all handed-back ones by default): the site is unparked,
        or an engine started on one of them. Returns the nodes still handed back."""
        await self.ensure_running()
        self._handed_back -= set(self._handed_back if node_ids is None else node_ids)
        await self._follow_monitors()
        return sorted(self._handed_back)

    def _compose(self) -> None:
        readings = [self._readings[n] for n in sorted(self._readings)]
        self._publish(self.site.name, site_state(self.site, self.region, self.grid.state(), readings))

    def clock_moved(self) -> None:
        """The grid's replay clock was moved: the state follows at once."""
        if self._loop is not None:
            self._compose()
        if self._wake is not None:
            self._wake.set()  # the next edge moved


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Sites:
    """Every site of the fabric (layers 1 and 2) in one actor; every call names its site."""

    def __init__(self, sites_key: str, speed: float = 1.0, start_s: float = 0.0,
                 t0: float | None = None, lookahead_s: float = 0.0):
        """``sites_key``: where a JSON list of (region, the SiteSpec as JSON) per site, in the
        spec's order, is kept (``blobs``: read again on a restart)."""
        from fabric.layers import blobs

        self._published = WatchedMap()
        view = ClusterView()
        self.factories: dict[str, AIFactory] = {}
        for region, site_json in json.loads(blobs.get(sites_key)):
            site = SiteSpec.model_validate_json(site_json)
            grid = PowerGrid(site, speed, start_s, t0, lookahead_s)
            self.factories[site.name] = AIFactory(site, region, grid, view, self._published.set)

    def where(self) -> dict:
        """The node this actor runs on and its labels (placement is checked, not assumed)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "labels": ctx.get_node_labels()}

    def _site(self, site: str) -> AIFactory:
        try:
            return self.factories[site]
        except KeyError:
            raise ValueError(f"unknown site {site!r}; the fabric's sites: "
                             f"{', '.join(self.factories)}") from None

    async def _ensure_running(self) -> None:
        await asyncio.gather(*(f.ensure_running() for f in self.factories.values()))

    # --- layer 2: the sites --------------------------------------------------------------

    @ray.method(enable_task_events=False)  # called often: no task event in the GCS
    async def state(self, site: str) -> dict:
        """The site now, as its grid and its monitors last reported it."""
        self._site(site)
        await self._ensure_running()
        return self._published.values[site]

    async def states(self) -> list[dict]:
        """Every site now, in the spec's order."""
        await self._ensure_running()
        return [self._published.values[name] for name in self.factories]

    @ray.method(enable_task_events=False)  # a long poll per reader: no task event in the GCS
    async def watch(self, since: int | None = None,
                    wait_s: float = FOLLOW_WAIT_S) -> tuple[int, dict | None]:
        """The sites whose state changed after version ``since`` (every site for a new
        reader), at once if any did, else once one does or ``wait_s`` passes:
        (version, {site: state} or None if none changed)."""
        await self._ensure_running()
        return await self._published.answer(since, wait_s)

    async def hand_back(self, site: str, node_ids: list[str]) -> list[str]:
        """The site's nodes whose engines were stopped for parking: see ``AIFactory.hand_back``."""
        return await self._site(site).hand_back(node_ids)

    async def take_back(self, site: str, node_ids: list[str] | None = None) -> list[str]:
        """Monitor the site's nodes again: see ``AIFactory.take_back``."""
        return await self._site(site).take_back(node_ids)

    # --- layer 1: each site's grid (fabric.layers.power.PowerGrid) -----------------------

    @ray.method(enable_task_events=False)  # called often: no task event in the GCS
    def grid_state(self, site: str) -> dict:
        """The site's grid now (replay time), with the lowest budget scheduled over the look-ahead."""
        return self._site(site).grid.state()

    def state_at(self, site: str, offset_s: float) -> dict:
        """The site's grid at any replay offset, without moving the clock."""
        return self._site(site).grid.state_at(offset_s)

    @ray.method(enable_task_events=False)  # the deferred queue asks often
    def forecast(self, site: str, wall_times: list[float]) -> list[dict]:
        """The site's grid at future wall-clock times."""
        return self._site(site).grid.forecast(wall_times)

    def seek(self, site: str, offset_s: float, speed: float | None = None) -> dict:
        """Move the site's replay clock (``speed`` 0 holds it); its state follows at once."""
        factory = self._site(site)
        state = factory.grid.seek(offset_s, speed)
        factory.clock_moved()
        return state

    def clock_state(self, site: str) -> dict:
        return self._site(site).grid.clock_state()

    def set_clock(self, site: str, speed: float, start_s: float, t0: float) -> dict:
        """Restore a clock saved with ``clock_state``; the site's state follows at once."""
        factory = self._site(site)
        state = factory.grid.set_clock(speed, start_s, t0)
        factory.clock_moved()
        return state

    def event_log(self, site: str, since_offset_s: float | None = None) -> list[dict]:
        """Curtailment events the site's replay passed since ``since_offset_s``."""
        return self._site(site).grid.event_log(since_offset_s)


def site_state(site: SiteSpec, region: str, grid_state: dict, readings: list[dict]) -> dict:
    """A site's state from its grid's and its nodes' latest reports."""
    it_w = sum(r["power_w"] for r in readings)
    facility_w = it_w * site.pue
    sources = sorted({r["source"] for r in readings})
    return {
        "site": site.name, "region": region,
        "capacity_mw": site.capacity_mw, "pue": site.pue,
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
