"""What a simulation reports: per site, per tenant and class, and for the whole fabric.

One pydantic model, so the CLI prints it as a table or as JSON and benchmarks compare runs
field by field. Latency percentiles come from log-spaced histograms (bounded memory).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

# Latency histogram: 80 log-spaced bins per decade from 1 ms to 100,000 s (about 3 % wide).
HIST_EDGES = np.logspace(-3, 5, 8 * 80 + 1)


def hist_add(hist: np.ndarray, values: np.ndarray) -> None:
    idx = np.clip(np.searchsorted(HIST_EDGES, values, side="right") - 1, 0, len(hist) - 1)
    hist += np.bincount(idx, minlength=len(hist))


def hist_quantile(hist: np.ndarray, q: float) -> float:
    total = hist.sum()
    if not total:
        return 0.0
    i = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(np.sqrt(HIST_EDGES[i] * HIST_EDGES[i + 1]))


class SiteResult(BaseModel):
    """``routed`` = kept + overflow_out + dropped (requests the table sent here first);
    ``served`` = kept + overflow_in."""

    name: str
    region: str
    gpu_type: str
    replicas: int
    routed: int
    served: int
    kept: int
    overflow_in: int
    overflow_out: int
    dropped: int
    slo_met: int
    output_tokens: int
    utilisation: float = Field(description="mean busy share of the site's serving capacity")
    curtailed_s: float
    parked_s: float = 0.0
    engines_released: float = Field(0.0, description="mean share of its engines released (parked)")
    energy_mwh: float
    energy_cost_usd: float
    carbon_kg: float


class GroupResult(BaseModel):
    arrivals: int
    served: int
    dropped: int
    slo_met: int


class SimResult(BaseModel):
    spec: str
    policy: str
    trace: str
    sites: int
    tick_s: float
    duration_s: float
    arrivals: int
    served: int
    dropped: int
    slo_met: int
    slo_attainment: float = Field(description="share of arrivals served within the SLO")
    slo_ttft_s: float
    slo_latency_s: float | None
    goodput_rps: float = Field(description="requests/s served within the SLO")
    goodput_tokens_per_s: float = Field(description="output tokens/s of requests within the SLO")
    ttft_p50_s: float
    ttft_p99_s: float
    latency_p50_s: float
    latency_p99_s: float
    energy_mwh: float
    energy_cost_usd: float
    carbon_kg: float
    usd_per_mtok: float = Field(description="energy cost per million output tokens served")
    wall_s: float
    requests_per_s: float = Field(description="simulation speed: arrivals simulated per wall second")
    per_site: list[SiteResult]
    by_tenant: dict[str, GroupResult]
    by_class: dict[str, GroupResult]
    plots: list[str] = Field(default_factory=list)

    def outcome(self) -> dict:
        """Everything but how long the run took and where plots went: what a seed decides."""
        return self.model_dump(exclude={"wall_s", "requests_per_s", "plots"})

    def summary_table(self) -> Table:
        t = Table(title=f"simulation: {self.policy} on {self.spec} ({self.sites} sites), {self.trace}")
        t.add_column("metric")
        t.add_column("value", justify="right")
        slo = f"TTFT ≤ {self.slo_ttft_s:g} s" + (f", latency ≤ {self.slo_latency_s:g} s"
                                                  if self.slo_latency_s else "")
        rows = [
            ("simulated time", f"{self.duration_s:,.0f} s"),
            ("arrivals / served / dropped", f"{self.arrivals:,} / {self.served:,} / {self.dropped:,}"),
            (f"SLO attainment ({slo})", f"{self.slo_attainment:.2%}"),
            ("goodput", f"{self.goodput_rps:,.2f} req/s, {self.goodput_tokens_per_s:,.0f} tok/s"),
            ("TTFT p50 / p99", f"{self.ttft_p50_s:.3f} / {self.ttft_p99_s:.3f} s"),
            ("latency p50 / p99", f"{self.latency_p50_s:.3f} / {self.latency_p99_s:.3f} s"),
            ("energy", f"{self.energy_mwh:,.4f} MWh"),
            ("energy cost", f"${self.energy_cost_usd:,.2f} (${self.usd_per_mtok:.4f}/Mtok)"),
            ("carbon", f"{self.carbon_kg:,.1f} kg CO2"),
            ("simulation rate", f"{self.requests_per_s:,.0f} requests/s ({self.wall_s:.1f} s wall)"),
        ]
        for k, v in rows:
            t.add_row(k, v)
        return t

    def sites_table(self, top: int = 15) -> Table:
        shown = sorted(self.per_site, key=lambda s: -s.served)[:top]
        title = "per site" + (f" (top {top} of {len(self.per_site)} by served)" if len(self.per_site) > top else "")
        t = Table(title=title)
        for col in ("site", "gpu", "served", "ovf in/out", "dropped", "SLO", "util", "MWh", "$", "kgCO2"):
            t.add_column(col, justify="left" if col in ("site", "gpu") else "right")
        for s in shown:
            t.add_row(s.name, s.gpu_type, f"{s.served:,}", f"{s.overflow_in:,}/{s.overflow_out:,}",
                      f"{s.dropped:,}", f"{s.slo_met / s.served:.0%}" if s.served else "-",
                      f"{s.utilisation:.0%}", f"{s.energy_mwh:.3f}", f"{s.energy_cost_usd:,.2f}",
                      f"{s.carbon_kg:,.1f}")
        return t

    def print(self, console: Console | None = None, json_out: bool = False) -> None:
        console = console or Console()
        if json_out:
            console.print(self.model_dump_json(indent=2), markup=False, highlight=False, soft_wrap=True)
            return
        console.print(self.summary_table())
        console.print(self.sites_table())
        for p in self.plots:
            console.print(f"wrote: {p}")
