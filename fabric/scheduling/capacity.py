"""How much a site can take within the SLO, and what its power budget allows. Pure.

A site is ``c`` batch slots (replicas × sequences per replica); a request holds a slot for its
service time ``T`` and waits when every slot is busy. As an M/M/c queue (Erlang C), the
probability that a request waits longer than ``t`` at utilisation ρ is
``C(c, cρ) · exp(−(1 − ρ) c t / T)``. The SLO-safe utilisation is the highest ρ at which a
request still meets the TTFT SLO (wait + prefill ≤ SLO) with probability ``target``: the
load at which this site's TTFT would cross the SLO, derived from its own queue rather than a
fixed 0.9. A site whose prefill alone exceeds the SLO has none.
"""

from __future__ import annotations

import math
from functools import lru_cache


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits, for ``c`` servers at offered load ``a`` (< c)."""
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    # Erlang B by its stable recursion, then C from B.
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1.0 - rho + rho * b)


def wait_exceeds(c: int, rho: float, t: float, service_s: float) -> float:
    """P(wait > t) for an M/M/c queue at utilisation ``rho``, mean service ``service_s``."""
    if rho >= 1.0:
        return 1.0
    return erlang_c(c, c * rho) * math.exp(-(1.0 - rho) * c * t / max(service_s, 1e-9))


def slo_safe_utilisation(slots: int, service_s: float, prefill_s: float, slo_ttft_s: float,
                         target: float = 0.99, cap: float = 0.98) -> float:
    """The highest utilisation (≤ ``cap``) at which P(TTFT ≤ SLO) ≥ ``target``; 0 when even
    an idle site misses the SLO. Bisection: P(wait > t) grows with ρ. Cached on rounded
    inputs: a site's figures change only with its power cap."""
    return _safe(int(slots), _r(service_s), _r(prefill_s), _r(slo_ttft_s), round(target, 4), cap)


def _r(x: float) -> float:
    return float(f"{x:.3g}")


@lru_cache(maxsize=4096)
def _safe(slots: int, service_s: float, prefill_s: float, slo_ttft_s: float, target: float,
          cap: float) -> float:
    budget = slo_ttft_s - prefill_s
    if slots < 1 or budget <= 0:
        return 0.0
    miss = 1.0 - target
    if wait_exceeds(slots, cap, budget, service_s) <= miss:
        return cap
    lo, hi = 0.0, cap
    for _ in range(40):
        mid = (lo + hi) / 2
        if wait_exceeds(slots, mid, budget, service_s) <= miss:
            lo = mid
        else:
            hi = mid
    return lo


def power_speed(budget_w: float, pue: float, idle_w: float, dynamic_w: float,
                it_limit_w: float | None = None) -> float:
    """Share of full serving speed a site's power budget allows (GPU power capped to fit):
    what is left of its IT budget after idle power, over its GPUs' dynamic range."""
    if dynamic_w <= 0:
        return 1.0
    it_w = budget_w / max(pue, 1e-9)
    if it_limit_w:
        it_w = min(it_w, it_limit_w)
    return max(0.0, min(1.0, (it_w - idle_w) / dynamic_w))


def power_cap_w(site_budget_w: float, pue: float, gpus: int, idle_w: float, tdp_w: float) -> float:
    """Per-GPU power limit that fits a site's IT share of its budget (never below idle)."""
    return max(idle_w, min(tdp_w, site_budget_w / pue / max(1, gpus)))
