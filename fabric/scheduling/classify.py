"""Complexity classifier for tier=auto: small model or large model, from transparent features.

Features are cheap to compute on a request body and easy to explain to a user who asks why
their request went where it did. The score is a weighted sum; ``large`` when it reaches the
threshold. Anything with a ``classify(request) -> Decision`` method can replace it (a learned
router, say): ``Classifier`` is the contract.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

Tier = Literal["small", "large"]
_CODE = re.compile(r"```|\bdef |\bclass |\bimport |#include|\bfunction\b|=>|;\s*$", re.M)
_MATH = re.compile(r"\\frac|\\sum|\bintegral\b|\bprove\b|\bderivative\b|\bequation\b|[=<>]\s*\d+\s*[*/^]", re.I)
_JSON = re.compile(r"\bjson\b|\{\s*\"", re.I)


class Features(BaseModel):
    prompt_chars: int
    turns: int
    max_tokens: int
    code: bool
    math: bool
    json_output: bool
    tools: bool


class Decision(BaseModel):
    tier: Tier
    score: float
    reasons: list[str]


class Classifier(Protocol):
    def classify(self, request: dict[str, Any]) -> Decision: ...


def _text(request: dict[str, Any]) -> tuple[str, int]:
    if isinstance(request.get("prompt"), str):
        return request["prompt"], 1
    parts, turns = [], 0
    messages = request.get("messages")
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        turns += m.get("role") == "user"
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts += [p["text"] for p in c if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(parts), turns


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def features(request: dict[str, Any]) -> Features:
    """Features of any JSON object (a malformed field counts as absent: the engine refuses it)."""
    text, turns = _text(request)
    rf = request.get("response_format")
    return Features(
        prompt_chars=len(text), turns=turns,
        max_tokens=_count(request.get("max_tokens")) or _count(request.get("max_completion_tokens")),
        code=bool(_CODE.search(text)), math=bool(_MATH.search(text)),
        json_output=bool(isinstance(rf, dict) and rf.get("type", "text") != "text") or bool(_JSON.search(text)),
        tools=bool(request.get("tools")))


class RuleClassifier(BaseModel):
    """Score = Σ weights of the features present; large when score >= threshold."""

    model_config = ConfigDict(extra="forbid")

    long_prompt_chars: int = 6000
    deep_conversation_turns: int = 6
    long_output_tokens: int = 1024
    weights: dict[str, float] = Field(default_factory=lambda: {
        "long_prompt": 0.4, "deep_conversation": 0.3, "long_output": 0.3, "code": 0.5,
        "math": 0.5, "json_output": 0.2, "tools": 0.4})
    threshold: float = 0.5

    def classify(self, request: dict[str, Any]) -> Decision:
        f = features(request)
        present = {
            "long_prompt": f.prompt_chars >= self.long_prompt_chars,
            "deep_conversation": f.turns >= self.deep_conversation_turns,
            "long_output": f.max_tokens >= self.long_output_tokens,
            "code": f.code, "math": f.math, "json_output": f.json_output, "tools": f.tools}
        reasons = [k for k, on in present.items() if on]
        score = round(sum(self.weights.get(k, 0.0) for k in reasons), 3)
        return Decision(tier="large" if score >= self.threshold else "small", score=score,
                        reasons=reasons)


def load_classifier(path: str, params: dict[str, Any] | None = None) -> Classifier:
    """``module:Class`` built with ``params``; ValueError says what is wrong with either."""
    module, _, name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"classifier {path!r} cannot be loaded: {exc}") from None
    try:
        built = cls(**(params or {}))
    except Exception as exc:
        raise ValueError(f"classifier {path!r} rejected its parameters: {exc}") from None
    if not callable(getattr(built, "classify", None)):
        raise ValueError(f"classifier {path!r} has no classify(request) method")
    return built
