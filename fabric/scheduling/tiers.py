"""Which model serves a request: the request's own choice, its tier hint, or the classifier.

Pure (no Ray, no I/O): the gateway calls it once per request. The rules, in order:

1. ``model`` names a model of the fabric: that model. A ``fabric_tier`` of small or large
   that contradicts it is a 400 (the request asks for two different things).
2. ``model`` is ``auto`` (or absent): the tier is ``fabric_tier``; ``auto`` (the default)
   asks the complexity classifier. An explicit tier with no model of that tier where the
   request may run is a 503 that says so; a classifier's choice with none falls back to the
   other tier — ``auto`` lets the fabric decide within the request's constraints.
3. Constraints are hard: a model is a candidate only if it has replicas where the request may
   run (privacy=edge: an edge site; a pinned region: that region).
4. Among candidates of the tier, the first in the spec's order wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from fabric.scheduling.classify import Classifier

AUTO = "auto"
TIERS = ("small", "large")
HINT_TIERS = (AUTO, *TIERS)


@dataclass(frozen=True)
class CatalogModel:
    """A model as the gateway knows it: its tier and where its replicas run."""

    id: str
    tier: str
    regions: frozenset[str] = frozenset()
    edge: bool = False        # has replicas on an edge site

    def can_serve(self, privacy: str, region: str | None) -> bool:
        if privacy == "edge" and not self.edge:
            return False
        return region is None or region in self.regions


@dataclass(frozen=True)
class Choice:
    model: str
    tier: str
    by: str                   # "model" | "hint" | "classifier"
    score: float | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)


class ChoiceError(ValueError):
    """An OpenAI-style refusal: status, message, the parameter at fault, an error code."""

    def __init__(self, status: int, message: str, param: str | None, code: str):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def choose_model(request: dict[str, Any], catalog: Sequence[CatalogModel],
                 classifier: Classifier) -> Choice:
    metadata = request.get("metadata") if isinstance(request.get("metadata"), dict) else {}
    tier = metadata.get("fabric_tier", AUTO)
    if tier not in HINT_TIERS:
        raise ChoiceError(400, f"fabric_tier must be one of {', '.join(HINT_TIERS)}",
                          "metadata", "invalid_hint")
    privacy = metadata.get("fabric_privacy", "none")
    region = metadata.get("fabric_region")
    region = region if isinstance(region, str) and region else None  # as the router reads it
    where = ", ".join(f"{k}={v}" for k, v in (("privacy", privacy), ("region", region))
                      if v not in (None, "none"))
    name = request.get("model", AUTO)
    if name is None:
        name = AUTO
    if not isinstance(name, str):
        raise ChoiceError(400, "model must be a string", "model", "invalid_type")

    if name != AUTO:
        named = next((m for m in catalog if m.id == name), None)
        if named is None:
            known = ", ".join([AUTO, *(m.id for m in catalog)])
            raise ChoiceError(404, f"The model `{name}` does not exist (models: {known})",
                              "model", "model_not_found")
        if tier != AUTO and tier != named.tier:
            raise ChoiceError(400, f"model {name!r} is {named.tier}-tier but fabric_tier={tier}: "
                              f"name the model or the tier (model: auto)", "metadata", "invalid_hint")
        # where it may run is the router's and the engine's to enforce: the engine's guard
        # refuses (and records the refusal on the ledger) if no replica there can serve it
        return Choice(model=named.id, tier=named.tier, by="model")

    allowed = [m for m in catalog if m.can_serve(privacy, region)]
    if tier != AUTO:
        pick = next((m for m in allowed if m.tier == tier), None)
        if pick is None:
            raise ChoiceError(503, f"no {tier}-tier model can serve this request"
                              + (f" ({where})" if where else ""), "metadata", "no_capacity")
        return Choice(model=pick.id, tier=tier, by="hint")
    if not allowed:
        raise ChoiceError(503, "no model can serve this request" + (f" ({where})" if where else ""),
                          "metadata", "no_capacity")
    try:
        decision = classifier.classify(request)
    except Exception:  # a classifier that fails on odd input must not fail the request
        return Choice(model=allowed[0].id, tier=allowed[0].tier, by="fallback")
    pick = next((m for m in allowed if m.tier == decision.tier), allowed[0])
    return Choice(model=pick.id, tier=pick.tier, by="classifier", score=decision.score,
                  reasons=tuple(decision.reasons))
