"""The scheduler's snapshot: per-replica engine signals, KV-cache pressure, latency classes."""

import pytest

from fabric.scheduling.policies import make_policy
from fabric.scheduling.signals import ReplicaSignals, SiteSignals, Snapshot, site_signals


def state(engines, inflight=4):
    return {"site": "s", "region": "r", "budget_w": 10_000, "facility_power_w": 1_000,
            "price_usd_per_mwh": 50, "carbon_g_per_kwh": 100, "curtailed": False, "replicas": 1,
            "node_readings": [{"inflight": inflight, "engine_utilisation": 0.5, "tokens_per_s": 80.0,
                               "engines": engines}]}


def test_engine_signals_reach_the_snapshot():
    s = site_signals(state([{"replica": "a", "model": "m", "inflight": 4, "running": 3, "waiting": 1,
                             "kv_cache_usage": 0.25, "tokens_per_s": 80.0, "healthy": True}]),
                     edge=False, max_inflight=64, latency_class="near")
    assert s.engines == [ReplicaSignals(replica="a", model="m", inflight=4, running=3, waiting=1,
                                        kv_cache_usage=0.25, tokens_per_s=80.0)]
    assert s.latency_class == "near" and s.kv_cache_usage == 0.25
    assert site_signals(state([]), False, 64).engines == []          # an engine that said nothing
    assert s.budget_ahead_w is None                                  # no grid look-ahead reported
    assert site_signals({**state([]), "budget_ahead_w": 4_000.0}, False, 64).budget_ahead_w == 4_000.0


def test_a_full_kv_cache_is_load_even_with_few_requests():
    few = site_signals(state([], inflight=4), False, 64)
    assert few.load == pytest.approx(4 / 64)
    full = site_signals(state([{"replica": "a", "kv_cache_usage": 0.95},
                               {"replica": "b", "kv_cache_usage": 0.99, "healthy": False}]), False, 64)
    assert full.load == pytest.approx(0.95)                         # the unhealthy one is ignored


def test_the_score_blend_policy_prefers_nearer_regions_all_else_equal():
    def site(name, latency):
        return SiteSignals(name=name, region=name, budget_w=10_000, facility_w=1_000, replicas=1,
                           price_usd_per_mwh=50, carbon_g_per_kwh=100, latency_class=latency)

    weights = make_policy("score_blend").table(Snapshot(sites=[site("n", "near"), site("r", "regional"),
                                                          site("f", "far")]), 1).weights
    assert weights["n"] > weights["r"] > weights["f"] > 0
    same = make_policy("score_blend").table(Snapshot(sites=[site("a", "far"), site("b", "far")]), 1).weights
    assert same["a"] == same["b"]
