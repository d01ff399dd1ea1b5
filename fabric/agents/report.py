"""The swarm's final report: what the agents got, per workload and per tier, and — where the
fabric meters — what each task cost in dollars, joules and grams of CO2. Pure aggregation
over Step records and (optionally) the ledger's usage rows; no Ray."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict

from pydantic import BaseModel, Field

from fabric.agents.agent import Step
from fabric.client import percentile


class Group(BaseModel):
    steps: int = 0
    ok: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None


class Costs(BaseModel):
    """From the fabric's own usage records of this run's requests."""

    records: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_completion_tokens: int = 0   # the largest answer of any one request
    billed_usd: float = 0.0
    energy_j: float = 0.0
    carbon_g: float = 0.0
    per_task_usd: float | None = None
    per_task_j: float | None = None
    per_task_gco2: float | None = None


class SwarmReport(BaseModel):
    run_id: str
    workload: str
    agents: int
    swarms: int
    wall_s: float
    stopped_early: bool = False
    tasks_completed: int = 0
    steps: int = 0
    succeeded: int = 0
    refused: int = 0
    errors: int = 0
    cancelled: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    by_workload: dict[str, Group] = Field(default_factory=dict)
    by_tier: dict[str, Group] = Field(default_factory=dict)
    site_share: dict[str, float] = Field(default_factory=dict)
    refusals: dict[str, int] = Field(default_factory=dict, description="'status: message' -> count")
    costs: Costs | None = None
    swarm_usage: list[dict] = Field(default_factory=list, description="each swarm process's CPU and memory")

    @property
    def requests_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s else 0.0

    def render(self, console=None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        head = Table(title=f"agent swarm report — {self.workload} ({self.run_id})",
                     show_header=False, title_justify="left")
        head.add_column(style="bold")
        head.add_column(justify="right")
        rows = [("agents / swarms", f"{self.agents} / {self.swarms}"),
                ("wall time", f"{self.wall_s:.1f} s" + (" (stopped early)" if self.stopped_early else "")),
                ("tasks completed", f"{self.tasks_completed:,}"),
                ("steps", f"{self.steps:,} ({self.succeeded} ok, {self.refused} refused, "
                          f"{self.errors} errors, {self.cancelled} cancelled)"),
                ("tokens in / out", f"{self.tokens_in:,} / {self.tokens_out:,}"),
                ("requests/s", f"{self.requests_per_s:,.1f}"),
                ("share per site", ", ".join(f"{k} {v:.0%}" for k, v in self.site_share.items()) or "-")]
        for reason, n in self.refusals.items():
            rows.append((f"refused {reason[:60]}", str(n)))
        if self.costs and self.costs.records:
            c = self.costs
            rows.append(("metered requests", f"{c.records:,}"))
            rows.append(("billed / energy / carbon", f"${c.billed_usd:.6f} / {c.energy_j:,.1f} J / {c.carbon_g:.3f} g"))
            if c.per_task_usd is not None:
                rows.append(("per task", f"${c.per_task_usd:.6f} / {c.per_task_j:,.2f} J / {c.per_task_gco2:.4f} gCO2"))
        for u in self.swarm_usage:
            rows.append((f"swarm pid {u.get('pid')}", f"{u.get('cpu_cores', 0):.2f} cores, {u.get('rss_mib', 0):.0f} MiB"))
        for k, v in rows:
            head.add_row(k, v)
        console.print(head)
        for title, groups in (("per workload", self.by_workload), ("per tier", self.by_tier)):
            t = Table(title=title, title_justify="left")
            for col in ("", "steps", "ok", "tokens in", "tokens out", "TTFT p50/p99 ms", "step p50/p99 ms"):
                t.add_column(col, justify="right" if col else "left")
            for name, g in groups.items():
                t.add_row(name, str(g.steps), str(g.ok), f"{g.tokens_in:,}", f"{g.tokens_out:,}",
                          f"{g.ttft_p50_ms} / {g.ttft_p99_ms}", f"{g.latency_p50_ms} / {g.latency_p99_ms}")
            console.print(t)


def _ms(v: float) -> float | None:
    return None if math.isnan(v) else round(v * 1000, 1)


def _group(steps: list[Step]) -> Group:
    ok = [s for s in steps if s.ok]
    ttft = [s.ttft_s for s in ok if s.ttft_s >= 0]
    lat = [s.latency_s for s in ok]
    return Group(steps=len(steps), ok=len(ok), tokens_in=sum(s.prompt_tokens for s in ok),
                 tokens_out=sum(s.completion_tokens for s in ok),
                 ttft_p50_ms=_ms(percentile(ttft, 50)), ttft_p99_ms=_ms(percentile(ttft, 99)),
                 latency_p50_ms=_ms(percentile(lat, 50)), latency_p99_ms=_ms(percentile(lat, 99)))


def build_report(run_id: str, workload: str, agents: int, steps: list[Step], tasks: int,
                 wall_s: float, swarm_usage: list[dict], usage_rows: list[dict] | None = None,
                 stopped_early: bool = False) -> SwarmReport:
    live = [s for s in steps if s.error != "cancelled"]
    ok = [s for s in live if s.ok]
    by_w, by_t = defaultdict(list), defaultdict(list)
    for s in live:
        by_w[s.workload].append(s)
        by_t[s.tier].append(s)
    sites = Counter(s.site or "?" for s in ok)
    refusals = Counter(f"{s.status}: {s.error}" for s in live if not s.ok and s.status >= 400)
    errors = Counter(s.error.split(":")[0] for s in live if not s.ok and s.status < 400)
    report = SwarmReport(
        run_id=run_id, workload=workload, agents=agents, swarms=len(swarm_usage),
        wall_s=round(wall_s, 3), stopped_early=stopped_early, tasks_completed=tasks,
        steps=len(live), succeeded=len(ok), refused=sum(refusals.values()),
        errors=sum(errors.values()), cancelled=len(steps) - len(live),
        tokens_in=sum(s.prompt_tokens for s in ok), tokens_out=sum(s.completion_tokens for s in ok),
        by_workload={k: _group(v) for k, v in sorted(by_w.items())},
        by_tier={k: _group(v) for k, v in sorted(by_t.items())},
        site_share={k: round(v / len(ok), 3) for k, v in sorted(sites.items())} if ok else {},
        refusals=dict(refusals.most_common()) | {f"error {k}": v for k, v in errors.items()},
        swarm_usage=swarm_usage)
    if usage_rows is not None:
        c = Costs(records=len(usage_rows),
                  prompt_tokens=sum(r["prompt_tokens"] for r in usage_rows),
                  completion_tokens=sum(r["completion_tokens"] for r in usage_rows),
                  max_completion_tokens=max((r["completion_tokens"] for r in usage_rows), default=0),
                  billed_usd=round(sum(r["billed_usd"] for r in usage_rows), 9),
                  energy_j=round(sum(r["energy_j"] for r in usage_rows), 3),
                  carbon_g=round(sum(r["carbon_g"] for r in usage_rows), 6))
        if tasks:
            c.per_task_usd = round(c.billed_usd / tasks, 9)
            c.per_task_j = round(c.energy_j / tasks, 3)
            c.per_task_gco2 = round(c.carbon_g / tasks, 6)
        report.costs = c
    return report


def step_rows(steps: list[Step]) -> list[dict]:
    return [asdict(s) for s in steps]
