"""The federation's pure parts: its spec, members in and out, and which member serves."""

import pytest

from fabric.federation.members import BACK, IN, OUT, Member, MemberView
from fabric.federation.route import Ask, MemberChooser, Refused, ask_of
from fabric.federation.spec import parse_federation
from fabric.spec import SpecError

SPEC = {"members": [{"name": "west", "url": "http://127.0.0.1:8001/", "regions": ["edge"]},
                    {"name": "east", "url": "http://127.0.0.1:8002", "regions": ["cloud", "cloud2"]}]}


def view(sites, models, edge=()):
    return MemberView.parse({
        "snapshot": {"tick": 3, "sites": [{"name": s, "region": r, "model": m} for s, r, m in sites]},
        "models": models, "regions": [{"name": r, "edge": r in edge} for r in {r for _, r, _ in sites}]})


def fleet():
    spec = parse_federation(SPEC)
    west, east = (Member(m) for m in spec.members)
    west.answered(view([("edge-a", "edge", "tiny")],
                       [{"id": "tiny", "tier": "small", "regions": ["edge"], "edge": True}],
                       edge=("edge",)), 3)
    east.answered(view([("cloud-a", "cloud", "tiny"), ("cloud-b", "cloud2", "big")],
                       [{"id": "tiny", "tier": "small", "regions": ["cloud"], "edge": False},
                        {"id": "big", "tier": "large", "regions": ["cloud2"], "edge": False}]), 3)
    return spec, west, east


def test_a_bad_federation_spec_names_the_field():
    with pytest.raises(SpecError, match=r"members\[0\]\.url"):
        parse_federation({"members": [{"name": "a", "url": "ftp://x", "regions": ["r"]}]}, "f.yaml")
    with pytest.raises(SpecError, match="held by both"):
        parse_federation({"members": [{"name": "a", "url": "http://x", "regions": ["r"]},
                                      {"name": "b", "url": "http://y", "regions": ["r"]}]})
    with pytest.raises(SpecError, match="unique"):
        parse_federation({"members": [{"name": "a", "url": "http://x", "regions": ["r"]},
                                      {"name": "a", "url": "http://y", "regions": ["s"]}]})
    assert parse_federation(SPEC).members[0].url == "http://127.0.0.1:8001"


def test_a_member_leaves_at_once_and_comes_back_only_after_good_answers_in_a_row():
    spec = parse_federation(SPEC)
    m = Member(spec.members[0])
    v = view([("edge-a", "edge", "tiny")], [{"id": "tiny", "tier": "small", "edge": True}])
    assert not m.usable and m.answered(v, 3) and m.state == IN  # a new member joins at once
    assert m.failed("connection refused") and m.state == OUT and not m.usable
    assert not m.answered(v, 3) and m.state == BACK and not m.usable
    assert not m.failed("timed out") and m.state == OUT  # a flap starts the count again
    assert [m.answered(v, 3) for _ in range(3)] == [False, False, True] and m.usable
    assert m.status()["sites"] == ["edge-a"]


def test_pinned_requests_reach_only_their_region_s_member_and_503_when_it_is_out():
    spec, west, east = fleet()
    chooser = MemberChooser(spec)
    members = [west, east]
    assert chooser.candidates(members, {}, Ask(region="cloud2")) == [east]
    east.failed("connection refused")
    with pytest.raises(Refused) as err:
        chooser.candidates(members, {}, Ask(region="cloud"))
    assert err.value.status == 503 and "held by member 'east'" in err.value.message
    assert "connection refused" in err.value.message
    with pytest.raises(Refused) as err:
        chooser.candidates(members, {}, Ask(region="mars"))
    assert err.value.status == 404 and "edge" in err.value.message
    # unpinned work goes to whoever is left
    assert chooser.candidates(members, {"cloud-a": 1.0}, Ask(model="tiny")) == [west]


def test_weights_interleave_members_and_the_rest_follow_as_fallbacks():
    spec, west, east = fleet()
    chooser = MemberChooser(spec)
    weights = {"edge-a": 1.0, "cloud-a": 3.0, "cloud-b": 1.0}
    firsts = [chooser.candidates([west, east], weights, Ask(model="tiny"))[0].name
              for _ in range(8)]
    assert firsts.count("east") == 6 and firsts.count("west") == 2  # 3:1 for the tiny model
    order = chooser.candidates([west, east], weights, Ask(model="tiny"))
    assert len(order) == 2 and order[0] is not order[1]
    # a model only one member serves, the edge, and a model nobody serves
    assert chooser.candidates([west, east], weights, Ask(model="big")) == [east]
    assert chooser.candidates([west, east], weights, Ask(model="tiny", privacy="edge")) == [west]
    with pytest.raises(Refused) as err:
        chooser.candidates([west, east], weights, Ask(model="huge"))
    assert err.value.status == 404 and err.value.code == "model_not_found"
    west.failed("timed out")
    with pytest.raises(Refused) as err:  # the only edge member is out: 503, not elsewhere
        chooser.candidates([west, east], weights, Ask(model="tiny", privacy="edge"))
    assert err.value.status == 503 and "west" in err.value.message


def test_hints_come_from_the_path_the_body_and_headers():
    assert ask_of({"model": "tiny", "metadata": {"fabric_privacy": "edge"}}, {}) == Ask(
        model="tiny", privacy="edge")
    assert ask_of({"model": "auto"}, {"x-fabric-region": "edge", "x-fabric-tier": "large"}) == Ask(
        model="auto", region="edge", tier="large")
    assert ask_of({}, {}, path_region="cloud").region == "cloud"
    with pytest.raises(Refused, match="asks for another"):
        ask_of({"metadata": {"fabric_region": "edge"}}, {}, path_region="cloud")
    with pytest.raises(Refused, match="needs fabric_region"):
        ask_of({"metadata": {"fabric_privacy": "region"}}, {})
    with pytest.raises(Refused, match="fabric_privacy must be"):
        ask_of({"metadata": {"fabric_privacy": "secret"}}, {})
