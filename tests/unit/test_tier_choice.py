"""Choosing the model: named, by tier hint, or by the classifier, within hard constraints."""

import pytest

from fabric.layers.gateway import with_hints
from fabric.scheduling.classify import RuleClassifier
from fabric.scheduling.tiers import CatalogModel, ChoiceError, choose_model

SMALL = CatalogModel("tiny", "small", frozenset({"edge", "cloud"}), edge=True)
LARGE = CatalogModel("big", "large", frozenset({"cloud"}))
CATALOG = [SMALL, LARGE]
RULES = RuleClassifier()
SIMPLE = [{"role": "user", "content": "hi"}]
CODE = [{"role": "user", "content": "```python\ndef f(x):\n    return x\n```\nwhy does this fail?"}]


def choose(messages=SIMPLE, model="auto", catalog=CATALOG, **metadata):
    return choose_model({"model": model, "messages": messages, "metadata": metadata}, catalog, RULES)


def refused(status, needle, **kw):
    with pytest.raises(ChoiceError) as err:
        choose(**kw)
    assert err.value.status == status and needle in err.value.message, err.value.message
    return err.value


def test_a_named_model_is_served_as_named():
    assert choose(model="big", messages=SIMPLE).model == "big"        # no classifier second-guessing
    assert choose(model="tiny", messages=CODE, fabric_tier="small").by == "model"
    refused(400, "large-tier but fabric_tier=small", model="big", fabric_tier="small")
    assert refused(404, "`gpt-9` does not exist", model="gpt-9").code == "model_not_found"
    refused(400, "model must be a string", model=7)


def test_tier_hints_pick_the_tier():
    assert (choose(fabric_tier="large").model, choose(fabric_tier="small").model) == ("big", "tiny")
    assert choose(fabric_tier="large").by == "hint"
    refused(400, "fabric_tier must be one of", fabric_tier="huge")
    assert choose_model({"messages": SIMPLE}, CATALOG, RULES).model == "tiny"  # no model: auto


def test_the_classifier_decides_auto():
    simple, code = choose(), choose(messages=CODE)
    assert (simple.model, simple.by) == ("tiny", "classifier")
    assert code.model == "big" and "code" in code.reasons and code.score >= RULES.threshold


def test_constraints_are_hard_and_auto_stays_inside_them():
    # the large model has no edge replica: an explicit large request pinned to the edge is refused
    err = refused(503, "no large-tier model can serve this request (privacy=edge)",
                  fabric_tier="large", fabric_privacy="edge")
    assert err.code == "no_capacity"
    refused(503, "(region=edge)", fabric_tier="large", fabric_region="edge")
    # ... while auto lets the fabric serve complex work on the small model there
    assert choose(messages=CODE, fabric_privacy="edge").model == "tiny"
    assert choose(messages=CODE, fabric_region="cloud").model == "big"
    refused(503, "no model can serve this request (region=mars)", fabric_region="mars")
    assert choose(model="big", fabric_privacy="edge").model == "big"  # the engine's guard refuses it
    assert choose(fabric_region="").model == "tiny"                   # an empty pin is no pin
    # a fabric with one model: auto always lands on it
    assert choose(messages=CODE, catalog=[SMALL]).model == "tiny"


def test_header_hints_fill_metadata_and_the_endpoint_region_is_stamped_first():
    body = with_hints({"model": "auto", "metadata": {"fabric_tier": "small"}},
                      {"x-fabric-tier": "large", "x-fabric-privacy": "edge"}, region="edge")
    assert list(body) == ["metadata", "model"]                        # hints lead the body
    assert body["metadata"] == {"fabric_tier": "small", "fabric_privacy": "edge",
                                "fabric_region": "edge"}             # metadata wins over headers
    with pytest.raises(ChoiceError, match="serves region 'edge'"):
        with_hints({"metadata": {"fabric_region": "cloud"}}, {}, region="edge")


def test_odd_bodies_never_break_the_choice():
    for body in ({"max_tokens": [None]}, {"messages": 5}, {"messages": [{"content": [{"text": 3}]}]},
                 {"messages": "hi"}, {"prompt": None, "tools": "x"}):
        assert choose_model({"model": "auto", **body}, CATALOG, RULES).model == "tiny"

    class Broken:
        def classify(self, request):
            raise RuntimeError("boom")

    assert choose_model({"model": "auto"}, CATALOG, Broken()).by == "fallback"
