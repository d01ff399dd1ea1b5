"""Economic dispatch (the default ``fabric`` policy), scorers and the SLO-safe capacity: pure."""

import pytest

from fabric.scheduling.capacity import erlang_c, power_speed, slo_safe_utilisation
from fabric.scheduling.policies import make_policy
from fabric.scheduling.scorers import SCORERS, Scorer, Scoring, renewable_share
from fabric.scheduling.signals import ReplicaSignals, SiteSignals, Snapshot


def site(name, price=50.0, carbon=300.0, j=0.5, pue=1.2, rps=0.0, inflight=0, budget=10_000.0,
         draw=2_000.0, replicas=1, model="m", curtailed=False, **kw):
    return SiteSignals(name=name, region="r", budget_w=budget, facility_w=draw,
                       price_usd_per_mwh=price, carbon_g_per_kwh=carbon, j_per_token=j, pue=pue,
                       requests_per_s=rps, inflight=inflight, replicas=replicas,
                       max_inflight_per_replica=64, curtailed=curtailed,
                       engines=[ReplicaSignals(replica=f"{name}-0", model=model)], **kw)


def dispatch(**params):
    return make_policy("fabric", tick_s=1.0, park=False, **params)


def test_erlang_c_and_the_slo_safe_utilisation_follow_the_queue():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)             # M/M/1: P(wait) = rho
    assert erlang_c(10, 0.0) == 0 and erlang_c(10, 10) == 1.0
    big = slo_safe_utilisation(256, service_s=1.0, prefill_s=0.1, slo_ttft_s=2.0)
    small = slo_safe_utilisation(4, service_s=1.0, prefill_s=0.1, slo_ttft_s=2.0)
    slow = slo_safe_utilisation(4, service_s=10.0, prefill_s=0.1, slo_ttft_s=2.0)
    assert 0.9 < big <= 0.98 and 0 < slow < small < big           # fewer slots, longer jobs: less
    assert slo_safe_utilisation(64, 1.0, prefill_s=2.5, slo_ttft_s=2.0) == 0  # prefill alone misses
    assert power_speed(1000, 1.0, idle_w=200, dynamic_w=1600) == pytest.approx(0.5)
    assert power_speed(100, 1.0, idle_w=200, dynamic_w=1600) == 0.0


def test_scorers_price_a_token_in_dollars_and_add_up():
    s = site("a", price=40.0, carbon=250.0, j=0.36, pue=1.25)   # 0.125 kWh per Mtok
    assert SCORERS["energy_price"]().cost(s) == pytest.approx(40 * 0.125e-3)
    assert SCORERS["carbon"](usd_per_t=100).cost(s) == pytest.approx(250 * 0.125 / 1e6 * 100)
    both = Scoring({"energy_price": 1, "carbon": 2}, {"carbon": {"usd_per_t": 100}})
    assert both.cost(s) == pytest.approx(0.005 + 2 * 0.003125)
    with pytest.raises(ValueError, match="unknown scorer"):
        Scoring({"nope": 1})
    with pytest.raises(ValueError, match="not listed"):
        Scoring({"carbon": 1}, {"energy_price": {}})


def test_a_new_scorer_is_one_class_and_one_line_of_yaml():
    green = site("green", extra={"renewable_share": 0.9})
    brown = site("brown", extra={"renewable_share": 0.1})
    p = dispatch(scorers={"renewable_share": 1.0}, scorer_params={"renewable_share": {"usd_per_mwh": 30}})
    assert p.table(Snapshot(sites=[brown, green]), 1).weights == {"green": 1.0, "brown": 0.0}
    assert renewable_share({"wind": 2, "solar": 1, "gas": 1}) == pytest.approx(0.75)
    # and from outside the fabric, by module:Class
    p = make_policy("fabric", scorers={"tests.unit.test_dispatch:FlatFee": 1.0})
    assert type(p.scoring.scorers[0][0]).__name__ == "FlatFee"


class FlatFee(Scorer, name="test_flat_fee"):
    def cost(self, site):
        return 1.0 if site.name == "dear" else 0.0


def test_merit_order_fills_the_cheapest_site_then_spills():
    cheap, dear = site("cheap", price=20), site("dear", price=90)
    idle = dispatch().table(Snapshot(sites=[dear, cheap]), 1)
    assert idle.weights == {"dear": 0.0, "cheap": 1.0} and idle.overflow == ["dear"]
    assert idle.cost_usd_per_mtok["cheap"] < idle.cost_usd_per_mtok["dear"]
    p = dispatch()
    cap = p.capacity_rps(cheap)
    busy = [site("cheap", price=20, rps=1.5 * cap), site("dear", price=90, rps=0.0)]
    w = p.table(Snapshot(sites=busy), 2).weights       # a rise beyond noise is taken at once
    assert w["cheap"] == pytest.approx(1 / 1.5, abs=0.01) and w["dear"] == pytest.approx(1 - 1 / 1.5, abs=0.01)


def test_a_site_short_of_power_is_shed_at_once_and_ramps_back():
    p = dispatch(ramp_per_tick=0.25)
    sites = lambda **a: Snapshot(sites=[site("a", price=10, **a), site("b", price=90)])  # noqa: E731
    assert p.table(sites(), 1).weights["a"] == 1.0
    cut = p.table(sites(budget=400, draw=900, curtailed=True), 2)
    assert cut.weights == {"a": 0.0, "b": 1.0}                 # the first tick that sees it
    assert p.table(sites(budget=400, draw=300, curtailed=True), 3).weights["a"] == 0  # caps: still shed
    back = [p.table(sites(), 4 + i).weights["a"] for i in range(6)]
    assert back[0] < 0.5 and back == sorted(back) and back[-1] == 1.0 and len(set(back)) > 2


def test_sites_of_different_models_are_dispatched_apart():
    w = dispatch().table(Snapshot(sites=[site("s1", price=20), site("s2", price=90),
                                         site("big", price=200, model="large")]), 1).weights
    assert w == {"s1": 1.0, "s2": 0.0, "big": 1.0}   # each model's own merit order


def test_capacity_follows_demand_parking_the_dearest_first():
    p = make_policy("fabric", tick_s=1.0, park_after_s=3, cold_start_s=0, reserve=0.1)
    cheap, mid, dear = (dict(name="cheap", price=10), dict(name="mid", price=50), dict(name="dear", price=90))
    quiet = lambda: Snapshot(sites=[site(**cheap, rps=1), site(**mid), site(**dear)])  # noqa: E731
    tables = [p.table(quiet(), k) for k in range(1, 6)]
    assert tables[0].parked == [] and tables[-1].parked == ["dear", "mid"]
    cap = p.capacity_rps(site(**cheap))
    surge = Snapshot(sites=[site(**cheap, rps=1.8 * cap), site(**mid, parked=True), site(**dear, parked=True)])
    t = p.table(surge, 7)
    assert t.parked == ["dear"]                # the next in merit order unparked, ahead of need
    more = Snapshot(sites=[site(**cheap, rps=2.5 * cap), site(**mid, parked=True), site(**dear, parked=True)])
    t = p.table(more, 8)
    assert t.parked == []
    assert t.weights["cheap"] == 1.0 and t.overflow == []  # parked engines take nothing yet


def test_a_curtailment_announced_a_cold_start_ahead_starts_parked_capacity_in_time():
    p = make_policy("fabric", tick_s=1.0, park_after_s=3, cold_start_s=0, reserve=0.1,
                    serve_capped=False)
    cap = p.capacity_rps(site("cheap", price=10))
    rps = 0.6 * cap                     # cheap alone holds it: dear parks
    quiet = lambda **a: Snapshot(sites=[site("cheap", price=10, rps=rps, **a),  # noqa: E731
                                        site("dear", price=90)])
    tables = [p.table(quiet(), k) for k in range(1, 6)]
    assert tables[-1].parked == ["dear"]
    # cheap's grid announces a cut below its draw within the next cold start: dear is started
    # now, before cheap slows down (cheap still takes the traffic meanwhile)
    t = p.table(quiet(budget_ahead_w=1_000.0), 6)
    assert t.parked == [] and t.weights["cheap"] == 1.0
    # an announced budget the site still serves within changes nothing
    p2 = make_policy("fabric", tick_s=1.0, park_after_s=3, cold_start_s=0, reserve=0.1)
    for k in range(1, 6):
        p2.table(quiet(), k)
    assert p2.table(quiet(budget_ahead_w=9_000.0), 6).parked == ["dear"]


def test_a_site_in_use_or_booting_is_not_parked_and_a_request_can_unpark_one():
    p = make_policy("fabric", tick_s=1.0, park_after_s=2, cold_start_s=0, reserve=0.1)
    cheap, dear = dict(name="cheap", price=10), dict(name="dear", price=90)
    # dear serves requests only it may take (in flight there, though the merit order needs
    # only cheap): never idle, never parked
    for k in range(1, 6):
        t = p.table(Snapshot(sites=[site(**cheap, rps=1), site(**dear, inflight=1)]), k)
    assert t.parked == []
    for k in range(6, 9):
        t = p.table(Snapshot(sites=[site(**cheap, rps=1), site(**dear)]), k)
    assert t.parked == ["dear"]
    assert p.unpark("dear") and not p.unpark("dear") and p.parked == set()
    # booting after the request woke it (released, not serving yet): not idle, whatever the
    # demand; once up and unused it parks again
    for k in range(9, 14):
        t = p.table(Snapshot(sites=[site(**cheap, rps=1), site(**dear, parked=True)]), k)
    assert t.parked == [] and t.weights.get("dear", 0.0) == 0.0
    for k in range(14, 17):
        t = p.table(Snapshot(sites=[site(**cheap, rps=1), site(**dear)]), k)
    assert t.parked == ["dear"]


def test_dispatch_parameters_change_at_run_time_validated():
    p = dispatch()
    assert p.configure(park=True, park_after_s=10) == {"park": False, "park_after_s": 180.0}
    assert p.p.park and p.p.park_after_s == 10
    with pytest.raises(ValueError):
        p.configure(park_after_s=-1)
    with pytest.raises(ValueError):
        p.configure(parkk=True)
    assert p.p.park_after_s == 10                # a refused change leaves the params as they were


def test_a_parked_site_no_engine_reports_stays_in_its_models_merit_order():
    p = make_policy("fabric", tick_s=1.0, park_after_s=2, cold_start_s=0, reserve=0.1)
    cheap, dear = dict(name="cheap", price=10), dict(name="dear", price=90)
    for k in range(1, 5):
        t = p.table(Snapshot(sites=[site(**cheap, rps=1), site(**dear)]), k)
    assert t.parked == ["dear"]
    # its engine stopped and forgotten: the scheduler names its model; it must not become a
    # merit order of its own (which would need it, and unpark it)
    gone = site(**dear, parked=True).model_copy(update={"engines": [], "model": "m"})
    for k in range(5, 10):
        t = p.table(Snapshot(sites=[site(**cheap, rps=1), gone]), k)
    assert t.parked == ["dear"]


def test_a_site_keeps_only_the_engines_its_share_needs():
    """Engine by engine: what the kept sites hold beyond the forecast comes off the one the
    merit order fills last, never below what it needed over the window."""
    p = make_policy("fabric", tick_s=1.0, park_after_s=3, cold_start_s=0, reserve=0.1)
    big = dict(name="big", price=10, replicas=8, replicas_max=8)
    dear = dict(name="dear", price=90, replicas=8, replicas_max=8)
    cap = p.capacity_rps(site(**big))
    steady = lambda rps: Snapshot(sites=[site(**big, rps=rps), site(**dear, rps=0.0)])  # noqa: E731
    tables = [p.table(steady(cap * 0.3), k) for k in range(1, 8)]
    assert tables[0].keep_engines == {}                        # nothing released in the first window
    last = tables[-1]
    assert last.parked == ["dear"] and 0 < last.keep_engines["big"] < 8
    assert last.keep_engines["big"] * cap / 8 >= cap * 0.3 * 1.1  # the forecast plus the reserve
    more = p.table(Snapshot(sites=[site(**{**big, "replicas": last.keep_engines["big"]}, rps=cap * 0.7),
                                   site(**dear, parked=True)]), 9)
    assert more.keep_engines.get("big", 8) >= 7                # a rise is met at once


def test_a_curtailed_site_quick_enough_when_capped_comes_back_during_its_event():
    p = dispatch(ramp_per_tick=1.0)
    gpus = dict(idle_w=1_000.0, dynamic_w=4_000.0)   # at a 5 kW budget: 79 % of full speed
    quick = dict(prefill_s=0.05, service_s=1.0, **gpus)
    snap = lambda a, **cut: Snapshot(sites=[site("a", price=10, **a, **cut),  # noqa: E731
                                          site("b", price=90, **a)])
    assert p.table(snap(quick), 1).weights["a"] == 1.0
    assert p.table(snap(quick, budget=5_000, draw=6_000, curtailed=True), 2).weights["a"] == 0.0
    p.table(snap(quick, budget=5_000, draw=2_000, curtailed=True), 3)
    back = p.table(snap(quick, budget=5_000, draw=2_000, curtailed=True), 4)
    assert back.weights["a"] > 0                     # capped under its budget: serves again
    slow = dispatch(ramp_per_tick=1.0)
    heavy = dict(prefill_s=0.45, service_s=1.0, **gpus)  # slowed down, first tokens come late
    slow.table(snap(heavy), 1)
    slow.table(snap(heavy, budget=5_000, draw=6_000, curtailed=True), 2)
    for k in (3, 4):
        assert slow.table(snap(heavy, budget=5_000, draw=2_000, curtailed=True), k).weights["a"] == 0.0


def test_the_window_maximum_matches_a_plain_max():
    import random
    from collections import deque

    from fabric.scheduling.dispatch import _WindowMax

    rng = random.Random(1)
    for size in (1, 3, 10):
        w, plain = _WindowMax(size), deque(maxlen=size)
        for i in range(500):
            v = rng.randint(0, 5)
            plain.append(v)
            assert w.add(v) == max(plain) and w.full == (i + 1 >= size)
