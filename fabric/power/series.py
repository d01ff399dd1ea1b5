"""Hourly grid time series (price, carbon intensity, generation mix) read with pyarrow.

Three file shapes are understood, CSV or Parquet:
- carbon/mix files: ``timestamp`` + generation columns (WND SUN WAT OIL NG COL NUC OTH, MWh)
  + ``avg_CI`` (gCO2/kWh);
- price files: ``Datetime (UTC)`` + ``Price (USD/MWh)``;
- generic: ``timestamp`` + ``value`` (or any column named in the spec).
Replay is by offset from the series' first timestamp, wrapping around at its end, so a week
of data drives a demo of any length and series from different years line up.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

TIME_COLUMNS = ("timestamp", "Datetime (UTC)", "time", "datetime")
VALUE_COLUMNS = ("avg_CI", "Price (USD/MWh)", "value")
# Generation columns of the EIA-derived files → the fabric's source names.
MIX_COLUMNS = {"NUC": "nuclear", "WAT": "hydro", "WND": "wind", "SUN": "solar", "NG": "gas",
               "COL": "coal", "OIL": "oil", "OTH": "other"}


class SeriesError(ValueError):
    pass


def read_table(path: str | Path) -> pa.Table:
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_table(path)
        from pyarrow import csv
        return csv.read_csv(path)
    except (OSError, pa.ArrowException) as exc:
        raise SeriesError(f"{path}: cannot read time series: {exc}") from None


def _epoch_seconds(table: pa.Table, path) -> list[float]:
    name = next((c for c in TIME_COLUMNS if c in table.column_names), None)
    if name is None:
        raise SeriesError(f"{path}: no timestamp column (expected one of {', '.join(TIME_COLUMNS)})")
    col = table[name]
    if not pa.types.is_timestamp(col.type):
        col = pc.strptime(col, format="%Y-%m-%d %H:%M:%S%z", unit="s")
    secs = pc.divide(pc.cast(pc.cast(col, pa.timestamp("s", tz="UTC")), pa.int64()), 1).to_pylist()
    return [float(s) for s in secs]


@dataclass(frozen=True)
class TimeSeries:
    """A step function: the value of the latest sample at or before a point in time."""

    offsets_s: tuple[float, ...]  # seconds from the first sample
    values: tuple[float, ...]
    period_s: float               # replay wraps around after this

    def at(self, offset_s: float) -> float:
        t = offset_s % self.period_s
        return self.values[max(0, bisect.bisect_right(self.offsets_s, t) - 1)]

    def next_after(self, offset_s: float) -> float:
        """The first offset after ``offset_s`` at which the value may change (the next sample,
        or the wrap back to the first)."""
        t = offset_s % self.period_s
        i = bisect.bisect_right(self.offsets_s, t)
        step = (self.offsets_s[i] if i < len(self.offsets_s) else self.period_s) - t
        return offset_s + step

    @classmethod
    def from_samples(cls, times: list[float], values: list[float]) -> "TimeSeries":
        if not times or len(times) != len(values):
            raise SeriesError("a time series needs at least one sample and one value per time")
        order = sorted(range(len(times)), key=times.__getitem__)
        t0 = times[order[0]]
        offsets = tuple(times[i] - t0 for i in order)
        step = (offsets[-1] / (len(offsets) - 1)) if len(offsets) > 1 else 3600.0
        return cls(offsets, tuple(float(values[i]) for i in order), offsets[-1] + step)


@lru_cache(maxsize=64)
def load_series(path: str, column: str | None = None) -> TimeSeries:
    table = read_table(path)
    name = column or next((c for c in VALUE_COLUMNS if c in table.column_names), None)
    if name is None or name not in table.column_names:
        raise SeriesError(f"{path}: no value column {column or VALUE_COLUMNS!r}; "
                          f"columns are {', '.join(table.column_names)}")
    values = table[name].to_pylist()
    if any(v is None for v in values):
        raise SeriesError(f"{path}: column {name!r} has missing values")
    return TimeSeries.from_samples(_epoch_seconds(table, path), values)


@dataclass(frozen=True)
class MixSeries:
    """Generation shares by source over time."""

    series: dict[str, TimeSeries]

    def at(self, offset_s: float) -> dict[str, float]:
        raw = {k: max(0.0, s.at(offset_s)) for k, s in self.series.items()}
        total = sum(raw.values()) or 1.0
        return {k: round(v / total, 4) for k, v in raw.items() if v > 0}

    def next_after(self, offset_s: float) -> float:
        return min(s.next_after(offset_s) for s in self.series.values())


@lru_cache(maxsize=64)
def load_mix(path: str) -> MixSeries:
    table = read_table(path)
    cols = [c for c in MIX_COLUMNS if c in table.column_names]
    if not cols:
        raise SeriesError(f"{path}: no generation-mix columns ({', '.join(MIX_COLUMNS)})")
    times = _epoch_seconds(table, path)
    return MixSeries({MIX_COLUMNS[c]: TimeSeries.from_samples(
        times, [v or 0.0 for v in table[c].to_pylist()]) for c in cols})
