"""Layer 6: the central scheduler actor (named, detached, restartable).

It follows the Sites actor (an AIFactory per site, holding the site's PowerGrid and reading its
GPUMonitors) with one long poll that answers with the sites that changed, so each site's latest
state is at hand without asking; each
tick it builds a signal snapshot from those states, asks the configured policy (pure code in
``fabric.scheduling``) for a routing table, hands a changed table to the request routers
(whose long polls it answers then), and acts back on the sites: a site shed for lack of power headroom gets its GPU
power limits lowered to fit its budget, and restored when it is readmitted; a site short of
power for ``scheduler.drain_after_s`` has its engines stopped (each model's replica target
lowered within its min/max through Serve's external-scaler API) and restarted when its power is
back. With ``scheduler.params.park`` (or ``configure(park=True)`` at run time) capacity the
policy parks at low load has its engines stopped the same way and started again when the
policy unparks it — under demand, or at once when a request only that site may serve arrives
(``wake``, from the routers). Table versions are wall-clock milliseconds, so a restarted
scheduler's tables still supersede the ones routers hold.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import ray

from fabric.layers import naming
from fabric import internals
from fabric.layers.distribution import model_app_name
from fabric.layers.naming import NAMESPACE, SCHEDULER as SCHEDULER_NAME  # noqa: F401
from fabric.scheduling.policies import make_policy
from fabric.scheduling.replicas import ModelReplicas, ReplicaPlan, ReplicaPlanner
from fabric.scheduling.capacity import power_cap_w
from fabric.scheduling.counterfactual import counterfactuals
from fabric.scheduling.signals import Snapshot, site_signals
from fabric.scheduling.table import RoutingTable
from fabric.spec import ROLE_LABEL, FabricSpec


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Scheduler:
    def __init__(self, spec_key: str):
        """``spec_key``: where the spec's JSON is kept (``blobs``), read again on a restart."""
        from fabric.layers import blobs

        self._spec = FabricSpec.model_validate_json(blobs.get(spec_key))
        # Parking stops engines (a cold start of tens of seconds to come back): live, it is
        # the spec's choice (scheduler.params.park), off unless asked; the simulator parks.
        live = {} if "park" in self._spec.scheduler.params else {"park": False}
        self._policy = make_policy(self._spec.scheduler.policy,
                                   **self._spec.scheduler.policy_kwargs(**live))
        self._edge = {s.name: r.edge for r in self._spec.regions for s in r.sites}
        self._latency = {s.name: r.latency_class for r in self._spec.regions for s in r.sites}
        self._sites = {s.name: s for _, s in self._spec.sites}
        from fabric.sim.fleet import site_figures  # the GPUs' power and J/token, as simulated
        self._figures = {s.name: site_figures(self._spec, s) for _, s in self._spec.sites}
        self._max_inflight = max(int(m.engine_kwargs.get("max_num_seqs", 64))
                                 for m in self._spec.models)
        self._table = RoutingTable()
        self._changed_at = 0  # the version at which what routers use last changed
        from fabric.layers.watch import Watched
        self._routing = Watched()  # bumped whenever _changed_at moves (routers' long polls)
        self._snapshot: Snapshot | None = None
        self._capped: set[str] = set()
        self._calls: set[asyncio.Task] = set()  # capacity calls in flight beside the tick
        self._actions: list[dict] = []
        self._ticks = 0
        self._loop_task = None
        self._states: list[dict] = []
        from fabric.metrics import SiteMetrics
        self._metrics = SiteMetrics()
        self._planner = ReplicaPlanner(
            [ModelReplicas(m.id, tuple(s.name for _, s in self._spec.hosting_sites(m)),
                           m.replicas_per_site, m.min_replicas, m.max_replicas)
             for m in self._spec.models],
            drain_after_s=self._spec.scheduler.drain_after_s,
            readmit_headroom=float(self._spec.scheduler.params.get("readmit_headroom", 0.05)))
        self._targets: dict[str, int] = {}       # model -> replica target Serve holds
        self._apps = {m.id: model_app_name(self._spec, m) for m in self._spec.models}
        self._groups = {s.name: m.id for m in reversed(self._spec.models)   # site -> its model
                        for _, s in self._spec.hosting_sites(m)}
        self._scaling: dict[str, asyncio.Task] = {}
        self._scale_retry_at: dict[str, float] = {}
        self._follower: asyncio.Task | None = None  # follows the Sites actor
        self._site_states: dict[str, dict] = {}  # site -> what its AIFactory last said
        self._site_changed = asyncio.Event()
        self._history: deque = deque(maxlen=600)  # (tick, version, weights): the last minutes
        self._per_site = {s.name: m.replicas_per_site for m in reversed(self._spec.models)
                          for _, s in self._spec.hosting_sites(m)}
        # sites whose engines were stopped for parking -> the replicas stopped there (their
        # last load reports linger at the GPU monitor for a few seconds: not a fresh engine)
        self._released: dict[str, set[str]] = {}

    async def _tick_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception as exc:  # a bad tick keeps the last table: fail-static
                self._log({"action": "tick_failed", "error": str(exc)})
            await asyncio.sleep(max(0.0, self._spec.scheduler.tick_s - (time.monotonic() - started)))

    def _follow_sites(self) -> None:
        """Follow the Sites actor (one long poll answering with the sites that changed): the
        tick reads what they last said, so a site at rest costs nothing per tick. While the
        actor does not answer (restarting) the ticks keep its last word on every site
        (fail-static, as the routers keep the last table): dropping the sites would route
        nothing for that time."""
        if self._follower is None or self._follower.done():
            self._follower = asyncio.get_running_loop().create_task(self._follow_all())

    async def _follow_all(self) -> None:
        from fabric.layers.watch import follow

        sites = await asyncio.to_thread(ray.get_actor, naming.SITES, namespace=NAMESPACE)

        def apply(states: dict) -> None:
            self._site_states.update((k, v) for k, v in states.items() if k in self._sites)
            self._site_changed.set()

        await follow(lambda since, wait: sites.watch.remote(since, wait), apply)

    async def _snapshot_now(self) -> Snapshot:
        if self._follower is None:  # first tick: wait for every site's first answer
            self._follow_sites()
            deadline = time.monotonic() + max(2.0, self._spec.scheduler.tick_s * 4)
            while len(self._site_states) < len(self._sites) and time.monotonic() < deadline:
                self._site_changed.clear()
                try:
                    await asyncio.wait_for(self._site_changed.wait(), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    break
        else:
            self._follow_sites()  # restart the follower if it ended (it should not)
        self._states = [self._site_states[name] for name in self._sites if name in self._site_states]
        sites = [site_signals(st, self._edge[st["site"]], self._max_inflight,
                              self._latency[st["site"]], self._figures[st["site"]])
                 for st in self._states]
        for s in sites:  # parked capacity: released (or booting), with what it has when up
            s.replicas_max = self._per_site.get(s.name, 0)
            stopped = self._released.get(s.name)
            if stopped is None:
                continue
            if any(e.healthy and e.replica not in stopped for e in s.engines):
                del self._released[s.name]  # an engine started again serves
            else:  # released (or booting): what it has when up, no engine of its own now
                s.parked, s.replicas, s.engines = True, self._per_site.get(s.name, 1), []
                s.model = self._groups.get(s.name, "")
        return Snapshot(sites=sites, tick=self._ticks)

    async def tick(self) -> dict:
        self._snapshot = await self._snapshot_now()
        version = max(int(time.time() * 1000), self._table.version + 1)
        before = set(getattr(self._policy, "shed", ()))
        parked_before = set(self._table.parked)
        routed_before = self._table.routing_key()
        self._table = self._policy.table(self._snapshot, version)
        self._table.counterfactual = counterfactuals(self._snapshot)
        if self._table.routing_key() != routed_before:
            self._routing_changed(version)
        self._ticks += 1
        self._history.append({"tick": self._ticks, "version": version,
                              "weights": dict(self._table.weights)})
        self._log_power_shifts(before, set(getattr(self._policy, "shed", ())))
        for site in sorted(parked_before ^ set(self._table.parked)):
            self._log({"action": "park" if site in self._table.parked else "unpark",
                       "site": site, "tick": self._ticks, "reason": "demand"})
            if site not in self._table.parked:
                self._capacity_call(site, "take_back", None)
        self._metrics.observe(self._states, self._table.weights, self._table.version, self._groups)
        await self._act_on_power(self._snapshot)
        if self._spec.scheduler.scale_replicas:
            self._act_on_replicas(self._snapshot)
        return self._table.model_dump()

    def _log_power_shifts(self, before: set[str], after: set[str]) -> None:
        """Log each site the policy sheds for power (or readmits) this tick, with the tick."""
        for site in sorted(before ^ after):
            signals = next((s for s in self._snapshot.sites if s.name == site), None)
            self._log({"action": "shed" if site in after else "readmit", "site": site,
                       "tick": self._ticks, "curtailed": bool(signals and signals.curtailed),
                       "headroom_w": round(signals.headroom_w, 1) if signals else None})

    async def _act_on_power(self, snap: Snapshot) -> None:
        """Cap GPU power at sites shed for negative headroom; restore when they come back
        (readmitted by the policy's power gate; for a policy without one, once it weights the
        site again)."""
        policy_shed = getattr(self._policy, "shed", None)
        shed = {s.name for s in snap.sites if s.headroom_w < 0 or (
            s.name in policy_shed if policy_shed is not None else
            s.name in self._capped and self._table.weights.get(s.name, 0) == 0)}
        for name in shed - self._capped:
            await self._set_caps(name, snap.site(name).budget_w)
            self._capped.add(name)
        for name in self._capped - shed:
            await self._set_caps(name, None)
            self._capped.discard(name)

    async def _set_caps(self, site_name: str, budget_w: float | None) -> None:
        site = self._sites[site_name]
        pool = site.node_pools[0]
        prefix = naming.gpu_prefix(site_name)
        monitors = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["namespace"] == NAMESPACE and a["name"].startswith(prefix)]
        gpus = pool.gpus_per_node * max(1, len(monitors))
        watts = pool.tdp_w if budget_w is None else power_cap_w(budget_w, site.pue, gpus,
                                                                pool.idle_w, pool.tdp_w)
        results = []
        for name in monitors:
            mon = ray.get_actor(name, namespace=NAMESPACE)
            for i in range(pool.gpus_per_node):
                try:
                    results.append(await mon.set_power_limit.remote(i, watts))
                except Exception as exc:
                    results.append({"index": i, "applied": False, "error": str(exc)})
        self._log({"site": site_name,
                   "action": "restore_power_limit" if budget_w is None else "cap_power",
                   "watts_per_gpu": round(watts, 1),
                   "applied": sum(bool(r.get("applied")) for r in results),
                   "gpus": len(results)})

    def _act_on_replicas(self, snap: Snapshot) -> None:
        """Start a rescale for each model whose planned target differs from Serve's (one at a
        time per model; it runs beside the tick loop, never inside it)."""
        now = time.time()
        for model, plan in self._planner.plan(snap, now, frozenset(self._table.parked),
                                              self._table.keep_engines).items():
            task = self._scaling.get(model)
            if (task and not task.done()) or plan.target == self._targets.get(model) \
                    or now < self._scale_retry_at.get(model, 0.0):
                continue
            self._scaling[model] = asyncio.get_running_loop().create_task(
                self._rescale(model, plan))

    async def _rescale(self, model: str, plan: ReplicaPlan) -> None:
        try:
            app = self._apps[model]
            found = await self._deployment(app, model)
            if found is None:  # Serve or the model's app not deployed yet
                self._scale_retry_at[model] = time.time() + 2.0
                return
            name, details = found
            current = details.get("target_num_replicas", 0)
            if model not in self._targets:  # first look since (re)start: Serve's target stands
                self._targets[model] = current
                if current < plan.target:  # drained before a restart: keep those sites drained
                    serving = {s.name for s in self._snapshot.sites
                               if any(e.model == model for e in s.engines)}
                    self._planner.drained.update(
                        s for s in self._planner.short_since if s not in serving)
                    return
            if plan.target == current:
                self._targets[model] = current
                return
            target, stopped = plan.target, []
            if target < current:
                stopped = await self._stop_engines(model, plan.stop_sites, current - target,
                                                   details)
                if not stopped:
                    return  # none idle (or none reporting) yet: try again next tick
                target = current - len(stopped)  # never let Serve choose what else to stop
            await internals.serve_controller().update_deployment_replicas.remote(
                internals.deployment_id(name, app), target)
            self._targets[model] = target
            for site, replica in stopped:
                if site in self._table.parked:
                    self._released.setdefault(site, set()).add(replica)
            for site in {site for site, _ in stopped if site in self._table.parked}:
                self._capacity_call(site, "hand_back", self._idle_nodes(site))
            self._log({"action": "scale_replicas", "model": model, "from": current,
                       "to": target, "stopped_at": [site for site, _ in stopped],
                       "drained_sites": sorted(self._planner.drained)})
        except Exception as exc:  # Serve busy or not scalable: say so, retry later
            self._scale_retry_at[model] = time.time() + 10.0
            self._log({"action": "scale_failed", "model": model, "to": plan.target,
                       "error": f"{type(exc).__name__}: {exc}"})

    async def _deployment(self, app: str, model: str) -> tuple[str, dict] | None:
        """The model's engine deployment as Serve holds it: (name, details), None if absent."""
        try:
            controller = internals.serve_controller()
        except ValueError:
            return None
        details = await controller.get_serve_instance_details.remote()
        deployments = details.get("applications", {}).get(app, {}).get("deployments", {})
        name = next((n for n in deployments if n == model or n.endswith(":" + model)), None)
        return None if name is None else (name, deployments[name])

    async def _stop_engines(self, model: str, sites: tuple[str, ...], count: int,
                            details: dict) -> list[tuple[str, str]]:
        """Stop up to ``count`` of this model's engines at ``sites`` (in that order) that are
        idle — their site has taken no new traffic for drain_after_s; requests still running
        finish first — then wait until Serve has seen them go, so that the lower target
        removes nothing else (Serve stops replicas that are not running before any running
        one). Returns the (site, replica) pairs stopped."""
        def idle(snap: Snapshot) -> list[tuple[str, str]]:
            found = {s.name: s for s in snap.sites}
            return [(name, e.replica) for name in sites if name in found
                    for e in found[name].engines if e.model == model and not e.inflight]

        first = idle(self._snapshot)
        if not first:
            return []
        await asyncio.sleep(max(2.0, 4 * self._spec.scheduler.tick_s))  # usage records flushed
        still = set(idle(self._snapshot))
        running = {r["replica_id"]: r for r in details.get("replicas", [])
                   if r.get("state") == "RUNNING"}
        chosen = [(site, rid) for site, rid in first if (site, rid) in still and rid in running]
        chosen = chosen[:count]
        for _, rid in chosen:
            internals.kill_replica(running[rid]["actor_name"])
        ids = {rid for _, rid in chosen}
        deadline = time.monotonic() + 90.0
        while ids:
            await asyncio.sleep(0.5)
            _, now = await self._deployment(self._apps[model], model) or (None, {})
            if not any(r["replica_id"] in ids and r.get("state") == "RUNNING"
                       for r in now.get("replicas", [])):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Serve still lists stopped engines {sorted(ids)} as running")
        return chosen

    def _idle_nodes(self, site: str) -> list[str]:
        """The site's nodes none of whose engines serve (all stopped for parking, or none)."""
        stopped = self._released.get(site, set())
        return [r["node_id"] for r in self._site_states.get(site, {}).get("node_readings", [])
                if all(e["replica"] in stopped or not e["healthy"] for e in r.get("engines", []))]

    def _capacity_call(self, site: str, method: str, nodes: list[str] | None) -> None:
        """Hand a parked site's idle nodes back (their monitors go: nothing of the fabric holds
        them, so an autoscaler may release them), or take them back when it is unparked;
        beside the tick, logged."""
        async def call() -> None:
            try:
                sites = await asyncio.to_thread(ray.get_actor, naming.SITES, namespace=NAMESPACE)
                left = await getattr(sites, method).remote(site, nodes)
                self._log({"action": method, "site": site, "nodes": nodes,
                           "handed_back": left, "tick": self._ticks})
            except Exception as exc:
                self._log({"action": f"{method}_failed", "site": site,
                           "error": f"{type(exc).__name__}: {exc}"})

        if method == "take_back" or nodes:
            task = asyncio.get_running_loop().create_task(call())
            self._calls.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._calls.discard)

    def _log(self, action: dict) -> None:
        self._actions.append({"at": time.time(), **action})
        self._actions = self._actions[-200:]

    @ray.method(enable_task_events=False)  # a long poll per router: no task event in the GCS
    async def routing_table(self, since: int | None = None, wait_s: float = 0.0) -> dict | None:
        """The current table; None if what a router uses has not changed since the version
        it holds (``since``). With ``wait_s`` it is a long poll: the answer waits until what
        routers use changes (or ``wait_s`` passes), so routers hear of a new table at once and
        send nothing while the table stands."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._tick_forever())
        if self._table.version == 0:
            await self.tick()
        if since is not None and since >= self._changed_at and wait_s > 0:
            await self._routing.wait(self._routing.version, wait_s)
        if since is not None and since >= self._changed_at:
            return None
        return self._table.model_dump()

    def _routing_changed(self, version: int) -> None:
        self._changed_at = version
        self._routing.bump()  # wakes the routers' long polls

    async def wake(self, site: str) -> bool:
        """A request only ``site`` may serve has come while it is parked: unpark it now (its
        engines start; the request itself is answered 503 with Retry-After meanwhile)."""
        unpark = getattr(self._policy, "unpark", None)
        if unpark is None or not unpark(site):
            return False
        self._table.parked = [s for s in self._table.parked if s != site]
        self._table.version += 1  # a new table: routers waiting for one get it now
        self._routing_changed(self._table.version)
        self._log({"action": "unpark", "site": site, "tick": self._ticks, "reason": "request"})
        self._capacity_call(site, "take_back", None)
        if self._snapshot is not None and self._spec.scheduler.scale_replicas:
            self._act_on_replicas(self._snapshot)
        return True

    async def configure(self, **params) -> dict:
        """Change the policy's parameters at run time (e.g. ``park=True``), validated as at
        load. Returns the previous values, to restore them."""
        configure = getattr(self._policy, "configure", None)
        if configure is None:
            raise ValueError(f"policy {self._policy.name!r} has no run-time parameters")
        before = configure(**params)
        self._log({"action": "configure", "params": params})
        return before

    async def table_history(self, since_tick: int = 0) -> list[dict]:
        """The tables of the last minutes (every tick's weights), oldest first."""
        return [h for h in self._history if h["tick"] > since_tick]

    async def status(self) -> dict:
        return {"ticks": self._ticks, "policy": self._policy.name,
                "replica_targets": dict(self._targets),
                "drained_sites": sorted(self._planner.drained),
                "parked_sites": list(self._table.parked),
                "released_sites": sorted(self._released),
                "capped_sites": sorted(self._capped),
                "shed_sites": sorted(getattr(self._policy, "shed", ())),
                "ramping_sites": sorted(k for k, v in getattr(self._policy, "ramp", {}).items()
                                        if v < 1.0),
                "table": self._table.model_dump(), "actions": self._actions[-20:],
                "snapshot": self._snapshot.model_dump() if self._snapshot else None}


def start_scheduler(spec: FabricSpec):
    """Create the scheduler (or return the running one), pinned to the head node."""
    from fabric.layers import blobs

    actor = Scheduler.options(
        name=SCHEDULER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        label_selector={ROLE_LABEL: "head"},
    ).remote(blobs.put(spec.model_dump_json()))
    ray.get(actor.routing_table.remote())  # starts the tick loop; fails loudly if unplaceable
    return actor
