"""When deferred work runs: in the cheapest or greenest window before its deadline. Pure.

A deferred job may start any time between now and its latest start (deadline minus a margin
for the run itself). The queue samples the grid's forecast over that span — for a replayed
profile, the profile itself — and scores each sample by the merit order's own cost: the best
site's dollars per million tokens, energy price plus carbon at the carbon price, times the
energy a token takes there (``carbon_usd_per_t`` set: what the fabric runs); without a carbon
price, a blend of price and carbon each relative to its mean over the span.
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
    carbon_usd_per_t: float | None = Field(None, ge=0, description="score by $ per token at this "
                                           "carbon price (the merit order's cost)")


@dataclass(frozen=True)
class GridPoint:
    """One site's forecast at one time."""

    price_usd_per_mwh: float
    carbon_g_per_kwh: float
    curtailed: bool = False
    mwh_per_mtok: float = 1.0   # facility energy of a million tokens at this site


def sample_times(now: float, latest_start: float, n: int) -> list[float]:
    if latest_start <= now:
        return [now]
    step = (latest_start - now) / (n - 1)
    return [now + i * step for i in range(n)]


def scores(forecast: Sequence[Sequence[GridPoint]], policy: DeferralPolicy) -> list[float]:
    """forecast[t][site] -> a score per time (lower is better): the best uncurtailed site's
    weighted price and carbon, each relative to its mean over the whole forecast."""
    if policy.carbon_usd_per_t is not None:  # $/Mtok: (price + kg/MWh × $/t / 1000) × MWh/Mtok
        return [min(p.mwh_per_mtok * (p.price_usd_per_mwh + p.carbon_g_per_kwh * policy.carbon_usd_per_t / 1e3)
                    for p in ([q for q in row if not q.curtailed] or list(row))) for row in forecast]
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


def planned_start(times: Sequence[float], forecast_scores: Sequence[float],
                  policy: DeferralPolicy | None = None) -> float:
    """When the job will be released: the earliest sampled time whose score is within the
    release tolerance of the best (the release rule's own view of the window ahead)."""
    tolerance = policy.tolerance if policy is not None else 0.0
    best = min(forecast_scores)
    return next(t for t, s in zip(times, forecast_scores) if s <= best + tolerance * abs(best))
