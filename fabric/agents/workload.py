"""Agent workloads as data: what an agent does, step by step, described in YAML.

A workload is the behaviour of one kind of agent — how many steps a task takes, how long the
agent thinks (or waits on a tool) between steps, how its prompt grows (the conversation carries
its previous answers, so later steps share a prefix with earlier ones and with other agents'
system prompt), whether it fans out sub-agents, which fabric hints each step carries, and how
new agents arrive. Pure: no Ray, no I/O beyond reading the file; seeded, so a run is
reproducible.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

WORKLOAD_DIR = Path(__file__).resolve().parents[2] / "examples" / "workloads"


class Dist(BaseModel):
    """A non-negative random quantity. A bare number in YAML means a constant."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["const", "uniform", "exponential", "lognormal"] = "const"
    mean: float = Field(0.0, ge=0, description="const value, or the mean (exponential, lognormal)")
    low: float = Field(0.0, ge=0, description="uniform: lower bound")
    high: float = Field(0.0, ge=0, description="uniform: upper bound")
    sigma: float = Field(0.5, gt=0, description="lognormal: shape")

    @model_validator(mode="before")
    @classmethod
    def _number(cls, v):
        return {"kind": "const", "mean": v} if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _bounds(self):
        if self.kind == "uniform" and self.high < self.low:
            raise ValueError("uniform: high must be >= low")
        return self

    def sample(self, rng: random.Random) -> float:
        if self.kind == "const":
            return self.mean
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        if self.kind == "exponential":
            return rng.expovariate(1 / self.mean) if self.mean > 0 else 0.0
        mu = math.log(self.mean) - self.sigma ** 2 / 2 if self.mean > 0 else 0.0
        return rng.lognormvariate(mu, self.sigma) if self.mean > 0 else 0.0

    def sample_int(self, rng: random.Random, minimum: int = 0) -> int:
        return max(minimum, round(self.sample(rng)))


class StepHints(BaseModel):
    """Fabric hints sent in the request's ``metadata`` (see README, "hints")."""

    model_config = ConfigDict(extra="forbid")
    tier: Literal["auto", "small", "large"] = "auto"
    privacy: Literal["none", "region", "edge"] = "none"
    region: str | None = None
    max_latency_ms: float | None = Field(None, gt=0)
    deadline_s: float | None = Field(None, gt=0, description="deferrable: serve within this "
                                     "many seconds of the step's start")

    @model_validator(mode="after")
    def _region(self):
        if self.privacy == "region" and not self.region:
            raise ValueError("privacy: region needs a region")
        return self

    def metadata(self, now_s: float) -> dict[str, str]:
        meta = {"fabric_tier": self.tier, "fabric_privacy": self.privacy}
        if self.region:
            meta["fabric_region"] = self.region
        if self.max_latency_ms is not None:
            meta["fabric_max_latency_ms"] = f"{self.max_latency_ms:g}"
        if self.deadline_s is not None:
            meta["fabric_deadline"] = f"{now_s + self.deadline_s:.3f}"
        return meta


class Branching(BaseModel):
    """After a step, the agent may fan out sub-agents that start from its conversation so far
    (a shared prefix) and run concurrently; it waits for them, then goes on."""

    model_config = ConfigDict(extra="forbid")
    probability: float = Field(0.0, ge=0, le=1, description="per step")
    fanout: Dist = Field(default_factory=lambda: Dist(mean=2))
    steps: Dist = Field(default_factory=lambda: Dist(mean=2))
    max_depth: int = Field(1, ge=1, le=4)
    hints: StepHints | None = Field(None, description="default: the parent's hints")


class Arrival(BaseModel):
    """When each of the run's N agents starts: all at once, evenly over ``ramp_s`` (steady),
    in ``bursts`` equal groups over ``ramp_s`` (bursty), or with a start rate that follows a
    day-shaped sine over ``period_s`` (diurnal: quiet at the start, peak halfway)."""

    model_config = ConfigDict(extra="forbid")
    pattern: Literal["all_at_once", "steady", "bursty", "diurnal"] = "steady"
    ramp_s: float = Field(10.0, ge=0)
    bursts: int = Field(4, ge=1)
    period_s: float = Field(60.0, gt=0)

    def start_offsets(self, n: int, rng: random.Random) -> list[float]:
        if self.pattern == "all_at_once" or n == 0:
            return [0.0] * n
        if self.pattern == "steady":
            return [self.ramp_s * i / n for i in range(n)]
        if self.pattern == "bursty":
            return [self.ramp_s * (i * self.bursts // n) / self.bursts for i in range(n)]
        out = []  # diurnal: rejection-sample a rate ∝ 1 − cos(2πt/period)
        while len(out) < n:
            t = rng.uniform(0, self.period_s)
            if rng.uniform(0, 2) < 1 - math.cos(2 * math.pi * t / self.period_s):
                out.append(t)
        return sorted(out)


class Workload(BaseModel):
    """One kind of agent. Every agent runs tasks back to back (``tasks_per_agent``, or until
    the run's duration ends); a task is a conversation of ``steps`` chat completions."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    model: str | None = Field(None, description="default: the endpoint's first model")
    system_prompt: str = "You are an agent working on a multi-step task."
    system_prompt_words: int = Field(0, ge=0, description="shared filler after the system "
                                     "prompt: the prefix every agent of this workload shares")
    task_words: Dist = Field(default_factory=lambda: Dist(mean=20), description="first user message")
    followup_words: Dist = Field(default_factory=lambda: Dist(mean=12), description="each later "
                                 "user message (tool output, new instruction)")
    carry_answers: bool = Field(True, description="each step's prompt carries the previous answers")
    context_limit_tokens: int | None = Field(None, ge=64, description="compact (drop the oldest "
                                             "turns) before a prompt would pass this")
    steps: Dist = Field(default_factory=lambda: Dist(mean=4))
    max_tokens: Dist = Field(default_factory=lambda: Dist(mean=64))
    think_s: Dist = Field(default_factory=lambda: Dist(mean=0.5), description="between steps")
    tasks_per_agent: int | None = Field(1, ge=1, description="None: until the duration ends")
    temperature: float = Field(0.8, ge=0, le=2)
    hints: StepHints = Field(default_factory=StepHints)
    branching: Branching = Field(default_factory=Branching)
    arrival: Arrival = Field(default_factory=Arrival)


def load_workload(name_or_path: str | Path) -> Workload:
    """A workload file, or the name of one in ``examples/workloads`` (``coding`` →
    ``coding.yaml``). Raises ValueError with the reason for a missing or invalid file."""
    path = Path(name_or_path)
    if not path.exists():
        candidate = WORKLOAD_DIR / f"{name_or_path}.yaml"
        if not candidate.exists():
            known = ", ".join(sorted(p.stem for p in WORKLOAD_DIR.glob("*.yaml"))) or "none"
            raise ValueError(f"no workload {str(name_or_path)!r}: not a file, and not one of "
                             f"the examples ({known})")
        path = candidate
    try:
        data = yaml.safe_load(path.read_text()) or {}
        data.setdefault("name", path.stem)
        return Workload.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"invalid workload {path}: {exc}") from None


def list_workloads() -> list[Workload]:
    return [load_workload(p) for p in sorted(WORKLOAD_DIR.glob("*.yaml"))]


_WORDS = ("agent plan step cache token budget region site power carbon price queue replica "
          "schema record latency build test deploy review patch retry policy trace metric "
          "node batch prompt answer tool call result error summary context prefix").split()


def words(n: int, rng: random.Random) -> str:
    """Filler text of n words: cheap, deterministic under the seed."""
    return " ".join(rng.choice(_WORDS) for _ in range(n))
