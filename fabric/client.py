"""Layer 7 client SDK: run an agent workload against any OpenAI-compatible fabric endpoint.

An agent is a loop of chat completions in which every step carries the conversation so
far, previous answers included — the shape of real agent traffic (growing prompts with a
shared prefix). Every step is measured from the client's side: TTFT, latency, the usage
the server reports, and the region/site that served it (``x-fabric-region`` header).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import openai
from pydantic import BaseModel, Field

SYSTEM_PROMPT = ("You are a planning agent in a multi-step task. Each turn, read the previous "
                 "answer, then propose the next concrete step.")
TASKS = ["Plan a data migration for a billing service.", "Triage a failing nightly build.",
         "Draft a rollout plan for a new cache layer.", "Summarise yesterday's incident report.",
         "Design a schema for usage records.", "Review a pull request that adds retries."]


class AgentWorkload(BaseModel):
    """N concurrent agents × M steps; each step's prompt carries the previous answers."""

    agents: int = Field(16, ge=1, le=100_000)
    steps: int = Field(6, ge=1, le=1000)
    max_tokens: int = Field(64, ge=1)
    model: str = "tiny-llama"
    temperature: float = Field(0.8, ge=0)
    session_affinity: bool = Field(True, description="send x-session-id: an agent's steps "
                                   "stay on one replica (its prefix cache)")


@dataclass
class StepResult:
    agent: int
    step: int
    ok: bool
    region: str = ""
    site: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = math.nan
    latency_s: float = math.nan
    error: str = ""
    started_s: float = 0.0  # since the workload started


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); NaN for no values."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _shares(results: list[StepResult], attr: str) -> dict[str, float]:
    counts = Counter(getattr(r, attr) or "?" for r in results)
    return {k: round(v / len(results), 3) for k, v in sorted(counts.items())} if results else {}


@dataclass
class WorkloadReport:
    results: list[StepResult]
    wall_s: float
    events: list[dict] = field(default_factory=list)  # e.g. a power event: {"at_s", "what"}
    summary: dict = field(init=False)

    def __post_init__(self) -> None:
        ok = [r for r in self.results if r.ok]
        regions = Counter(r.region or "?" for r in ok)
        errors = Counter(r.error.split(":")[0] for r in self.results if not r.ok)
        tokens_out = sum(r.completion_tokens for r in ok)
        self.summary = {
            "requests": len(self.results), "succeeded": len(ok), "errors": sum(errors.values()),
            "tokens_in": sum(r.prompt_tokens for r in ok), "tokens_out": tokens_out,
            "wall_s": round(self.wall_s, 3),
            "tokens_per_s": round(tokens_out / self.wall_s, 1) if self.wall_s > 0 else 0.0,
            "ttft_p50_ms": _ms(percentile([r.ttft_s for r in ok], 50)),
            "ttft_p99_ms": _ms(percentile([r.ttft_s for r in ok], 99)),
            "latency_p50_ms": _ms(percentile([r.latency_s for r in ok], 50)),
            "latency_p99_ms": _ms(percentile([r.latency_s for r in ok], 99)),
            "region_share": {k: round(v / len(ok), 3) for k, v in sorted(regions.items())} if ok else {},
            "region_requests": dict(sorted(regions.items())),
            "site_share": _shares(ok, "site"),
            "error_kinds": dict(errors),
        }
        for event in self.events:  # traffic before an event, and once it has taken effect
            after = [r for r in ok if r.started_s >= event.get("effective_s", event["at_s"])]
            event["site_share_before"] = _shares([r for r in ok if r.started_s < event["at_s"]], "site")
            event["site_share_after"] = _shares(after, "site")
            event["requests_after"] = len(after)
        self.summary["events"] = self.events

    def to_dict(self) -> dict:
        return {"summary": self.summary, "steps": [asdict(r) for r in self.results]}

    @staticmethod
    def _fmt(shares: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.0%}" for k, v in shares.items()) or "-"

    def render(self, console=None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        s = self.summary
        table = Table(title="agent workload report", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        rows = [("requests", f"{s['requests']} ({s['succeeded']} ok, {s['errors']} errors)"),
                ("tokens in / out", f"{s['tokens_in']:,} / {s['tokens_out']:,}"),
                ("wall time", f"{s['wall_s']:.1f} s"),
                ("tokens/s (out)", f"{s['tokens_per_s']:,.1f}"),
                ("TTFT p50 / p99", f"{s['ttft_p50_ms']} / {s['ttft_p99_ms']} ms"),
                ("latency p50 / p99", f"{s['latency_p50_ms']} / {s['latency_p99_ms']} ms")]
        for region, share in s["region_share"].items():
            rows.append((f"region {region}", f"{s['region_requests'][region]} req ({share:.0%})"))
        rows.append(("share per site", self._fmt(s["site_share"])))
        for event in s["events"]:
            rows.append((f"at {event['at_s']:.1f} s", event["what"]))
            rows.append(("  sites before", self._fmt(event["site_share_before"])))
            rows.append((f"  sites after (from {event.get('effective_s', event['at_s']):.1f} s)",
                         f"{self._fmt(event['site_share_after'])} of {event['requests_after']} req"))
        for kind, count in s["error_kinds"].items():
            rows.append((f"error {kind}", str(count)))
        for k, v in rows:
            table.add_row(k, v)
        console.print(table)


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 1)


async def _agent_step(client: openai.AsyncOpenAI, wl: AgentWorkload, agent: int, step: int,
                      messages: list[dict], t0: float) -> tuple[StepResult, str]:
    start = time.perf_counter()
    result = StepResult(agent=agent, step=step, ok=False, started_s=round(start - t0, 4))
    text: list[str] = []
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=wl.model, messages=messages, max_tokens=wl.max_tokens, stream=True,
            temperature=wl.temperature, stream_options={"include_usage": True},
            extra_headers={"x-session-id": f"agent-{agent}"} if wl.session_affinity else None)
        result.region = raw.headers.get("x-fabric-region", "")
        result.site = raw.headers.get("x-fabric-site", "")
        stream = raw.parse()
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if math.isnan(result.ttft_s):
                    result.ttft_s = time.perf_counter() - start
                text.append(chunk.choices[0].delta.content)
            if chunk.usage:
                result.prompt_tokens = chunk.usage.prompt_tokens
                result.completion_tokens = chunk.usage.completion_tokens
        result.latency_s = time.perf_counter() - start
        result.ok = True
    except openai.APIStatusError as exc:
        result.error = f"http {exc.status_code}: {exc.message}"
    except Exception as exc:  # a step failure is a recorded result, never a crashed workload
        result.error = f"{type(exc).__name__}: {exc}"
    return result, "".join(text)


async def run_workload(base_url: str, workload: AgentWorkload, api_key: str = "fabric-local",
                       on_step: Callable[[StepResult], None] | None = None,
                       timeout_s: float = 300.0) -> WorkloadReport:
    """Run every agent concurrently; each runs its steps in order. Never raises on a failed
    step: the failure is recorded and the agent goes on with its conversation so far."""
    results: list[StepResult] = []

    async def agent(i: int, client: openai.AsyncOpenAI) -> None:
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"Task {i}: {TASKS[i % len(TASKS)]}"}]
        for step in range(workload.steps):
            result, answer = await _agent_step(client, workload, i, step, messages, start)
            results.append(result)
            if on_step:
                on_step(result)
            if result.ok:
                messages = messages + [{"role": "assistant", "content": answer},
                                       {"role": "user", "content": f"Step {step + 2}: continue."}]

    start = time.perf_counter()
    async with openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                                  max_retries=0) as client:
        await asyncio.gather(*(agent(i, client) for i in range(workload.agents)))
    return WorkloadReport(results=sorted(results, key=lambda r: (r.agent, r.step)),
                          wall_s=time.perf_counter() - start)


def run_with_progress(base_url: str, workload: AgentWorkload, console=None,
                      on_step: Callable[[StepResult, int], None] | None = None,
                      api_key: str = "fabric-local") -> WorkloadReport:
    """Run a workload with a live rich progress bar. ``on_step(result, steps_done)`` runs
    after each step (the demo uses it to raise a power event part-way through)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    counts = Counter()
    with Progress(TextColumn("[bold]agents[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        task = progress.add_task("", total=workload.agents * workload.steps)

        def step_done(r: StepResult) -> None:
            counts["ok" if r.ok else "err"] += 1
            counts[r.region or "?"] += r.ok
            counts["tokens"] += r.completion_tokens
            progress.update(task, advance=1, description=(
                f"{counts['tokens']:,} tokens out, {counts['err']} errors"))
            if on_step_outer:
                on_step_outer(r, counts["ok"] + counts["err"])

        on_step_outer = on_step
        return asyncio.run(run_workload(base_url, workload, api_key=api_key, on_step=step_done))
