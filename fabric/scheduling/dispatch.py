"""Economic dispatch: the fabric's default policy. Pure.

As a grid operator dispatches power plants, the fabric dispatches tokens: every tick it ranks
the sites that may serve by the marginal cost of a token there — the configured scorers'
sum (``fabric.scheduling.scorers``: energy price × J/token at the site's GPUs and PUE, carbon
at a carbon price, …) — and fills them in that merit order, each up to its SLO-safe capacity
(``fabric.scheduling.capacity``: the utilisation at which its own queue would push TTFT past
the SLO, times what its power budget lets its GPUs run), spilling to the next site only
beyond it. The weights are the resulting shares of the demand, so the router's weighted
picks send each site exactly its allotment; the next sites in merit order are the table's
overflow, which the router offers when the weighted replicas are full.

Demand is the arrival rate the sites take now (requests routed per second, or in flight over
service time by Little's law where a site's slots are full), smoothed over ``demand_tau_s``;
a rise beyond a tick's Poisson noise is taken at once, so a burst is met within a tick. Power is a hard limit, as before: a site with negative headroom gets no
new traffic from the next tick on; it comes back once its curtailment is over and its
headroom exceeds ``readmit_headroom``, regaining at most ``ramp_per_tick`` of its allotment
per tick. A curtailed site whose capped GPUs still make a mean first token within
``capped_ttft_share`` of the SLO comes back during its event too, at the capacity its reduced
budget allows (``serve_capped``): a grid cut to half is half a site, not none.

Capacity follows demand, engine by engine: the unparked capacity stays above the demand
forecast ``cold_start_s`` ahead (a linear trend) plus ``reserve`` — whole sites cheapest to
keep on first, then what they hold beyond that need taken off the sites the merit order fills
last (``keep_engines``: fewer engines there) — and a site the merit order has not needed for
``park_after_s`` (and a cold start) is marked parked (its engines stop, its node can be
released); a parked site is unparked as soon as that margin needs it, or when a
request only it may serve arrives (``unpark``: privacy or region constraints). A site that is
serving anything (requests in flight, tokens lately), or booting after a request woke it, is
never idle. The table lists parked sites; the simulator releases them (zero power, a cold start to come
back), the live scheduler stops their engines (``fabric.scheduling.replicas``).
"""

from __future__ import annotations

import math
from collections import deque

from pydantic import BaseModel, ConfigDict, Field

from fabric.scheduling.capacity import slo_safe_utilisation
from fabric.scheduling.policies import Policy, _serving, power_gate
from fabric.scheduling.scorers import Scoring
from fabric.scheduling.signals import SiteSignals, Snapshot
from fabric.scheduling.table import RoutingTable

DEFAULT_SCORERS = {"energy_price": 1.0, "carbon": 1.0}


class DispatchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt parameter fails at load
    slo_ttft_s: float = Field(2.0, gt=0, description="the TTFT the fill protects")
    slo_target: float = Field(0.99, gt=0, lt=1, description="share of requests within it")
    max_utilisation: float = Field(0.98, gt=0, le=1, description="never plan a site above this")
    readmit_headroom: float = Field(0.05, ge=0, description="headroom share needed to come back")
    serve_capped: bool = Field(True, description="a curtailed site comes back during its event "
                               "(once its capped GPUs draw under the budget) at the capacity "
                               "that budget allows, in merit order")
    capped_ttft_share: float = Field(0.25, gt=0, le=1, description="a curtailed site serves "
                                     "if its capped GPUs make a mean request's first token "
                                     "within this share of the SLO")
    ramp_per_tick: float = Field(0.25, gt=0, le=1, description="max allotment regained per tick")
    demand_tau_s: float = Field(20.0, ge=0, description="time constant of the demand estimate; "
                                "a rise beyond Poisson noise (3 sigma) is taken at once")
    tick_s: float = Field(1.0, gt=0, description="the scheduler's tick (for the times below)")
    park: bool = Field(True, description="mark capacity the demand does not need as parked")
    park_after_s: float = Field(180.0, ge=0, description="unneeded this long before parking")
    cold_start_s: float = Field(60.0, ge=0, description="a parked site's time back to serving")
    reserve: float = Field(0.1, ge=0, description="unparked capacity kept above the forecast")
    contingency: bool = Field(False, description="keep the forecast covered without the "
                              "biggest unparked site (N-1)")
    trend_window_s: float = Field(300.0, gt=0, description="demand trend fitted over this")


class _WindowMax:
    """The most of the last ``size`` values, in O(1) per value (a monotonic queue)."""

    def __init__(self, size: int):
        self.size, self.count = size, 0
        self._q: deque[tuple[int, int]] = deque()   # (index, value), values decreasing

    def add(self, value: int) -> int:
        while self._q and self._q[-1][1] <= value:
            self._q.pop()
        self._q.append((self.count, value))
        self.count += 1
        if self._q[0][0] <= self.count - 1 - self.size:
            self._q.popleft()
        return self._q[0][1]

    @property
    def full(self) -> bool:
        return self.count >= self.size


class _Group:
    """The demand state of the sites serving one model (merit orders never mix models)."""

    def __init__(self) -> None:
        self.demand = 0.0                      # requests/s, smoothed
        self.history: deque[float] = deque()   # demand per tick, for the trend


class EconomicDispatch(Policy, name="fabric"):
    spills = True

    def __init__(self, scorers: dict[str, float] | None = None,
                 scorer_params: dict[str, dict] | None = None, **params):
        super().__init__(**params)
        self.p = DispatchParams(**params)
        self.scoring = Scoring(scorers or DEFAULT_SCORERS, scorer_params)
        self.shed: set[str] = set()
        self.ramp: dict[str, float] = {}
        self.groups: dict[str, _Group] = {}
        self.recent_need: dict[str, _WindowMax] = {}  # site -> engines needed, last ticks
        self.keep_engines: dict[str, int] = {}  # site -> engines kept where not all are
        self.parked: set[str] = set()
        self.woken: set[str] = set()           # unparked for a request, not serving yet
        self.costs: dict[str, float] = {}      # site -> $/Mtok, as of the last tick

    def configure(self, **params) -> dict:
        """Change parameters at run time (validated as at load); returns the previous ones."""
        before = {k: getattr(self.p, k) for k in params if k in DispatchParams.model_fields}
        self.p = DispatchParams(**{**self.p.model_dump(), **params})
        return before

    def unpark(self, site: str) -> bool:
        """A request only ``site`` may serve has come: bring it back now (and keep it for
        ``park_after_s`` at least). Returns whether it was parked."""
        self.recent_need.pop(site, None)  # a fresh window: kept park_after_s at least
        if site in self.parked:
            self.parked.discard(site)
            self.woken.add(site)
            return True
        return False

    def _serves_capped(self, s: SiteSignals) -> bool:
        """Whether a curtailed site's capped GPUs are still quick enough to serve: slowed
        down, the long prompts' first tokens would miss the SLO first."""
        return s.speed > 0 and s.prefill_s / s.speed <= self.p.capped_ttft_share * self.p.slo_ttft_s

    def capacity_rps(self, s: SiteSignals) -> float:
        """Requests/s the site takes within the SLO: its SLO-safe utilisation of its batch
        slots at the speed its power budget allows."""
        speed = s.speed
        if s.replicas <= 0 or speed <= 0:
            return 0.0
        service, prefill = s.service_s / speed, s.prefill_s / speed
        rho = min(self.p.max_utilisation,
                  slo_safe_utilisation(s.slots, service, prefill, self.p.slo_ttft_s, self.p.slo_target))
        slots_rps = rho * s.slots / service
        if s.throughput_rps > 0 and rho > 0:
            # compute-bound: the site's GPUs as one server whose work queue must also keep
            # the SLO (a small site, or a few engines of one, runs cooler than a big one)
            work = 1.0 / (s.throughput_rps * speed)
            rho_c = slo_safe_utilisation(1, work, prefill, self.p.slo_ttft_s, self.p.slo_target,
                                         cap=self.p.max_utilisation)
            return min(slots_rps, self.p.max_utilisation * s.throughput_rps * speed)
        return slots_rps

    def _demand(self, g: _Group, sites: list[SiteSignals]) -> float:
        """Requests/s the group's sites take now, smoothed over ``demand_tau_s``; a rise
        beyond a tick's Poisson noise is taken at once."""
        now = sum(self._rate(s) for s in sites)
        noise = 3.0 * math.sqrt(max(g.demand, 1.0) / self.p.tick_s)  # Poisson, one tick
        if now > g.demand + noise or not self.p.demand_tau_s:
            g.demand = now
        else:
            g.demand += min(1.0, self.p.tick_s / self.p.demand_tau_s) * (now - g.demand)
        g.history.append(g.demand)
        while len(g.history) > max(4, int(self.p.trend_window_s / self.p.tick_s)):
            g.history.popleft()
        return g.demand

    def _rate(self, s: SiteSignals) -> float:
        """A site's arrivals/s: as reported, or (where it reports none, or its slots are
        full and requests queue) its requests in flight over their time in a slot."""
        by_slots = s.inflight * max(s.speed, 1e-3) / s.service_s
        if s.requests_per_s <= 0 or s.inflight > s.slots:
            return max(s.requests_per_s, by_slots)
        return s.requests_per_s

    def _forecast(self, g: _Group, horizon_s: float) -> float:
        """Demand ``horizon_s`` ahead on the recent linear trend (never below now)."""
        h, n = g.history, len(g.history)
        if n < 4:
            return g.demand
        mean_x, mean_y = (n - 1) / 2, sum(h) / n
        slope = (sum((i - mean_x) * (y - mean_y) for i, y in enumerate(h))
                 / sum((i - mean_x) ** 2 for i in range(n)))
        return max(g.demand, g.demand + slope * horizon_s / self.p.tick_s)

    def weights(self, snapshot: Snapshot) -> dict[str, float]:
        serving = [s for s in snapshot.sites if s.replicas > 0 or s.parked]
        self.costs = {s.name: self.scoring.cost(s) for s in serving}
        live = power_gate(serving, self.shed, self.ramp, self.p.readmit_headroom,
                          self._serves_capped if self.p.serve_capped else None)
        by_model: dict[str, list[SiteSignals]] = {}
        for s in serving:
            by_model.setdefault(s.serves, []).append(s)
        out: dict[str, float] = {}
        for model, sites in by_model.items():
            out.update(self._dispatch(self.groups.setdefault(model, _Group()), sites))
        for s in live:  # a readmitted site regains its allotment step by step
            self.ramp[s.name] = min(1.0, self.ramp.get(s.name, 1.0) + self.p.ramp_per_tick)
        return out

    def _dispatch(self, g: _Group, sites: list[SiteSignals]) -> dict[str, float]:
        """One model's sites: merit-order shares of its demand (summing to 1). Sites shed for
        power come last, at the capacity their capped GPUs leave: used only if the others
        cannot take the demand within the SLO."""
        merit = sorted(sites, key=lambda s: (self.costs[s.name], s.name))
        order = [s for s in merit if s.name not in self.shed]
        up = lambda s: not s.parked and s.name not in self.parked and s.replicas > 0  # noqa: E731
        usable = [s for s in order if up(s)]
        last_resort = [s for s in merit if s.name in self.shed and up(s) and s.speed > 0]
        demand = self._demand(g, usable + last_resort)
        caps = {s.name: self.capacity_rps(s) for s in merit}
        self._plan_parking(g, order, caps)
        if not usable and not last_resort:
            return {}
        alloc: dict[str, float] = {}
        left = demand
        for s in usable + last_resort:  # merit order: each up to its SLO-safe capacity
            take = min(left, caps[s.name])
            if take > 0:
                alloc[s.name] = take
                left -= take
        usable = usable or last_resort
        if left > 1e-9:  # more demand than safe capacity: the excess shared by size
            total = sum(caps[s.name] for s in usable) or float(len(usable))
            for s in usable:
                alloc[s.name] = alloc.get(s.name, 0.0) + left * (caps[s.name] or 1.0) / total
        if not alloc:  # idle: the cheapest site takes the first requests
            alloc = {usable[0].name: 1.0}
        total = sum(alloc.values())
        shares = {k: v / total for k, v in alloc.items()}
        # a site coming back after a power event takes at most its ramp of its share; the
        # rest goes on to the next sites in merit order
        moved = 0.0
        for s in usable:
            ramp = min(1.0, self.ramp.get(s.name, 1.0))
            if s.name in shares and ramp < 1.0:
                moved += shares[s.name] * (1.0 - ramp)
                shares[s.name] *= ramp
        for s in usable:
            if moved <= 1e-12:
                break
            if self.ramp.get(s.name, 1.0) >= 1.0:
                room = max(0.0, caps[s.name] / max(demand, 1e-9) - shares.get(s.name, 0.0)) \
                    if demand > 0 else moved
                give = min(moved, room) if s is not usable[-1] else moved
                shares[s.name] = shares.get(s.name, 0.0) + give
                moved -= give
        if sum(shares.values()) <= 0:  # everything ramping from zero: let the first step in
            shares = {s.name: 1.0 for s in usable}
        return shares

    @staticmethod
    def _engines(s: SiteSignals) -> int:
        """The site's engine replicas with none parked."""
        return max(s.replicas_max, s.replicas)

    def _capacity_ahead(self, s: SiteSignals, now: float) -> float:
        """The site's capacity once a curtailment its grid has announced within the next cold
        start begins (none if it would then be shed): capacity parked elsewhere is started in
        time to take over, not after the site slows down."""
        if s.budget_ahead_w is None or s.budget_ahead_w >= s.budget_w:
            return now
        ahead = s.model_copy(update={"budget_w": s.budget_ahead_w, "curtailed": True})
        if ahead.headroom_w < 0 and not (self.p.serve_capped and self._serves_capped(ahead)):
            return 0.0
        return min(now, self.capacity_rps(ahead))

    def _plan_parking(self, g: _Group, order: list[SiteSignals], caps: dict[str, float]) -> None:
        """Keep the cheapest capacity that covers the forecast (``cold_start_s`` ahead, each
        site at the capacity its grid leaves it then) plus the reserve: whole sites in order
        of their cost to keep on, less the engines beyond the need at the sites the merit
        order fills last. A site keeps the most engines it
        needed over the last ``park_after_s`` (a cold start at least), and is parked once it
        needed none that long."""
        if not self.p.park:
            self.parked.clear()
            self.keep_engines.clear()
            return
        forecast = self._forecast(g, self.p.cold_start_s)
        need = forecast * (1.0 + self.p.reserve)
        caps = {s.name: self._capacity_ahead(s, caps[s.name]) for s in order}
        covered, biggest, needed, unit = 0.0, 0.0, {}, {}
        # cheapest to keep on: the marginal cost with the idle power spread over a full site
        for s in sorted(order, key=lambda s: (self.costs[s.name] * (1 + s.idle_w / s.dynamic_w)
                                              if s.dynamic_w else self.costs[s.name], s.name)):
            if needed and covered >= need and (not self.p.contingency or covered - biggest >= forecast):
                break
            engines = max(1, self._engines(s))
            full = caps[s.name] * engines / s.replicas if 0 < s.replicas < engines else caps[s.name]
            needed[s.name], unit[s.name] = engines, full / engines
            covered += full
            biggest = max(biggest, full)
        # what the kept sites hold beyond the need comes off the ones dearest to run (the last
        # the merit order fills), engine by engine: no engine is kept on to sit idle
        excess = covered - need if not self.p.contingency else 0.0
        for name in sorted(needed, key=lambda n: (-self.costs[n], n)):
            if excess <= 0:
                break
            if unit[name] <= 0:
                continue
            drop = min(needed[name], int(excess / unit[name] + 1e-9))
            if drop >= sum(needed.values()):  # one engine stays on somewhere
                drop -= 1
            needed[name] -= drop
            excess -= drop * unit[name]
        # never release faster than capacity comes back: the window spans a cold start too
        window = max(1, int(max(self.p.park_after_s, self.p.cold_start_s) / self.p.tick_s))
        for s in order:
            in_use = s.inflight > 0 or s.tokens_per_s > 0  # e.g. requests only it may serve
            booting = s.name in self.woken and s.parked  # woken for a request, still starting
            if not s.parked:
                self.woken.discard(s.name)
            n = needed.get(s.name, 0)
            if n == 0 and (in_use or booting):
                n = 1 if s.name not in self.keep_engines else self.keep_engines[s.name]
            recent = self.recent_need.get(s.name)
            if recent is None or recent.size != window:
                recent = self.recent_need[s.name] = _WindowMax(window)
            most = recent.add(n)
            if n:
                self.parked.discard(s.name)  # needed: unparked now (it takes a cold start)
            # fewer engines only once the window is full: what the site needed all along
            keep = most if recent.full else self._engines(s)
            if keep == 0:
                self.parked.add(s.name)
            if 0 < keep < self._engines(s) and s.name not in self.parked:
                self.keep_engines[s.name] = keep
            else:
                self.keep_engines.pop(s.name, None)

    def table(self, snapshot: Snapshot, version: int) -> RoutingTable:
        t = super().table(snapshot, version)
        merit = sorted((s for s in _serving(snapshot) if s.name not in self.shed),
                       key=lambda s: (self.costs.get(s.name, 0.0), s.name))
        t.overflow = [s.name for s in merit if not t.weights.get(s.name) and s.headroom_w >= 0
                      and s.name not in self.parked and not s.parked]
        t.parked = sorted(self.parked)
        t.keep_engines = dict(sorted(self.keep_engines.items()))
        t.cost_usd_per_mtok = {k: round(v, 6) for k, v in self.costs.items()}
        return t
