"""What a token would have cost under least_load: the counterfactual every usage record carries.

Each tick the scheduler asks, for every site, where least_load would have sent the same model's
traffic at that moment (its weights) and what a token costs there relative to here. An engine
then prices each request it served twice: as it ran, and as it would have run under least_load
— the same tokens at those sites' energy per token, price and carbon.
Pure: the scheduler and tests call it.
"""

from __future__ import annotations

from fabric.scheduling.signals import SiteSignals, Snapshot


def _energy(s: SiteSignals) -> float:
    """Facility joules per output token (the site's GPUs and PUE; 1 where unknown)."""
    return s.j_per_token * s.pue if s.j_per_token else 1.0


def counterfactuals(snapshot: Snapshot) -> dict[str, dict]:
    """site -> {"site": least_load's likeliest pick for its model, "usd_per_j", "g_per_j": what
    a joule spent here would have cost and emitted under least_load}. least_load spreads a
    model's traffic by its weights, so the counterfactual is their weighted mean: each site's
    energy per token relative to here, times its price and carbon now."""
    from fabric.scheduling.policies import make_policy

    serving = [s for s in snapshot.sites if s.replicas > 0]
    weights = make_policy("least_load").weights(Snapshot(sites=serving))
    by_model: dict[str, list[SiteSignals]] = {}
    for s in serving:
        by_model.setdefault(s.serves, []).append(s)
    out = {}
    for sites in by_model.values():
        total = sum(weights.get(s.name, 0.0) for s in sites) or 1.0
        pick = max(sites, key=lambda s: weights.get(s.name, 0.0))
        for s in sites:
            usd = g = 0.0
            for other in sites:
                share = weights.get(other.name, 0.0) / total
                ratio = _energy(other) / _energy(s)
                usd += share * ratio * other.price_usd_per_mwh / 3.6e9
                g += share * ratio * other.carbon_g_per_kwh / 3.6e6
            out[s.name] = {"site": pick.name, "usd_per_j": usd, "g_per_j": g}
    return out


def price(energy_j: float, cf: dict) -> tuple[float, float]:
    """(energy $, gCO2) of a request's energy had least_load placed it."""
    return energy_j * cf["usd_per_j"], energy_j * cf["g_per_j"]
