"""When deferred work runs: in the cheapest or greenest window before its deadline. Pure.

A deferred job may start any time between now and its latest start (deadline minus a margin
for the run itself). The queue samples the grid's forecast over that span — for a replayed
profile, the profile itself — and scores each sample: the best site's blend of energy price
and carbon intensity, each relative to its own mean over the span, so neither unit dominates.
A job is released when now scores within ``tolerance`` of the best sample still ahead of it,
or when its latest start has come. So it waits for a better window when one is coming, never
past its deadline, and it never waits for a window that is only marginally better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pydantic import BaseModel, Field


class DeferralPolicy(BaseModel):
    price_weight: float = Field(0.5, ge=0)
    carbon_weight: float = Field(0.5, ge=0)
    tolerance: float = Field(0.02, ge=0, description="release when now is this close to the best")
    margin_s: float = Field(30.0, ge=0, description="kept before the deadline for the run itself")
    samples: int = Field(48, ge=2, description="forecast samples between now and the latest start")


@dataclass(frozen=True)
class GridPoint:
    """One site's forecast at one time."""

    price_usd_per_mwh: float
    carbon_g_per_kwh: float
    curtailed: bool = False


def sample_times(now: float, latest_start: float, n: int) -> list[float]:
    if latest_start <= now:
        return [now]
    step = (latest_start - now) / (n - 1)
    return [now + i * step for i in range(n)]


def scores(forecast: Sequence[Sequence[GridPoint]], policy: DeferralPolicy) -> list[float]:
    """forecast[t][site] -> a score per time (lower is better): the best uncurtailed site's
    weighted price and carbon, each relative to its mean over the whole forecast."""
    points = [p for row in forecast for p in row]
    mean_price = sum(p.price_usd_per_mwh for p in points) / len(points) or 1.0
    mean_carbon = sum(p.carbon_g_per_kwh for p in points) / len(points) or 1.0
    out = []
    for row in forecast:
        usable = [p for p in row if not p.curtailed] or list(row)
        out.append(min(policy.price_weight * p.price_usd_per_mwh / mean_price
                       + policy.carbon_weight * p.carbon_g_per_kwh / mean_carbon for p in usable))
    return out


def should_release(now: float, latest_start: float, forecast_scores: Sequence[float],
                   policy: DeferralPolicy) -> bool:
    """``forecast_scores[0]`` is now, the rest the samples up to the latest start."""
    if now >= latest_start or not forecast_scores:
        return True
    best = min(forecast_scores)
    return forecast_scores[0] <= best + policy.tolerance * abs(best)


def planned_start(times: Sequence[float], forecast_scores: Sequence[float]) -> float:
    """The sampled time with the best score (the earliest among equals)."""
    return min(zip(forecast_scores, times))[1]
