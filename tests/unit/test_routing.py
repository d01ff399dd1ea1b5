from collections import Counter
from types import SimpleNamespace

import pytest

from fabric.routing.pick import (Hints, NoAllowedReplica, Placement, rank_by_table,
                                 request_hints)
from fabric.scheduling.table import RoutingTable, SmoothWeightedRoundRobin


def test_swrr_interleaves_by_weight():
    wrr = SmoothWeightedRoundRobin()
    assert [wrr.pick({"a": 1, "b": 1}) for _ in range(4)] == ["a", "b", "a", "b"]
    wrr = SmoothWeightedRoundRobin()
    seq = [wrr.pick({"a": 3, "b": 1}) for _ in range(8)]
    assert Counter(seq) == {"a": 6, "b": 2}
    assert seq[0] == "a" and "b" in seq[:4]
    assert wrr.pick({}) is None


def test_swrr_forgets_removed_keys():
    wrr = SmoothWeightedRoundRobin()
    for _ in range(5):
        wrr.pick({"a": 1, "b": 5})
    assert [wrr.pick({"a": 1}) for _ in range(3)] == ["a", "a", "a"]


SITES = {"edge-a": ("edge", True), "cloud-a": ("cloud", False), "cloud-b": ("cloud", False)}


def replicas(*sites):
    return [SimpleNamespace(id=i, site=s) for i, s in enumerate(sites)]


def where(r):
    region, edge = SITES[r.site]
    return Placement(site=r.site, region=region, edge=edge)


def rank(table, wrr, reps, hints=None):
    return rank_by_table(table, wrr, reps, where, hints or Hints())


def test_rank_follows_weights_and_offers_overflow():
    reps = replicas("edge-a", "cloud-a", "cloud-a")
    table = RoutingTable(version=1, weights={"edge-a": 1, "cloud-a": 1})
    wrr = SmoothWeightedRoundRobin()
    first, second = rank(table, wrr, reps), rank(table, wrr, reps)
    assert {r.site for r in first[0]} != {r.site for r in second[0]}
    assert len(first) == 2 and {r.site for r in first[1]} != {r.site for r in first[0]}


def test_shares_follow_weights():
    reps = replicas("edge-a", "cloud-a")
    table = RoutingTable(version=1, weights={"edge-a": 3, "cloud-a": 1})
    wrr = SmoothWeightedRoundRobin()
    picks = Counter(rank(table, wrr, reps)[0][0].site for _ in range(400))
    assert picks == {"edge-a": 300, "cloud-a": 100}


def test_zero_weight_site_is_never_offered():
    reps = replicas("edge-a", "cloud-a")
    table = RoutingTable(version=1, weights={"edge-a": 0, "cloud-a": 1})
    wrr = SmoothWeightedRoundRobin()
    for _ in range(10):
        assert [[r.site for r in rk] for rk in rank(table, wrr, reps)] == [["cloud-a"]]


def test_overflow_sites_come_last_and_only_from_the_table():
    reps = replicas("edge-a", "cloud-a", "cloud-b")
    table = RoutingTable(version=1, weights={"edge-a": 1, "cloud-a": 0, "cloud-b": 0},
                         overflow=["cloud-b"])
    wrr = SmoothWeightedRoundRobin()
    assert [[r.site for r in rk] for rk in rank(table, wrr, reps)] == [["edge-a"], ["cloud-b"]]
    with_session = rank_by_table(table, wrr, reps, where, session="s1", key=lambda r: r.site)
    assert [[r.site for r in rk] for rk in with_session] == [["edge-a"], ["cloud-b"]]


def test_no_table_yet_means_round_robin_not_a_stall():
    reps = replicas("edge-a", "cloud-a")
    wrr = SmoothWeightedRoundRobin()
    picks = [rank(RoutingTable(), wrr, reps)[0][0].site for _ in range(6)]
    assert Counter(picks) == {"edge-a": 3, "cloud-a": 3}
    assert rank(RoutingTable(), wrr, []) == []


def test_privacy_edge_never_leaves_the_edge_even_when_shed():
    reps = replicas("edge-a", "cloud-a", "cloud-b")
    table = RoutingTable(version=1, weights={"edge-a": 0, "cloud-a": 1, "cloud-b": 1})
    wrr = SmoothWeightedRoundRobin()
    for _ in range(5):
        ranks = rank(table, wrr, reps, Hints(privacy="edge"))
        assert [[r.site for r in rk] for rk in ranks] == [["edge-a"]]
    with pytest.raises(NoAllowedReplica, match="privacy=edge"):
        rank(table, wrr, replicas("cloud-a"), Hints(privacy="edge"))


def test_region_pin_goes_there_or_nowhere():
    reps = replicas("edge-a", "cloud-a", "cloud-b")
    table = RoutingTable(version=1, weights={"edge-a": 1, "cloud-a": 0, "cloud-b": 1})
    wrr = SmoothWeightedRoundRobin()
    for _ in range(4):
        ranks = rank(table, wrr, reps, Hints(region="cloud"))
        assert [[r.site for r in rk] for rk in ranks] == [["cloud-b"]]
    with pytest.raises(NoAllowedReplica, match="region=mars"):
        rank(table, wrr, reps, Hints(region="mars"))
    with pytest.raises(NoAllowedReplica, match="needs fabric_region"):
        rank(table, wrr, reps, Hints(privacy="region"))
    with pytest.raises(NoAllowedReplica, match="fabric_privacy must be"):
        rank(table, wrr, reps, Hints(privacy="invalid"))


def test_sessions_stick_to_one_replica_while_its_site_takes_traffic():
    reps = replicas("edge-a", "cloud-a", "cloud-a")
    key = lambda r: str(r.id)  # noqa: E731
    both = RoutingTable(version=1, weights={"edge-a": 1, "cloud-a": 1})
    homes = {}
    for session in (f"agent-{i}" for i in range(30)):
        picks = {id(rank_by_table(both, SmoothWeightedRoundRobin(), reps, where, Hints(), session,
                                  key)[0][0]) for _ in range(3)}
        assert len(picks) == 1  # the same replica every step, from any router instance
        homes[session] = picks.pop()
    assert len(set(homes.values())) == 3  # sessions spread over the replicas
    shed = RoutingTable(version=2, weights={"edge-a": 1, "cloud-a": 0})
    for session in homes:
        assert rank_by_table(shed, SmoothWeightedRoundRobin(), reps, where, Hints(), session,
                             key)[0][0].site == "edge-a"


def test_request_hints_from_body_metadata():
    assert request_hints(SimpleNamespace(metadata={"fabric_region": "edge"})) == Hints(region="edge")
    assert request_hints(SimpleNamespace(metadata={"fabric_privacy": "edge"})).privacy == "edge"
    assert request_hints(SimpleNamespace(metadata={"fabric_privacy": "max"})).privacy == "invalid"
    assert request_hints(SimpleNamespace(messages=[])) == Hints()
    assert request_hints(SimpleNamespace(metadata="edge")) == Hints()


def test_router_adopts_only_newer_tables():
    from fabric.routing.router import FabricRequestRouter

    router = FabricRequestRouter.__new__(FabricRequestRouter)  # policy state only, no Serve
    router.initialize_state()
    assert router.apply_table(RoutingTable(version=5, weights={"a": 1}))
    assert not router.apply_table(RoutingTable(version=4, weights={"b": 1}))
    assert router.table.weights == {"a": 1}


def test_the_parked_sites_a_constrained_request_may_wake():
    from fabric.routing.pick import parked_for
    table = RoutingTable(version=1, weights={"cloud-a": 1.0}, parked=["edge-a", "cloud-b"],
                         site_region={"edge-a": "edge", "cloud-a": "cloud", "cloud-b": "cloud"},
                         edge_sites=["edge-a"])
    assert parked_for(table, Hints(privacy="edge")) == ["edge-a"]
    assert parked_for(table, Hints(region="cloud")) == ["cloud-b"]
    assert parked_for(table, Hints(region="mars")) == []


def test_a_shared_rank_cache_ranks_exactly_as_without_one():
    import random

    from fabric.routing.pick import RankCache
    rng = random.Random(3)
    names = [f"s{i}" for i in range(12)]
    for name in names:
        SITES.setdefault(name, (f"r{int(name[1:]) % 3}", int(name[1:]) % 4 == 0))
    reps = replicas(*[rng.choice(names) for _ in range(40)])
    key = lambda r: str(r.id)  # noqa: E731
    cache, plain, cached = RankCache(), SmoothWeightedRoundRobin(), SmoothWeightedRoundRobin()
    for version in range(1, 6):
        table = RoutingTable(version=version, weights={n: rng.choice([0, 0.5, 1, 3]) for n in names},
                             overflow=rng.sample(names, 3))
        for step in range(60):
            hints = rng.choice([Hints(), Hints(privacy="edge"), Hints(region="r1")])
            session = rng.choice(["", "", "a", "b", f"x{step}"])
            want = rank_by_table(table, plain, reps, where, hints, session, key)
            got = rank_by_table(table, cached, reps, where, hints, session, key, cache)
            assert [list(r) for r in got] == [list(r) for r in want]
    changed = reps[:10]  # a new replica list object is grouped afresh
    assert {r.site for rk in rank_by_table(table, cached, changed, where, cache=cache)
            for r in rk} <= {r.site for r in changed}


def test_replicas_without_a_site_yet_are_grouped_again_next_time():
    from fabric.routing.pick import RankCache
    reps = replicas("edge-a", "cloud-a")
    known = {0}
    placed = lambda r: where(r) if r.id in known else Placement(site=None, region=None)  # noqa: E731
    cache, wrr = RankCache(), SmoothWeightedRoundRobin()
    table = RoutingTable(version=1, weights={"edge-a": 1, "cloud-a": 1})
    first = {r.site for r in rank_by_table(table, wrr, reps, placed, cache=cache)[0]}
    known.add(1)  # its metadata arrives; Serve's list is the same object
    seen = {r.site for _ in range(4) for r in rank_by_table(table, wrr, reps, placed, cache=cache)[0]}
    assert first <= {"edge-a", None} and seen == {"edge-a", "cloud-a"}


def test_round_robin_keeps_its_place_when_the_same_weights_come_again_as_a_new_table():
    wrr = SmoothWeightedRoundRobin()
    picks = Counter(wrr.pick({"a": 3, "b": 1}) for _ in range(400))  # a fresh dict every pick
    assert picks == {"a": 300, "b": 100}
    wrr = SmoothWeightedRoundRobin()
    for _ in range(50):
        wrr.pick({"a": 1, "b": 0.01})
    burst = [wrr.pick({"a": 1, "b": 1}) for _ in range(6)]  # b's weight raised: no run of b
    assert Counter(burst) == {"a": 3, "b": 3}
    assert wrr.pick({"a": 0}) is None


def test_a_table_that_only_reprices_routes_the_same():
    a = RoutingTable(version=1, weights={"a": 1.0, "b": 0.5}, parked=["c"],
                     cost_usd_per_mtok={"a": 1.0}, counterfactual={"a": {"site": "b"}})
    b = RoutingTable(version=2, weights={"b": 0.5, "a": 1.0}, parked=["c"],
                     cost_usd_per_mtok={"a": 2.0}, counterfactual={"a": {"site": "a"}})
    assert a.routing_key() == b.routing_key()
    for change in ({"weights": {"a": 1.0, "b": 0.6}}, {"parked": []}, {"overflow": ["c"]},
                   {"policy": "least_load"}):
        assert b.model_copy(update=change).routing_key() != a.routing_key(), change
