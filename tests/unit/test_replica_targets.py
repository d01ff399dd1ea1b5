"""Replica targets on crafted snapshots (pure: no Ray): drain only after drain_after_s short
of power, never below min or above max, back once power returns, hold in between."""

from fabric.scheduling.replicas import ModelReplicas, ReplicaPlanner
from fabric.scheduling.signals import SiteSignals, Snapshot


def site(name, budget=10_000.0, draw=2_000.0, curtailed=False):
    return SiteSignals(name=name, region="r", budget_w=budget, facility_w=draw,
                       curtailed=curtailed, replicas=1)


def snap(**short):
    """Sites a, b, c; a keyword gives a site's state: 'cut' (curtailed, below draw),
    'over' (drawing over budget), 'low' (power back, headroom under 5 %)."""
    kinds = {"cut": dict(budget=500.0, curtailed=True), "over": dict(budget=1_900.0),
             "low": dict(budget=2_050.0)}
    return Snapshot(sites=[site(n, **kinds.get(short.get(n, ""), {})) for n in "abc"])


def planner(**kw):
    small = ModelReplicas("small", ("a", "b"), min_replicas=1)
    large = ModelReplicas("large", ("c",), min_replicas=1)
    return ReplicaPlanner([small, large], drain_after_s=30.0, **kw)


def targets(plans):
    return {m: (p.target, p.stop_sites) for m, p in plans.items()}


def test_full_targets_while_power_holds():
    p = planner()
    assert targets(p.plan(snap(), 0.0)) == {"small": (2, ()), "large": (1, ())}


def test_a_site_is_drained_only_after_drain_after_s_short_of_power():
    p = planner()
    assert targets(p.plan(snap(a="cut"), 0.0))["small"] == (2, ())
    assert targets(p.plan(snap(a="cut"), 29.9))["small"] == (2, ())
    assert targets(p.plan(snap(a="cut"), 30.0))["small"] == (1, ("a",))
    assert p.drained == {"a"}


def test_a_break_in_the_shortage_restarts_the_clock():
    p = planner()
    p.plan(snap(a="cut"), 0.0)
    p.plan(snap(), 20.0)  # power back in between: not a continuous shortage
    assert targets(p.plan(snap(a="cut"), 40.0))["small"] == (2, ())
    assert targets(p.plan(snap(a="cut"), 70.0))["small"] == (1, ("a",))


def test_overdraw_counts_as_short_of_power():
    p = planner()
    p.plan(snap(b="over"), 0.0)
    assert targets(p.plan(snap(b="over"), 31.0))["small"] == (1, ("b",))


def test_min_replicas_keeps_the_only_host():
    p = planner()
    p.plan(snap(c="cut"), 0.0)
    assert targets(p.plan(snap(c="cut"), 60.0))["large"] == (1, ())  # min 1: stays
    assert p.drained == {"c"}


def test_min_and_max_bound_the_target():
    m = ModelReplicas("m", ("a", "b", "c"), per_site=2, min_replicas=3, max_replicas=4)
    assert m.full == 4
    p = ReplicaPlanner([m], drain_after_s=0.0)
    assert targets(p.plan(snap(a="cut"), 0.0)) == {"m": (4, ())}  # 2 hosts x 2 = 4: no stop
    assert targets(p.plan(snap(a="cut", b="cut"), 1.0)) == {"m": (3, ("a", "b"))}  # min 3:
    # one of the drained sites' four replicas goes


def test_power_back_restores_and_low_headroom_holds():
    p = planner()
    p.plan(snap(a="cut"), 0.0)
    p.plan(snap(a="cut"), 30.0)
    assert targets(p.plan(snap(a="low"), 40.0))["small"] == (1, ("a",))  # not enough yet
    assert targets(p.plan(snap(), 41.0))["small"] == (2, ())
    assert p.drained == set() and p.short_since == {}


def test_both_hosts_drained_keeps_min():
    p = planner()
    p.plan(snap(a="cut", b="cut"), 0.0)
    plan = p.plan(snap(a="cut", b="cut"), 30.0)["small"]
    assert plan.target == 1 and plan.stop_sites == ("a", "b")  # one of them goes: min 1


def test_parked_sites_are_stopped_like_drained_ones_and_come_back_when_unparked():
    p = planner()
    assert targets(p.plan(snap(), 0.0, frozenset({"a"}))) == {"small": (1, ("a",)), "large": (1, ())}
    assert targets(p.plan(snap(), 1.0, frozenset({"c"})))["large"] == (1, ())  # min: the only host
    assert targets(p.plan(snap(), 2.0))["small"] == (2, ())                    # unparked: back


def test_a_site_run_with_fewer_engines_stops_only_the_rest():
    four = ModelReplicas("small", ("a", "b"), per_site=4, min_replicas=1)
    p = ReplicaPlanner([four], drain_after_s=30.0)
    assert targets(p.plan(snap(), 0.0, keep={"b": 1})) == {"small": (5, ("b",))}
    assert targets(p.plan(snap(), 1.0, frozenset({"a"}), {"b": 2})) == {"small": (2, ("a", "b"))}
    assert targets(p.plan(snap(), 2.0, keep={"b": 4})) == {"small": (8, ())}   # all back
