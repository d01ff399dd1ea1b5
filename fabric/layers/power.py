"""Layer 1: one PowerGrid actor per site — budget, price, carbon, source mix, curtailments.

Replays the site's power profile on a clock that can run faster than real time, and reports
the curtailment starts and ends the replay has passed (worked out from the profile, so none
is missed between two reads).
"""

from __future__ import annotations

import ray

from fabric.power.grid import GridModel, ReplayClock
from fabric.spec import SiteSpec


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class PowerGrid:
    def __init__(self, site_json: str, speed: float = 1.0, start_s: float = 0.0,
                 t0: float | None = None, lookahead_s: float = 0.0):
        """``lookahead_s``: wall seconds over which ``state`` also reports the lowest budget
        scheduled (``budget_ahead_w``), so capacity parked elsewhere is started in time."""
        self.site = SiteSpec.model_validate_json(site_json)
        self.model = GridModel(self.site.power)
        self.clock = ReplayClock(speed, start_s, t0)
        self.lookahead_s = lookahead_s

    def where(self) -> dict:
        """The node this actor runs on and its labels (placement is checked, not assumed)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "labels": ctx.get_node_labels()}

    @ray.method(enable_task_events=False)  # called every tick: no task event in the GCS
    def state(self) -> dict:
        """The grid now (replay time), with the lowest budget scheduled over the look-ahead."""
        import time

        now = time.time()
        state = self.state_at(self.clock.offset(now))
        ahead = self.model.lowest_budget_w(self.clock.offset(now), self.clock.offset(now + self.lookahead_s))
        state["budget_ahead_w"] = min(state["budget_w"], ahead)
        return state

    def state_at(self, offset_s: float) -> dict:
        """The grid at any replay offset, without moving the clock (for tests and what-ifs)."""
        return {"site": self.site.name, **self.model.state(offset_s).model_dump()}

    @ray.method(enable_task_events=False)  # called every tick: no task event in the GCS
    def forecast(self, wall_times: list[float]) -> list[dict]:
        """The grid at future wall-clock times (for a replayed profile: the profile itself;
        the deferred queue chooses windows with it)."""
        return [self.state_at(self.clock.offset(t)) for t in wall_times]

    def seek(self, offset_s: float, speed: float | None = None) -> dict:
        """Move the replay clock (e.g. jump to a curtailment in a demo); ``speed`` changes the
        replay speed too (0 holds the replay at ``offset_s``, for what-ifs and tests)."""
        import time
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
            grid = ray.get_actor(naming.power(site.name), namespace=naming.NAMESPACE)
            state = ray.get(grid.seek.remote(cut.start_s), timeout=30)
            return {"site": site.name, "region": region, "budget_w": state["budget_w"],
                    "what": f"grid curtails {site.name} to {cut.budget_fraction:.0%} of its budget "
                            f"({state['budget_w'] / 1e3:.1f} kW)"}
    return None
