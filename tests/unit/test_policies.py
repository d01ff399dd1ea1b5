"""Every policy on crafted snapshots (pure: no Ray)."""

import pytest

from fabric.scheduling.capacity import power_cap_w
from fabric.scheduling.signals import site_signals
from fabric.scheduling.policies import POLICIES, make_policy
from fabric.scheduling.signals import SiteSignals, Snapshot


def site(name, region="cloud", price=50.0, carbon=300.0, budget=10_000.0, draw=2_000.0,
         replicas=1, inflight=0, edge=False):
    return SiteSignals(name=name, region=region, edge=edge, budget_w=budget, facility_w=draw,
                       price_usd_per_mwh=price, carbon_g_per_kwh=carbon, replicas=replicas,
                       inflight=inflight, max_inflight_per_replica=10)


def snap(*sites):
    return Snapshot(sites=list(sites))


def nonzero(table):
    return {k for k, v in table.weights.items() if v > 0}


def test_registry_and_errors():
    assert set(POLICIES) == {"round_robin", "least_load", "cheapest_energy", "lowest_carbon",
                             "fabric", "score_blend"}
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope")
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        make_policy("score_blend", price=-1)
    with pytest.raises(ValidationError):
        make_policy("fabric", reserve=-1)


def test_round_robin_weights_every_serving_site_equally():
    t = make_policy("round_robin").table(snap(site("a"), site("b"), site("c", replicas=0)), 7)
    assert t.version == 7 and t.policy == "round_robin"
    assert t.weights == {"a": 1.0, "b": 1.0, "c": 0.0}


def test_table_carries_regions_and_edge_sites():
    t = make_policy("round_robin").table(snap(site("e", region="edge", edge=True), site("c")), 1)
    assert t.site_region == {"e": "edge", "c": "cloud"} and t.edge_sites == ["e"]


def test_least_load_prefers_idle_sites():
    t = make_policy("least_load").table(snap(site("busy", inflight=8), site("idle", inflight=0)), 1)
    assert t.weights["idle"] > t.weights["busy"] > 0


def test_cheapest_energy_and_lowest_carbon_pick_the_best_site():
    s = snap(site("cheap", price=20, carbon=500), site("green", price=90, carbon=30),
             site("mid", price=50, carbon=200))
    assert nonzero(make_policy("cheapest_energy").table(s, 1)) == {"cheap"}
    assert nonzero(make_policy("lowest_carbon").table(s, 1)) == {"green"}
    tie = snap(site("a", price=20), site("b", price=20), site("c", price=30))
    assert nonzero(make_policy("cheapest_energy").table(tie, 1)) == {"a", "b"}


def test_score_blend_prefers_cheap_green_idle_sites():
    s = snap(site("good", price=20, carbon=50), site("bad", price=120, carbon=600, inflight=5))
    t = make_policy("score_blend").table(s, 1)
    assert t.weights["good"] > t.weights["bad"] > 0


def test_score_blend_sheds_a_site_with_negative_headroom_at_once():
    p = make_policy("score_blend")
    ok = snap(site("a"), site("b"))
    assert nonzero(p.table(ok, 1)) == {"a", "b"}
    cut = snap(site("a", budget=400, draw=828), site("b"))
    assert nonzero(p.table(cut, 2)) == {"b"}  # the very first tick that sees it


def test_score_blend_brings_a_shed_site_back_gradually_without_flapping():
    p = make_policy("score_blend", ramp_per_tick=0.25, readmit_headroom=0.1)
    p.table(snap(site("a", budget=400, draw=828), site("b")), 1)
    # headroom back but under the readmission margin: still shed
    assert p.table(snap(site("a", budget=10_000, draw=9_500), site("b")), 2).weights["a"] == 0
    weights = [p.table(snap(site("a"), site("b")), 3 + i).weights["a"] for i in range(6)]
    assert weights[0] == 0 and weights == sorted(weights) and weights[-1] > 0
    full = make_policy("score_blend").table(snap(site("a"), site("b")), 1).weights["a"]
    assert weights[1] < full and weights[-1] == pytest.approx(full)


def test_score_blend_keeps_a_curtailed_site_shed_while_caps_hold_its_draw_down():
    p = make_policy("score_blend")
    cut = site("a", budget=400, draw=828)
    cut.curtailed = True
    p.table(snap(cut, site("b")), 1)
    capped = site("a", budget=400, draw=300)  # GPU caps bring the draw under the budget
    capped.curtailed = True
    assert [p.table(snap(capped, site("b")), 2 + i).weights["a"] for i in range(4)] == [0] * 4
    assert p.table(snap(site("a"), site("b")), 9).weights["a"] == 0  # ramps from zero...
    assert p.table(snap(site("a"), site("b")), 10).weights["a"] > 0  # ...once the event is over


def test_score_blend_slo_guard_caps_an_overloaded_site():
    t = make_policy("score_blend").table(snap(site("hot", inflight=10), site("cool")), 1)
    assert t.weights["hot"] <= 0.05 < t.weights["cool"]


def test_score_blend_with_no_serving_site_returns_all_zero():
    t = make_policy("score_blend").table(snap(site("a", replicas=0)), 1)
    assert t.weights == {"a": 0.0}


def test_site_signals_from_an_aidc_state_and_power_caps():
    state = {"site": "a", "region": "r", "budget_w": 1000.0, "facility_power_w": 1200.0,
             "price_usd_per_mwh": 40.0, "carbon_g_per_kwh": -1.0, "curtailed": True, "replicas": 1,
             "node_readings": [{"inflight": 3, "engine_utilisation": 0.5, "tokens_per_s": 10.0}]}
    s = site_signals(state, edge=False, max_inflight=64)
    assert s.headroom_w == -200 and s.inflight == 3 and s.carbon_g_per_kwh == 0.0
    assert power_cap_w(400, 1.15, 8, 90, 700) == 90        # never below idle
    assert power_cap_w(4000, 1.0, 8, 90, 700) == 500
    assert power_cap_w(1e9, 1.0, 8, 90, 700) == 700        # never above TDP


def test_single_site_policies_list_the_others_as_overflow_but_not_shed_sites():
    s = snap(site("cheap", price=10), site("dear", price=90),
             site("dark", price=50, draw=900, budget=100))
    table = make_policy("cheapest_energy").table(s, 1)
    assert nonzero(table) == {"cheap"} and table.overflow == ["dear"]
    assert make_policy("least_load").table(s, 1).overflow == []
