"""A site's grid connection at a point of replay time: budget, price, carbon, mix, events.

Pure: the site's PowerGrid (``fabric.layers.power``) asks this model for the state at the
replay clock's offset; tests ask it for any offset directly.
"""

from __future__ import annotations

from pydantic import BaseModel

from fabric.power.series import load_mix, load_series
from fabric.spec import PowerProfile, SeriesRef


class GridState(BaseModel):
    offset_s: float
    budget_w: float
    normal_budget_w: float
    price_usd_per_mwh: float
    carbon_g_per_kwh: float
    source_mix: dict[str, float]
    curtailed: bool
    budget_fraction: float


class GridModel:
    def __init__(self, profile: PowerProfile):
        self.profile = profile
        self._price = self._series(profile.price_usd_per_mwh, default_column="Price (USD/MWh)")
        self._carbon = self._series(profile.carbon_g_per_kwh, default_column="avg_CI")
        mix = profile.source_mix
        self._mix = load_mix(mix.file) if isinstance(mix, SeriesRef) else None

    @staticmethod
    def _series(value, default_column: str):
        if isinstance(value, SeriesRef):
            return load_series(value.file, value.column)
        return float(value)

    @staticmethod
    def _value(series, offset_s: float) -> float:
        return series if isinstance(series, float) else series.at(offset_s)

    def budget_fraction(self, offset_s: float) -> float:
        """The lowest fraction among curtailments active at this offset (1.0 when none)."""
        active = [c.budget_fraction for c in self.profile.curtailments
                  if c.start_s <= offset_s < c.start_s + c.duration_s]
        return min(active, default=1.0)

    def lowest_budget_w(self, start_s: float, end_s: float) -> float:
        """The lowest budget the profile schedules over [start_s, end_s]: what a site can
        count on until then (curtailments are announced ahead; the replay knows them all)."""
        fractions = [c.budget_fraction for c in self.profile.curtailments
                     if c.start_s <= end_s and c.start_s + c.duration_s > start_s]
        return self.profile.budget_mw * 1e6 * min(fractions, default=1.0)

    def next_change_s(self, offset_s: float, ahead_s: float = 0.0) -> float:
        """The first offset after ``offset_s`` at which the state, or the lowest budget over the
        ``ahead_s`` that follow, may change: a sample of a series, a curtailment's start or
        end, or a start coming within ``ahead_s`` (inf when nothing ever changes)."""
        edges = [s.next_after(offset_s) for s in (self._price, self._carbon, self._mix)
                 if s is not None and not isinstance(s, float)]
        for c in self.profile.curtailments:
            edges += [c.start_s - ahead_s, c.start_s, c.start_s + c.duration_s]
        return min((e for e in edges if e > offset_s), default=float("inf"))

    def events_between(self, start_s: float, end_s: float) -> list[dict]:
        """Curtailment starts and ends with start_s < offset <= end_s, in time order."""
        events = []
        for c in self.profile.curtailments:
            for kind, at in (("curtailment_start", c.start_s), ("curtailment_end", c.start_s + c.duration_s)):
                if start_s < at <= end_s:
                    events.append({"kind": kind, "offset_s": at, "budget_fraction": c.budget_fraction})
        return sorted(events, key=lambda e: (e["offset_s"], e["kind"] == "curtailment_start"))

    def state(self, offset_s: float) -> GridState:
        normal = self.profile.budget_mw * 1e6
        fraction = self.budget_fraction(offset_s)
        mix = self._mix.at(offset_s) if self._mix else dict(self.profile.source_mix)
        return GridState(offset_s=offset_s, budget_w=normal * fraction, normal_budget_w=normal,
                         price_usd_per_mwh=round(self._value(self._price, offset_s), 4),
                         carbon_g_per_kwh=round(self._value(self._carbon, offset_s), 3),
                         source_mix=mix, curtailed=fraction < 1.0, budget_fraction=fraction)


class ReplayClock:
    """Replay offset = start_s + speed × (now − t0). ``now`` is injected for tests."""

    def __init__(self, speed: float = 1.0, start_s: float = 0.0, t0: float | None = None):
        import time
        self.speed, self.start_s = speed, start_s
        self.t0 = time.time() if t0 is None else t0

    def offset(self, now: float | None = None) -> float:
        import time
        return self.start_s + self.speed * ((time.time() if now is None else now) - self.t0)
