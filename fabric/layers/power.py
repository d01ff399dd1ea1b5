"""Layer 1: each site's PowerGrid — budget, price, carbon, source mix, curtailments.

Replays the site's power profile on a clock that can run faster than real time, and reports
the curtailment starts and ends the replay has passed (worked out from the profile, so none
is missed between two reads). It knows when its state next changes (a sample of a series, a
curtailment's start or end, one coming into the look-ahead), so its reader sleeps until then.

A PowerGrid lives in its site's AIFactory, in the Sites actor (``fabric.layers.aidc``, named
``fabric:sites``): layers 1 and 2 of a site are read together every time, and one process for
every site costs a fabric at rest a fraction of what one per site and layer did
(bench/idle.py). The Sites actor serves the grid's methods (``grid_state``, ``state_at``,
``forecast``, ``seek``, ``clock_state``, ``set_clock``, ``event_log``), each naming its site.
"""

from __future__ import annotations

import time

import ray

from fabric.power.grid import GridModel, ReplayClock
from fabric.spec import SiteSpec


class PowerGrid:
    def __init__(self, site: SiteSpec, speed: float = 1.0, start_s: float = 0.0,
                 t0: float | None = None, lookahead_s: float = 0.0):
        """``lookahead_s``: wall seconds over which ``state`` also reports the lowest budget
        scheduled (``budget_ahead_w``), so capacity parked elsewhere is started in time."""
        self.site = site
        self.model = GridModel(site.power)
        self.clock = ReplayClock(speed, start_s, t0)
        self.lookahead_s = lookahead_s

    def state(self) -> dict:
        """The grid now (replay time), with the lowest budget scheduled over the look-ahead."""
        now = time.time()
        state = self.state_at(self.clock.offset(now))
        ahead = self.model.lowest_budget_w(self.clock.offset(now), self.clock.offset(now + self.lookahead_s))
        state["budget_ahead_w"] = min(state["budget_w"], ahead)
        return state

    def state_at(self, offset_s: float) -> dict:
        """The grid at any replay offset, without moving the clock (for tests and what-ifs)."""
        return {"site": self.site.name, **self.model.state(offset_s).model_dump()}

    def next_change_in_s(self) -> float:
        """Wall seconds until the state (or the budget over the look-ahead) may next change:
        inf while the replay is held or nothing is left to change."""
        if self.clock.speed <= 0:
            return float("inf")
        now = self.clock.offset()
        edge = self.model.next_change_s(now, self.lookahead_s * self.clock.speed)
        return max(0.0, (edge - now) / self.clock.speed)

    def forecast(self, wall_times: list[float]) -> list[dict]:
        """The grid at future wall-clock times (for a replayed profile: the profile itself;
        the deferred queue chooses windows with it)."""
        return [self.state_at(self.clock.offset(t)) for t in wall_times]

    def seek(self, offset_s: float, speed: float | None = None) -> dict:
        """Move the replay clock (e.g. jump to a curtailment in a demo); ``speed`` changes the
        replay speed too (0 holds the replay at ``offset_s``, for what-ifs and tests)."""
        self.clock = ReplayClock(self.clock.speed if speed is None else speed, offset_s, time.time())
        return self.state()

    def clock_state(self) -> dict:
        """The replay clock as plain data, so a caller can put it back with ``set_clock``."""
        return {"speed": self.clock.speed, "start_s": self.clock.start_s, "t0": self.clock.t0}

    def set_clock(self, speed: float, start_s: float, t0: float) -> dict:
        """Restore a clock saved with ``clock_state`` (the replay goes on where it would be)."""
        self.clock = ReplayClock(speed, start_s, t0)
        return self.state()

    def event_log(self, since_offset_s: float | None = None) -> list[dict]:
        """Curtailment events passed since ``since_offset_s`` (default: since the replay
        started or was last moved with ``seek``)."""
        since = self.clock.start_s if since_offset_s is None else since_offset_s
        return [{"site": self.site.name, **e}
                for e in self.model.events_between(since, self.clock.offset())]


def start_curtailment(spec) -> dict | None:
    """Jump the replay of the first engine-hosting site with a curtailment in its profile to
    that curtailment's start (a demo's power event). Returns what happened, or None."""
    from fabric.layers import naming

    hosting = {s.name for m in spec.models for _, s in spec.hosting_sites(m)}
    for region, site in ((r, s) for r, s in spec.sites if s.name in hosting):
        if site.power.curtailments:
            cut = site.power.curtailments[0]
            sites = ray.get_actor(naming.SITES, namespace=naming.NAMESPACE)
            state = ray.get(sites.seek.remote(site.name, cut.start_s), timeout=30)
            return {"site": site.name, "region": region, "budget_w": state["budget_w"],
                    "what": f"grid curtails {site.name} to {cut.budget_fraction:.0%} of its budget "
                            f"({state['budget_w'] / 1e3:.1f} kW)"}
    return None
