"""Layer 2: one AIFactory actor per site — capacity, PUE, nodes, replicas, facility power.

Facility power = IT power (the sum of the site's GPUMonitor readings) × PUE; headroom is
the site's grid budget minus that. Negative headroom is what the scheduler acts on.

The actor also holds the site's PowerGrid (layer 1, ``fabric.layers.power``) and serves its
methods: the two layers of a site are read together every time, so they share a process
(``naming.power(site) == naming.aidc(site)``). The site's state is kept current without
polling: the grid's next edge is known in advance, and each GPUMonitor is followed with a long
poll that answers only when its reading says something new. The scheduler follows the site
the same way (``watch``): a site at rest costs one call per reader every half minute, and a
curtailment or a load change travels up in one call.

It runs on the head, not on the site's nodes, and it tends the site's monitors: one on every
live node of the site, except nodes the scheduler handed back (``hand_back``: a parked site's
nodes whose engines it stopped). Those hold nothing of the fabric, so a cluster autoscaler may
release them; ``take_back`` (the site unparked, or an engine starting there) monitors them
again, and a node the autoscaler starts for the site gets its monitor when it joins.
"""

from __future__ import annotations

import asyncio

import ray

from fabric.layers import naming
from fabric.layers.power import PowerGrid
from fabric.layers.watch import FOLLOW_WAIT_S, Watched, follow
from fabric.spec import SiteSpec

MONITORS_EVERY_S = 30.0  # nodes join and leave: the site's monitors are listed again this often


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class AIFactory:
    def __init__(self, site_json: str, region: str, speed: float = 1.0, start_s: float = 0.0,
                 t0: float | None = None, lookahead_s: float = 0.0):
        self.site = SiteSpec.model_validate_json(site_json)
        self.region = region
        self.grid = PowerGrid(self.site, speed, start_s, t0, lookahead_s)
        self._readings: dict[str, dict] = {}  # monitor name -> its last reading
        self._followers: dict[str, asyncio.Task] = {}  # monitor name -> its follower
        self._handles: dict[str, object] = {}
        self._loop: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None  # the grid's clock moved, or a monitor was lost
        self._relist = True
        self._handed_back: set[str] = set()  # node ids whose capacity the scheduler released
        self._starting: asyncio.Lock | None = None
        self._published = Watched()

    def where(self) -> dict:
        """The node this actor runs on and its labels (placement is checked, not assumed)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "labels": ctx.get_node_labels()}

    # --- layer 2: the site -------------------------------------------------------------

    @ray.method(enable_task_events=False)  # called often: no task event in the GCS
    async def state(self) -> dict:
        """The site now, as its grid and its monitors last reported it."""
        await self._ensure_running()
        return self._published.value

    @ray.method(enable_task_events=False)  # a long poll per reader: no task event in the GCS
    async def watch(self, since: int | None = None,
                    wait_s: float = FOLLOW_WAIT_S) -> tuple[int, dict | None]:
        """The site's state once it differs from version ``since`` (at once if it already
        does): (version, state or None if unchanged)."""
        await self._ensure_running()
        return await self._published.answer(since, wait_s)

    async def _ensure_running(self) -> None:
        """Read every monitor once, then keep the state current (first call, or after a
        restart of this actor)."""
        if self._loop is not None and not self._loop.done():
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:  # concurrent first callers: one reads, the others wait
            if self._loop is not None and not self._loop.done():
                return
            names = await asyncio.to_thread(self._monitor_names)
            monitors = [await self._handle(n) for n in names]
            readings = await asyncio.gather(*(m.reading.remote() for m in monitors))
            self._readings = dict(zip(names, readings))
            self._compose()
            self._wake = asyncio.Event()
            self._loop = asyncio.get_running_loop().create_task(self._keep_current())

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

    def _monitor_names(self) -> list[str]:
        """The site's GPUMonitors (listing named actors is a GCS round trip: done seldom)."""
        prefix = naming.gpu_prefix(self.site.name)
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["namespace"] == naming.NAMESPACE and a["name"].startswith(prefix))

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
        from fabric.layers.stack import ensure_monitor, site_nodes

        alive = set(site_nodes(self.site.name))
        wanted = {naming.gpu(self.site.name, n): n for n in alive - self._handed_back}
        names = set(self._monitor_names())
        for name in names - set(wanted):  # a node gone or handed back: its monitor goes too
            try:
                ray.kill(ray.get_actor(name, namespace=naming.NAMESPACE), no_restart=True)
            except ValueError:
                pass
        for name in set(wanted) - names:
            ensure_monitor(self.site.model_dump_json(), self.site.name, wanted[name])
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

    # --- capacity handed back and taken again (the scheduler parks and unparks sites) ----

    async def hand_back(self, node_ids: list[str]) -> list[str]:
        """These nodes serve nothing now (their engines were stopped for parking): their
        monitors go, so nothing of the fabric holds them and an autoscaler may release them.
        Their power is no longer counted (as the simulator counts a released node). Returns
        the nodes handed back."""
        await self._ensure_running()
        self._handed_back |= set(node_ids)
        await self._follow_monitors()
        return sorted(self._handed_back)

    async def take_back(self, node_ids: list[str] | None = None) -> list[str]:
        """Monitor these nodes again (all handed-back ones by default): the site is unparked,
        or an engine started on one of them. Returns the nodes still handed back."""
        await self._ensure_running()
        self._handed_back -= set(self._handed_back if node_ids is None else node_ids)
        await self._follow_monitors()
        return sorted(self._handed_back)

    def _compose(self) -> None:
        readings = [self._readings[n] for n in sorted(self._readings)]
        self._published.set(site_state(self.site, self.region, self.grid.state(), readings))

    # --- layer 1: the site's grid (fabric.layers.power.PowerGrid) -----------------------

    @ray.method(enable_task_events=False)  # called often: no task event in the GCS
    def grid_state(self) -> dict:
        """The grid now (replay time), with the lowest budget scheduled over the look-ahead."""
        return self.grid.state()

    def state_at(self, offset_s: float) -> dict:
        """The grid at any replay offset, without moving the clock."""
        return self.grid.state_at(offset_s)

    @ray.method(enable_task_events=False)  # the deferred queue asks often
    def forecast(self, wall_times: list[float]) -> list[dict]:
        """The grid at future wall-clock times."""
        return self.grid.forecast(wall_times)

    def seek(self, offset_s: float, speed: float | None = None) -> dict:
        """Move the replay clock (``speed`` 0 holds it); the site's state follows at once."""
        state = self.grid.seek(offset_s, speed)
        self._clock_moved()
        return state

    def clock_state(self) -> dict:
        return self.grid.clock_state()

    def set_clock(self, speed: float, start_s: float, t0: float) -> dict:
        """Restore a clock saved with ``clock_state``; the site's state follows at once."""
        state = self.grid.set_clock(speed, start_s, t0)
        self._clock_moved()
        return state

    def event_log(self, since_offset_s: float | None = None) -> list[dict]:
        """Curtailment events the replay passed since ``since_offset_s``."""
        return self.grid.event_log(since_offset_s)

    def _clock_moved(self) -> None:
        if self._loop is not None:
            self._compose()
        if self._wake is not None:
            self._wake.set()  # the next edge moved


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
