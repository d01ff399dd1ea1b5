from collections import Counter
from types import SimpleNamespace

import pytest

from fabric.layers.scheduler import snapshot_from_nodes
from fabric.routing.pick import rank_by_table
from fabric.scheduling.policies import RegionSignals, Snapshot, get_policy, round_robin
from fabric.scheduling.table import RoutingTable, SmoothWeightedRoundRobin
from fabric.spec import parse_spec


def test_swrr_interleaves_by_weight():
    wrr = SmoothWeightedRoundRobin()
    assert [wrr.pick({"a": 1, "b": 1}) for _ in range(4)] == ["a", "b", "a", "b"]
    wrr = SmoothWeightedRoundRobin()
    seq = [wrr.pick({"a": 3, "b": 1}) for _ in range(8)]
    assert Counter(seq) == {"a": 6, "b": 2}
    assert "a" in seq[:2] and seq.count("b") == 2 and seq[0] == "a"
    assert wrr.pick({}) is None


def test_swrr_forgets_removed_keys():
    wrr = SmoothWeightedRoundRobin()
    for _ in range(5):
        wrr.pick({"a": 1, "b": 5})
    assert [wrr.pick({"a": 1}) for _ in range(3)] == ["a", "a", "a"]


def replicas(*regions):
    return [SimpleNamespace(id=i, region=r) for i, r in enumerate(regions)]


def test_rank_follows_table_and_offers_overflow():
    reps = replicas("edge", "cloud", "cloud")
    table = RoutingTable(version=1, weights={"edge": 1, "cloud": 1})
    wrr = SmoothWeightedRoundRobin()
    first = rank_by_table(table, wrr, reps, lambda r: r.region)
    second = rank_by_table(table, wrr, reps, lambda r: r.region)
    assert {r.region for r in first[0]} != {r.region for r in second[0]}
    assert len(first) == 2 and {r.region for r in first[1]} != {r.region for r in first[0]}


def test_zero_weight_region_is_never_offered():
    reps = replicas("edge", "cloud")
    table = RoutingTable(version=1, weights={"edge": 0, "cloud": 1})
    wrr = SmoothWeightedRoundRobin()
    for _ in range(10):
        ranks = rank_by_table(table, wrr, reps, lambda r: r.region)
        assert [[r.region for r in rank] for rank in ranks] == [["cloud"]]


def test_no_table_yet_means_round_robin_not_a_stall():
    reps = replicas("edge", "cloud")
    wrr = SmoothWeightedRoundRobin()
    picks = [rank_by_table(RoutingTable(), wrr, reps, lambda r: r.region)[0][0].region
             for _ in range(6)]
    assert Counter(picks) == {"edge": 3, "cloud": 3}
    assert rank_by_table(RoutingTable(), wrr, [], lambda r: r.region) == []


def test_round_robin_policy():
    snap = Snapshot(regions=[RegionSignals(name="edge", healthy_replicas=1),
                             RegionSignals(name="cloud", healthy_replicas=2)])
    table = round_robin(snap, 7)
    assert table.version == 7 and table.weights == {"edge": 1.0, "cloud": 1.0}
    snap.regions[0].healthy_replicas = 0
    assert round_robin(snap, 8).weights == {"edge": 0.0, "cloud": 1.0}
    snap.regions[1].healthy_replicas = 0
    assert round_robin(snap, 9).weights == {"edge": 1.0, "cloud": 1.0}
    assert get_policy("round_robin") is round_robin
    with pytest.raises(ValueError, match="unknown policy"):
        get_policy("nope")


def test_snapshot_counts_alive_nodes_per_region():
    spec = parse_spec({"regions": [{"name": "edge", "sites": [{"name": "e1"}]},
                                   {"name": "cloud", "sites": [{"name": "c1"}]}]})
    nodes = [{"Alive": True, "Labels": {"fabric/region": "edge"}},
             {"Alive": False, "Labels": {"fabric/region": "cloud"}},
             {"Alive": True, "Labels": {"fabric/role": "head"}}]
    snap = snapshot_from_nodes(spec, nodes)
    assert [(r.name, r.healthy_replicas) for r in snap.regions] == [("edge", 1), ("cloud", 0)]


def test_router_adopts_only_newer_tables():
    from fabric.routing.router import FabricRequestRouter

    router = FabricRequestRouter.__new__(FabricRequestRouter)  # policy state only, no Serve
    router.initialize_state()
    assert router.apply_table(RoutingTable(version=5, weights={"a": 1}))
    assert not router.apply_table(RoutingTable(version=4, weights={"b": 1}))
    assert router.table.weights == {"a": 1}


def test_pinned_region_goes_there_or_nowhere():
    from fabric.routing.pick import NoAllowedReplica, request_region

    reps = replicas("edge", "cloud")
    table = RoutingTable(version=1, weights={"edge": 0, "cloud": 1})
    wrr = SmoothWeightedRoundRobin()
    for _ in range(3):
        assert [r.region for r in rank_by_table(table, wrr, reps, lambda r: r.region, "edge")[0]] == ["edge"]
    with pytest.raises(NoAllowedReplica):
        rank_by_table(table, wrr, reps, lambda r: r.region, "mars")
    assert request_region(SimpleNamespace(metadata={"fabric_region": "edge"})) == "edge"
    assert request_region(SimpleNamespace(metadata={"other": 1})) is None
    assert request_region(SimpleNamespace(messages=[])) is None
    assert request_region(SimpleNamespace(metadata="edge")) is None
