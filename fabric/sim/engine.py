"""The simulation loop: scheduler ticks over a fleet of fluid queues.

Time advances in scheduler ticks of ``tick_s``. Each tick, as the live scheduler actor does:

1. **Signals.** Every site's grid state (budget, price, carbon, curtailment) comes from
   ``fabric.power.grid.GridModel`` at replay offset ``start_s + t``: re-read every
   ``grid_step_s`` and at every curtailment edge. Facility power, utilisation, tokens/s and
   in-flight requests are those of the previous tick; in flight counts, as an engine does
   (running + waiting), full batches on the share of capacity in use plus the requests
   queued. They become a ``Snapshot`` of ``SiteSignals``, and the configured ``Policy`` (the
   live code) turns it into a ``RoutingTable``.
2. **Routing.** The tick's arrivals are split over the sites the table weights, in
   proportion to the weights, by largest remainder with the fractions carried to the next
   tick (the long-run shares of the router's smooth weighted round-robin), interleaved in
   time. As in ``fabric.routing.pick``: sites at weight 0 get nothing while others have
   weight; if none has, every serving site is equal.
3. **Admission.** A site is a fluid queue of work in *site-seconds* (the time its replicas
   together need at full speed: prefill tokens / site prefill rate + output tokens / site
   decode rate at full batches). Work drains at ``speed`` site-seconds per second, where
   ``speed`` in [0, 1] is the share of the GPUs' dynamic power the site's grid budget allows
   (budget / PUE, capped by ``capacity_mw``, minus idle power): the live scheduler caps GPU
   power to fit the budget, and a capped GPU runs proportionally slower. A request waits for
   the work ahead of it (queued work plus earlier arrivals this tick, less what drained since
   the tick began; idle gaps inside a tick count as drain) beyond what the site's batch slots
   hold at once (replicas × batch × the mean request's work): with continuous batching a
   request starts as soon as a slot frees, it does not wait for the whole decode of the
   requests ahead. Arrivals are admitted in order
   while that wait is at most ``max_wait_s`` (the queue limit); the rest overflow, as the
   router's second rank does, to the other weighted sites in proportion to their free queue
   (``overflow_rounds`` times), and what still finds no room is dropped. Every request ends
   served at exactly one site or dropped, once.
4. **Latency.** TTFT = wait + (fixed time + prompt / one replica's prefill rate + ride) / speed,
   where ride is what a first token waits for on a busy engine: the rest of the step under
   way (half of one, on average) and the step its prefill joins, which also decodes the
   running batch: 1.5 steps at the engine's batch (linear between the profile's one-sequence
   and full-batch steps), times the chance the engine is busy (1 − e^−b, b requests per
   engine at the last tick). Latency = TTFT + output tokens × decode step / speed. The
   decode step is that of a full batch (a conservative time per token). A request meets the SLO if served with TTFT ≤ ``slo_ttft_s``
   (and latency ≤ ``slo_latency_s`` when set).
5. **Power.** Work done this tick sets the utilisation u = done / tick (≤ speed); IT power =
   idle W of every GPU + (TDP − idle) of the serving GPUs × u (the formula of
   ``fabric.gpu.modelled_power_w``); facility power = IT × PUE, which never exceeds the budget
   unless idle power alone does. Energy, cost (× price) and carbon (× intensity) accrue per
   tick. Work, and the energy it takes, is done as the queue drains.

After the last arrival the loop ticks on until every queue is empty (or ``max_drain_s``, for
queues held at a site without power).
Memory is bounded: arrivals stream in chunks, per-request figures go into counters and
log-spaced histograms, and the traffic timeline merges bins as it grows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

import numpy as np
from pydantic import BaseModel, Field, field_validator

from fabric.scheduling.policies import known_policy, make_policy
from fabric.scheduling.scorers import renewable_share
from fabric.scheduling.signals import SiteSignals, Snapshot
from fabric.sim.fleet import Fleet, build_fleet
from fabric.sim.gpus import GpuType, ServingProfile
from fabric.sim.record import Recorder
from fabric.sim.results import (
    HIST_EDGES,
    GroupResult,
    SimResult,
    SiteResult,
    hist_add,
    hist_quantile,
)
from fabric.sim.traces import RequestBatch
from fabric.spec import FabricSpec

J_PER_MWH = 3.6e9


class SimConfig(BaseModel):
    policy: str = "fabric"
    policy_params: dict[str, float | bool] = Field(default_factory=dict)
    tick_s: float = Field(0.5, gt=0, description="scheduler tick (the live default is the spec's)")
    start_s: float = Field(0.0, ge=0, description="replay offset of t = 0 in the power profiles")
    grid_step_s: float = Field(60.0, gt=0, description="how often price and carbon are re-read")
    slo_ttft_s: float = Field(2.0, gt=0)
    slo_latency_s: float | None = Field(None, gt=0)
    max_wait_s: float = Field(10.0, ge=0, description="queue limit, as the longest admitted wait")
    overflow_rounds: int = Field(2, ge=0)
    prefix_cache: bool = Field(False, description="skip prefill of cached prompt tokens")
    model_params_b: float | None = Field(None, gt=0, description="default: from the spec's model")
    gpu_types: dict[str, GpuType] = Field(default_factory=dict, description="extra GPU types")
    profiles: dict[str, ServingProfile] = Field(default_factory=dict,
                                                description="per GPU type, replaces the roofline")
    signals: dict[str, dict[str, float]] = Field(default_factory=dict, description="per site, "
                                                 "signals the policy sees in place of the simulated "
                                                 "ones (e.g. the live scheduler's figures, to replay "
                                                 "its decisions): pue, j_per_token, service_s, ...")
    timeline_bins: int = Field(512, ge=8)
    max_drain_s: float = Field(600.0, ge=0, description="after the last arrival, tick at most this "
                                                          "long for queues to empty")
    cold_start_s: float = Field(180.0, ge=0, description="a parked (released) site's time back "
                                "to serving: a node's boot plus an engine's start")
    scorers: dict[str, float] | None = Field(None, description="default: the spec's")
    scorer_params: dict[str, dict] | None = None

    @field_validator("policy")
    @classmethod
    def _known(cls, name: str) -> str:
        return known_policy(name)

    @field_validator("signals")
    @classmethod
    def _signal_names(cls, signals: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        bad = sorted({k for v in signals.values() for k in v} - set(SiteSignals.model_fields))
        if bad:
            raise ValueError(f"unknown site signals {bad}; known: {sorted(SiteSignals.model_fields)}")
        return signals

    @classmethod
    def from_spec(cls, spec: FabricSpec, **overrides) -> SimConfig:
        """The spec's scheduler (policy, its parameters, tick) and replay start, then overrides."""
        base = {"policy": spec.scheduler.policy, "tick_s": spec.scheduler.tick_s,
                "start_s": spec.power_clock.start_s, "slo_ttft_s": spec.scheduler.slo_ttft_s,
                "scorers": dict(spec.scheduler.scorers),
                "scorer_params": spec.scheduler.policy_kwargs()["scorer_params"]}
        if overrides.get("policy", base["policy"]) == spec.scheduler.policy:
            base["policy_params"] = dict(spec.scheduler.params)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def policy_kwargs(self) -> dict:
        """The policy's arguments: its parameters, with the tick, the SLO, the cold start and
        the scorers the simulation runs under (the live scheduler passes the same)."""
        kw = {"tick_s": self.tick_s, "slo_ttft_s": self.slo_ttft_s,
              "cold_start_s": self.cold_start_s, **self.policy_params}
        if self.scorers is not None:
            kw["scorers"] = self.scorers
        if self.scorer_params is not None:
            kw["scorer_params"] = self.scorer_params
        return kw


class Trace(Protocol):
    tenants: list[str]
    classes: list[str]
    describe: str

    def batches(self) -> Iterator[RequestBatch]: ...


class Timeline:
    """Requests served per site per time bin; adjacent bins merge when there are too many."""

    def __init__(self, sites: int, tick_s: float, max_bins: int):
        self.tick_s, self.ticks_per_bin = tick_s, 1
        self.max_bins = max_bins - max_bins % 2
        self.served = np.zeros((self.max_bins, sites))
        self.bins = 0

    @property
    def bin_s(self) -> float:
        return self.tick_s * self.ticks_per_bin

    def add(self, tick: int, served: np.ndarray) -> None:
        while tick // self.ticks_per_bin >= self.max_bins:
            half = self.served.reshape(self.max_bins // 2, 2, -1).sum(axis=1)
            self.served[:] = 0
            self.served[: self.max_bins // 2] = half
            self.ticks_per_bin *= 2
            self.bins = (self.bins + 1) // 2
        i = tick // self.ticks_per_bin
        self.served[i] += served
        self.bins = max(self.bins, i + 1)

    def shares(self) -> tuple[np.ndarray, np.ndarray]:
        """Bin start times (s) and each site's share of the requests served in each bin."""
        served = self.served[: self.bins]
        total = served.sum(axis=1, keepdims=True)
        return np.arange(self.bins) * self.bin_s, np.divide(served, total, out=np.zeros_like(served),
                                                            where=total > 0)


class _Arrivals:
    """Cuts a stream of batches at tick boundaries, holding at most one chunk ahead."""

    def __init__(self, batches: Iterator[RequestBatch]):
        self._it, self._buf, self._pos = batches, RequestBatch.empty(), 0
        self.done, self.count, self.last_t = False, 0, 0.0

    def take(self, until: float) -> RequestBatch:
        parts = []
        while True:
            buf = self._buf
            cut = self._pos + int(np.searchsorted(buf.t[self._pos:], until, side="left"))
            if cut > self._pos:
                parts.append(buf.slice(self._pos, cut))
            self._pos = cut
            if cut < len(buf) or self.done:
                break
            nxt = next(self._it, None)
            if nxt is None:
                self.done = True
                break
            self._buf, self._pos = nxt, 0
        out = RequestBatch.concat(parts) if parts else RequestBatch.empty()
        self.count += len(out)
        if len(out):
            self.last_t = float(out.t[-1])
        return out

    @property
    def exhausted(self) -> bool:
        return self.done and self._pos >= len(self._buf)


def apportion(n: int, weights: np.ndarray, credit: np.ndarray | None = None) -> np.ndarray:
    """Split n requests over sites by weight: largest remainder. ``credit`` (updated in place)
    carries each site's fractional remainder to the next call, so shares hold over time."""
    act = np.flatnonzero(weights > 0)
    share = n * weights[act] / weights[act].sum()
    if credit is not None:
        carried = credit[act] - credit[act].mean()
        credit[:] = 0.0
        share = share + carried
    counts = np.floor(np.maximum(share, 0.0)).astype(np.int64)
    diff = n - int(counts.sum())
    while diff > 0:  # hand the rest to the largest remainders
        pick = np.argsort(counts - share, kind="stable")[:diff]
        counts[pick] += 1
        diff = n - int(counts.sum())
    while diff < 0:  # carried credit overshot: take back from the smallest remainders
        rest = np.where(counts > 0, share - counts, np.inf)
        pick = np.argsort(rest, kind="stable")[: min(-diff, int((counts > 0).sum()))]
        counts[pick] -= 1
        diff = n - int(counts.sum())
    if credit is not None:
        credit[act] = share - counts
    out = np.zeros(len(weights), np.int64)
    out[act] = counts
    return out


def interleave(counts: np.ndarray) -> np.ndarray:
    """Site index per request, spreading each site's picks evenly over the tick."""
    sites = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(sites)) - starts[sites]
    return sites[np.argsort((rank + 0.5) / counts[sites], kind="stable")]


class Simulator:
    def __init__(self, spec: FabricSpec, config: SimConfig | None = None,
                 record_bins: int | None = None):
        """``record_bins``: also keep the live page's views in that many time bins
        (``self.recorder``)."""
        self.spec = spec
        self.config = config or SimConfig.from_spec(spec)
        self.fleet: Fleet = build_fleet(spec, self.config.model_params_b, self.config.gpu_types,
                                        self.config.profiles)
        self.policy = make_policy(self.config.policy, **self.config.policy_kwargs())
        self.timeline = Timeline(len(self.fleet), self.config.tick_s, self.config.timeline_bins)
        self.recorder = Recorder(self.fleet.names, self.fleet.regions, self.fleet.replicas,
                                 spec.model.id, self.config.tick_s, record_bins) if record_bins else None

    def curtailments(self) -> list[tuple[str, float, float, float]]:
        """(site, start, end, budget fraction) in simulation seconds."""
        start = self.config.start_s
        return [(name, c.start_s - start, c.start_s + c.duration_s - start, c.budget_fraction)
                for name, g in zip(self.fleet.names, self.fleet.grids)
                for c in g.profile.curtailments if c.start_s + c.duration_s > start]

    def run(self, trace: Trace) -> SimResult:
        wall0 = time.perf_counter()
        state = _State(self.fleet, self.config)
        stream = _Arrivals(trace.batches())
        cfg, tick = self.config, self.config.tick_s
        k = 0
        while True:
            t0 = k * tick
            if stream.exhausted and (state.queue.max(initial=0.0) <= 1e-12
                                     or t0 - stream.last_t > cfg.max_drain_s):
                break
            state.refresh_grid(t0)
            weights = self._weights(state, k)
            state.park(t0)
            batch = stream.take(t0 + tick)
            served = state.step(t0, batch, weights, trace)
            self.timeline.add(k, served)
            if self.recorder is not None:
                self.recorder.add(k, self._table, self._snapshot, state.figures)
            k += 1
        return state.result(self.spec.name, self.policy.name, trace, k * tick,
                            time.perf_counter() - wall0)

    def _weights(self, state: _State, k: int) -> np.ndarray:
        f = self.fleet
        service, prefill, throughput = state.service_times()
        frac = state.frac()
        # engines serving (a site with none reports its full count, parked, as live)
        replicas = np.where(state.serving, state.on, f.replicas).astype(np.int64)
        util = np.divide(state.util, frac, out=np.zeros(f.replicas.shape), where=frac > 0)
        sites = [SiteSignals.model_construct(
            name=n, region=r, edge=e, budget_w=b, facility_w=fw, price_usd_per_mwh=p,
            carbon_g_per_kwh=c, curtailed=cu, replicas=rp, inflight=i, utilisation=u,
            tokens_per_s=ts, max_inflight_per_replica=f.batch, latency_class=lc, engines=[],
            pue=pue, idle_w=iw, dynamic_w=dw, j_per_token=jt, service_s=sv, prefill_s=pf,
            parked=pk, requests_per_s=rps, throughput_rps=th, replicas_max=rm,
            budget_ahead_w=ba if ba < b else None, extra={"renewable_share": rs})
            for n, r, e, lc, b, fw, p, c, cu, rp, i, u, ts, pue, iw, dw, jt, sv, pf, pk, rs, rps, th, rm, ba in zip(
                f.names, f.regions, f.edge, f.latency, state.budget.tolist(), state.facility_w.tolist(),
                state.price.tolist(), state.carbon.tolist(), state.curtailed.tolist(),
                replicas.tolist(), state.inflight.tolist(), np.minimum(util, 1).tolist(),
                state.tokens_per_s.tolist(), f.pue.tolist(), f.idle_w.tolist(), f.dynamic_w.tolist(),
                f.j_per_token.tolist(), service.tolist(), prefill.tolist(),
                (~state.serving).tolist(), state.renewable.tolist(),
                (state.routed_now / self.config.tick_s).tolist(),
                (throughput * np.where(state.serving, frac, 1.0)).tolist(), f.replicas.tolist(),
                state.budget_ahead.tolist())]
        for s in sites:
            for key, value in self.config.signals.get(s.name, {}).items():
                setattr(s, key, value)
        snapshot = Snapshot.model_construct(sites=sites, tick=k)
        table = self.policy.table(snapshot, k + 1)
        self._table, self._snapshot = table, snapshot
        w = np.fromiter((table.weights.get(n, 0.0) for n in f.names), float, len(f.names))
        spill = set(table.overflow)
        up = (f.replicas > 0) & state.serving
        state.overflow = np.fromiter((n in spill for n in f.names), bool, len(f.names)) & up
        parked, keep = set(table.parked), table.keep_engines
        state.want_on = np.fromiter((0 if n in parked else min(keep.get(n, r), r)
                                     for n, r in zip(f.names, f.replicas.tolist())), float, len(f.names))
        return np.where(up, w, 0.0)


class _State:
    """Per-site arrays that evolve tick by tick, and the run's counters."""

    def __init__(self, fleet: Fleet, cfg: SimConfig):
        n = len(fleet)
        self.f, self.cfg, self.n = fleet, cfg, n
        zeros = lambda dtype=np.float64: np.zeros(n, dtype)
        self.budget, self.price, self.carbon = zeros(), zeros(), zeros()
        self.overflow = np.zeros(n, bool)  # sites the table lists as overflow only
        self.curtailed = zeros(bool)
        self.queue = zeros()                    # backlog, site-seconds at full speed
        self.util = zeros()
        self.tokens_per_s = zeros()
        self.facility_w = fleet.idle_w * fleet.pue
        self.inflight = zeros(np.int64)
        self.running = zeros()                  # requests in batch slots at the last tick
        self.admitted = zeros()                 # requests and their work, for the mean request
        self.admitted_work = zeros()
        self.credit = zeros()
        self.next_grid = 0.0
        self.edges = sorted((at - cfg.start_s, i) for i, g in enumerate(fleet.grids)  # curtailment
                            for c in g.profile.curtailments               # starts and ends
                            for at in (c.start_s, c.start_s + c.duration_s))
        self.edge_pos = 0
        # the grid's announced curtailments a cold start ahead (the parking plan starts
        # capacity elsewhere in time): edges within the look-ahead, per site
        self.lookahead_s = cfg.cold_start_s + 2 * cfg.tick_s
        self.ahead_pos = 0
        self.coming: dict[int, list[tuple[float, float]]] = {}
        self.budget_ahead = zeros()
        # parking, engine by engine: a released engine draws nothing and serves nothing; one
        # started again boots for cold_start_s (idle power, not serving) before it serves. A
        # site with every engine released draws nothing at all.
        self.on = fleet.replicas.astype(np.float64)   # engines serving
        self.booting = zeros()                        # engines starting, ready at boot_until
        self.boot_until = np.full(n, -1.0)
        self.want_on = self.on.copy()                 # the policy's target
        self.renewable = zeros()
        self.routed_now = zeros()               # requests routed to each site last tick
        self.mean_prompt, self.mean_output = 512.0, 128.0   # of admitted requests, as they come
        self.mean_n = 0
        # counters
        names = ("routed", "served", "kept", "overflow_in", "overflow_out", "dropped", "slo_met",
                 "output_tokens", "busy_s", "curtailed_s", "parked_s", "engines_off_s", "energy_j", "cost_usd",
                 "carbon_g")
        self.site = {k: zeros() for k in names}
        self.arrivals = self.unroutable = 0
        self.ttft_hist = np.zeros(len(HIST_EDGES) - 1, np.int64)
        self.lat_hist = np.zeros(len(HIST_EDGES) - 1, np.int64)
        self.slo_tokens = 0.0
        self.groups = {"tenant": np.zeros((4, 1), np.int64), "klass": np.zeros((4, 1), np.int64)}

    def refresh_grid(self, t0: float) -> None:
        """Re-read the grid state of sites with a curtailment edge since the last tick, or of
        every site each ``grid_step_s`` (the series are hourly: a minute's lag is harmless)."""
        due: list[int] | range = []
        while self.edge_pos < len(self.edges) and self.edges[self.edge_pos][0] <= t0:
            due.append(self.edges[self.edge_pos][1])
            self.edge_pos += 1
        if t0 >= self.next_grid:
            due, self.next_grid = range(self.n), t0 + self.cfg.grid_step_s
        offset = self.cfg.start_s + t0
        for i in due:
            g = self.f.grids[i].state(offset)
            self.budget[i], self.price[i] = g.budget_w, g.price_usd_per_mwh
            self.carbon[i], self.curtailed[i] = max(0.0, g.carbon_g_per_kwh), g.curtailed
            self.renewable[i] = renewable_share(g.source_mix)
        self._look_ahead(t0)

    def _look_ahead(self, t0: float) -> None:
        """Each site's lowest budget over the next ``lookahead_s`` (its own budget where its
        grid schedules no edge in that time)."""
        edges, horizon = self.edges, t0 + self.lookahead_s
        while self.ahead_pos < len(edges) and edges[self.ahead_pos][0] <= horizon:
            at, i = edges[self.ahead_pos]
            self.ahead_pos += 1
            if at > t0:
                grid = self.f.grids[i]
                budget = grid.profile.budget_mw * 1e6 * grid.budget_fraction(self.cfg.start_s + at + 1e-6)
                self.coming.setdefault(i, []).append((at, budget))
        self.budget_ahead = self.budget.copy()
        for i in list(self.coming):
            kept = [(at, b) for at, b in self.coming[i] if at > t0]
            if kept:
                self.coming[i] = kept
                self.budget_ahead[i] = min(self.budget[i], min(b for _, b in kept))
            else:
                del self.coming[i]

    def service_times(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the policy's capacity model, at full speed: a mean request's time in a batch
        slot (prefill, then a decode step per output token), its TTFT with no wait, and the
        requests/s the site's GPUs can do (1 / its work in site-seconds)."""
        f = self.f
        work = (np.divide(self.mean_prompt, f.prefill_tok_s, out=np.ones(self.n), where=f.prefill_tok_s > 0)
                + np.divide(self.mean_output, f.decode_tok_s, out=np.ones(self.n), where=f.decode_tok_s > 0))
        prefill = f.ttft_fixed_s + self.mean_prompt / f.replica_prefill_tok_s
        return prefill + self.mean_output * f.step_s, prefill, 1.0 / np.maximum(work, 1e-9)

    def ride(self) -> np.ndarray:
        """What a first token waits for on a busy engine, at full speed (see Latency above)."""
        f = self.f
        b = np.divide(self.running, self.on, out=np.zeros(self.n), where=self.on > 0)
        step = f.step1_s + (f.step_s - f.step1_s) * np.clip((b - 1) / max(f.batch - 1, 1), 0, 1)
        return (1.0 - np.exp(-b)) * 1.5 * step

    @property
    def serving(self) -> np.ndarray:
        return self.on > 0

    @property
    def released(self) -> np.ndarray:
        """Sites hosting the model with every engine released: they draw nothing."""
        return (self.f.replicas > 0) & (self.on + self.booting <= 0)

    def frac(self) -> np.ndarray:
        """Share of each site's engines serving (1 where it hosts none: nothing to release)."""
        return np.divide(self.on, self.f.replicas, out=np.ones(self.n), where=self.f.replicas > 0)

    def park(self, t0: float) -> None:
        """Move each site's engines toward the policy's target: fewer at once (a site's last
        ones once its queue is empty), more after a cold start."""
        want, on = self.want_on, self.on
        drop = (want < on) & ((want > 0) | (self.queue <= 1e-12))
        on[drop] = want[drop]
        self.booting = np.minimum(self.booting, np.maximum(want - on, 0.0))  # boots called off
        start = want > on + self.booting
        self.boot_until[start & (self.booting <= 0)] = t0 + self.cfg.cold_start_s
        self.booting[start] = want[start] - on[start]
        ready = (self.booting > 0) & (self.boot_until <= t0)
        on[ready] += self.booting[ready]
        self.booting[ready] = 0.0

    def speed(self) -> np.ndarray:
        """Share of full serving speed the power budget allows (the GPU power cap)."""
        f = self.f
        it_w = np.minimum(self.budget / f.pue, f.it_limit_w)
        return np.clip(np.divide(it_w - f.idle_w, f.dynamic_w, out=np.zeros(self.n),
                                 where=f.dynamic_w > 0), 0.0, 1.0)

    def step(self, t0: float, batch: RequestBatch, weights: np.ndarray, trace) -> np.ndarray:
        f, cfg, tick = self.f, self.cfg, self.cfg.tick_s
        speed = self.speed()          # of each engine (its power cap)
        rate = speed * self.frac()    # of the site's serving engines together
        m = len(batch)
        served_now = np.zeros(self.n)
        out_tokens_now = np.zeros(self.n)
        dropped_now = np.zeros(self.n)
        ttft_site, ttft = np.zeros(0, np.int64), np.zeros(0)
        if m:
            self.arrivals += m
            prefill = np.maximum(batch.prompt - batch.cached, 0) if cfg.prefix_cache else batch.prompt
            final = np.full(m, -1, np.int64)
            wait = np.zeros(m)
            present = (f.replicas > 0) & self.serving
            table = weights if weights.sum() > 0 else present.astype(float)
            origin = np.full(m, -1, np.int64)
            if table.sum() > 0:
                origin = interleave(apportion(m, table, self.credit))
                self._admit(np.arange(m), origin, batch, prefill, t0, rate, final, wait)
                for _ in range(self.cfg.overflow_rounds):
                    pending = np.flatnonzero(final < 0)
                    room = np.where((table > 0) | self.overflow, np.maximum(
                        0.0, rate * (cfg.max_wait_s + tick) - self.queue), 0.0)
                    if not len(pending) or room.sum() <= 0:
                        break
                    sites = interleave(apportion(len(pending), room))
                    self._admit(pending, sites, batch, prefill, t0, rate, final, wait)
            ok = final >= 0
            s = final[ok]
            routed = origin >= 0
            self.unroutable += int((~routed).sum())
            ttft = wait[ok] + (f.ttft_fixed_s[s] + prefill[ok] / f.replica_prefill_tok_s[s]
                               + self.ride()[s]) / speed[s]
            latency = ttft + batch.output[ok] * f.step_s[s] / speed[s]
            met = ttft <= cfg.slo_ttft_s
            if cfg.slo_latency_s is not None:
                met &= latency <= cfg.slo_latency_s
            count = lambda idx, w=None: np.bincount(idx, w, minlength=self.n)
            moved = ok & (final != origin)
            site = self.site
            self.routed_now = count(origin[routed]).astype(np.float64)
            site["routed"] += self.routed_now
            served_now = count(s)
            site["served"] += served_now
            site["kept"] += count(origin[ok & ~moved])
            site["overflow_in"] += count(final[moved])
            site["overflow_out"] += count(origin[moved])
            dropped_now = count(origin[routed & ~ok])
            site["dropped"] += dropped_now
            ttft_site = s
            site["slo_met"] += count(s[met])
            out_tokens_now = count(s, batch.output[ok])
            site["output_tokens"] += out_tokens_now
            self.slo_tokens += float(batch.output[ok][met].sum())
            hist_add(self.ttft_hist, ttft)
            hist_add(self.lat_hist, latency)
            self._groups(batch, ok, met, trace)
        if not m:
            self.routed_now = np.zeros(self.n)
        done = np.minimum(self.queue, rate * tick)
        self.queue -= done
        self.util = done / tick
        powered = np.divide(self.on + self.booting, f.replicas, out=np.ones(self.n),
                            where=f.replicas > 0)
        facility_w = (f.idle_w * powered + f.dynamic_w * self.util) * f.pue
        self.facility_w = facility_w
        energy_j = facility_w * tick
        cost_now, carbon_now = energy_j / J_PER_MWH * self.price, energy_j / 3.6e6 * self.carbon
        site = self.site
        site["energy_j"] += energy_j
        site["cost_usd"] += cost_now
        site["carbon_g"] += carbon_now
        site["busy_s"] += done
        site["curtailed_s"] += np.where(self.curtailed, tick, 0.0)
        site["parked_s"] += np.where(self.released, tick, 0.0)
        site["engines_off_s"] += np.where(f.replicas > 0, (1.0 - powered) * tick, 0.0)
        self.tokens_per_s = out_tokens_now / tick
        # In flight, as an engine counts it: the requests in batch slots (Little's law: served
        # per second × time in a slot at this speed), plus those waiting in the queue.
        mean_work = np.divide(self.admitted_work, self.admitted, out=np.ones(self.n), where=self.admitted > 0)
        service, _, _ = self.service_times()
        running = np.minimum(self.on * f.batch, np.divide(
            self.util / mean_work * service, speed, out=np.zeros(self.n), where=speed > 0))
        self.inflight = np.rint(running + self.queue / mean_work).astype(np.int64)
        self.running = running
        self.figures = {"served": served_now, "dropped": dropped_now, "output_tokens": out_tokens_now,
                        "energy_j": energy_j, "cost_usd": cost_now, "carbon_g": carbon_now,
                        "ttft_site": ttft_site, "ttft": ttft, "budget_w": self.budget,
                        "price": self.price, "carbon": self.carbon, "renewable": self.renewable,
                        "curtailed": self.curtailed, "engines_on": self.on}
        return served_now

    def _admit(self, idx, sites, batch, prefill, t0, rate_of, final, wait) -> None:
        """Admit requests ``idx`` (in time order) at ``sites`` while their wait fits the queue."""
        f = self.f
        order = np.argsort(sites, kind="stable")
        i, s = idx[order], sites[order]
        work = prefill[i] / f.prefill_tok_s[s] + batch.output[i] / f.decode_tok_s[s]
        first = np.r_[True, s[1:] != s[:-1]]
        group = np.cumsum(first) - 1
        before = np.cumsum(work) - work
        before -= before[first][group]
        rate = rate_of[s]
        ahead = self.queue[s] + before - rate * (batch.t[i] - t0)
        fits = (rate > 0) & (ahead <= rate * self.cfg.max_wait_s)
        misses = np.cumsum(~fits)
        misses -= (misses - ~fits)[first][group]
        take = fits & (misses == 0)
        final[i[take]] = s[take]
        # Continuous batching: a request starts (its prefill) as soon as a batch slot is free,
        # so it waits only for the work beyond what the site's slots hold at once.
        in_service = (self.on * f.batch * np.divide(self.admitted_work, self.admitted,
                                                       out=np.zeros(self.n), where=self.admitted > 0))[s]
        wait[i[take]] = np.maximum(ahead[take] - in_service[take], 0.0) / rate[take]
        self.queue += np.bincount(s[take], work[take], minlength=self.n)
        k = int(take.sum())
        if k:  # running means of what is served (the policy's service-time model)
            n = min(self.mean_n + k, 100_000)
            self.mean_prompt += (float(prefill[i[take]].mean()) - self.mean_prompt) * k / n
            self.mean_output += (float(batch.output[i[take]].mean()) - self.mean_output) * k / n
            self.mean_n = n
        self.admitted += np.bincount(s[take], minlength=self.n)
        self.admitted_work += np.bincount(s[take], work[take], minlength=self.n)

    def _groups(self, batch: RequestBatch, ok, met, trace) -> None:
        for key, codes, names in (("tenant", batch.tenant, trace.tenants),
                                  ("klass", batch.klass, trace.classes)):
            size = max(len(names), 1)
            acc = self.groups[key]
            if acc.shape[1] < size:
                acc = self.groups[key] = np.pad(acc, ((0, 0), (0, size - acc.shape[1])))
            acc[0] += np.bincount(codes, minlength=size)
            acc[1] += np.bincount(codes[ok], minlength=size)
            acc[2] += np.bincount(codes[~ok], minlength=size)
            acc[3] += np.bincount(codes[ok][met], minlength=size)

    def result(self, spec_name: str, policy: str, trace, duration_s: float, wall_s: float) -> SimResult:
        f, site, cfg = self.f, self.site, self.cfg
        served, slo_met = int(site["served"].sum()), int(site["slo_met"].sum())
        out_tokens = float(site["output_tokens"].sum())
        cost = float(site["cost_usd"].sum())
        per_site = [SiteResult(
            name=f.names[i], region=f.regions[i], gpu_type=f.gpu_types[i], replicas=int(f.replicas[i]),
            **{k: int(site[k][i]) for k in ("routed", "served", "kept", "overflow_in", "overflow_out",
                                            "dropped", "slo_met", "output_tokens")},
            utilisation=round(float(site["busy_s"][i]) / duration_s, 6) if duration_s else 0.0,
            curtailed_s=float(site["curtailed_s"][i]), parked_s=float(site["parked_s"][i]),
            engines_released=round(float(site["engines_off_s"][i]) / duration_s, 6) if duration_s else 0.0,
            energy_mwh=float(site["energy_j"][i]) / J_PER_MWH,
            energy_cost_usd=float(site["cost_usd"][i]), carbon_kg=float(site["carbon_g"][i]) / 1e3)
            for i in range(self.n)]

        def groups(key, names):
            acc = self.groups[key]
            return {name: GroupResult(arrivals=int(acc[0, j]), served=int(acc[1, j]),
                                      dropped=int(acc[2, j]), slo_met=int(acc[3, j]))
                    for j, name in enumerate(names) if j < acc.shape[1] and acc[0, j]}

        per_s = lambda x: x / duration_s if duration_s else 0.0
        return SimResult(
            spec=spec_name, policy=policy, trace=trace.describe, sites=self.n, tick_s=cfg.tick_s,
            duration_s=duration_s, arrivals=self.arrivals, served=served,
            dropped=self.arrivals - served, slo_met=slo_met,
            slo_attainment=slo_met / self.arrivals if self.arrivals else 0.0,
            slo_ttft_s=cfg.slo_ttft_s, slo_latency_s=cfg.slo_latency_s,
            goodput_rps=per_s(slo_met), goodput_tokens_per_s=per_s(self.slo_tokens),
            ttft_p50_s=hist_quantile(self.ttft_hist, 0.5), ttft_p99_s=hist_quantile(self.ttft_hist, 0.99),
            latency_p50_s=hist_quantile(self.lat_hist, 0.5), latency_p99_s=hist_quantile(self.lat_hist, 0.99),
            energy_mwh=float(site["energy_j"].sum()) / J_PER_MWH, energy_cost_usd=cost,
            carbon_kg=float(site["carbon_g"].sum()) / 1e3,
            usd_per_mtok=cost / out_tokens * 1e6 if out_tokens else 0.0,
            wall_s=wall_s, requests_per_s=self.arrivals / wall_s if wall_s else 0.0,
            per_site=per_site, by_tenant=groups("tenant", trace.tenants),
            by_class=groups("klass", trace.classes))
