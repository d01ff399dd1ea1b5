"""``fabric simulate``: one call from a spec and a trace (or a synthetic load) to a report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from fabric.scheduling.policies import known_policy
from fabric.sim.engine import SimConfig, Simulator
from fabric.sim.fleet import Fleet
from fabric.sim.plots import traffic_plots
from fabric.sim.results import SimResult
from fabric.sim.scenario import scale_spec
from fabric.sim.traces import RequestBatch, SyntheticTrace, open_trace
from fabric.spec import default_spec_path, load_spec

SYNTHETIC = ("poisson", "bursty", "diurnal")
DEFAULT_REQUESTS = 100_000
HTML_BINS = 240          # time bins of the --html page


def capacity_rps(fleet: Fleet, prompt_tokens: float, output_tokens: float) -> float:
    """Requests/s the fleet serves at full power for requests of this mean size."""
    serving = fleet.replicas > 0
    work = prompt_tokens / fleet.prefill_tok_s[serving] + output_tokens / fleet.decode_tok_s[serving]
    return float((1.0 / work).sum())


class _Head:
    """The first ``n`` requests of a trace."""

    def __init__(self, trace, n: int):
        self.trace, self.n = trace, n
        self.describe = f"{trace.describe}[:{n}]"

    @property
    def tenants(self):
        return self.trace.tenants

    @property
    def classes(self):
        return self.trace.classes

    def batches(self) -> Iterator[RequestBatch]:
        left = self.n
        for batch in self.trace.batches():
            if left <= 0:
                return
            yield batch.slice(0, left) if len(batch) > left else batch
            left -= len(batch)


def simulate(spec_path: str | Path | None = None, trace: str | Path | None = None,
             synthetic: str = "diurnal", requests: int | None = None, rate: float | None = None,
             load: float = 0.6, sites: int | None = None, policy: str | None = None, seed: int = 0,
             tick_s: float | None = None, slo_ttft_s: float | None = None,
             plot_dir: str | Path | None = None, html: str | Path | None = None,
             json_out: bool = False,
             console: Console | None = None) -> SimResult:
    """Simulate the fabric of ``spec_path`` (default: deployments/local.yaml), scaled to
    ``sites`` sites if given, under ``policy`` (default: the spec's).

    Arrivals come from ``trace`` (CSV or Mooncake JSONL; at most ``requests`` of them) or else
    from a seeded ``synthetic`` generator (poisson, bursty, diurnal) of ``requests`` requests
    (default 100,000) at ``rate`` requests/s (default: ``load`` × the fleet's capacity).
    Prints the report (tables, or JSON with ``json_out``) to ``console`` and writes traffic
    plots to ``plot_dir`` and the live page's views of the run to ``html`` when given.
    """
    if policy is not None:
        known_policy(policy)  # a registered name or module:Class, else a ValueError
    if requests is not None and requests < 1:
        raise ValueError("requests must be at least 1")
    spec = load_spec(spec_path or default_spec_path())
    if sites is not None:
        spec = scale_spec(spec, sites)
    config = SimConfig.from_spec(spec, policy=policy, tick_s=tick_s, slo_ttft_s=slo_ttft_s)
    sim = Simulator(spec, config, record_bins=HTML_BINS if html is not None else None)
    if trace is not None:
        source = open_trace(trace)
        if requests is not None:
            source = _Head(source, requests)
    else:
        if synthetic not in SYNTHETIC:
            raise ValueError(f"unknown synthetic load {synthetic!r}; known: {', '.join(SYNTHETIC)}")
        if not 0 < load <= 10:
            raise ValueError("load must be in (0, 10]")
        shape = SyntheticTrace(kind=synthetic, requests=requests or DEFAULT_REQUESTS, rate_per_s=1.0,
                               seed=seed)
        if rate is None:
            capacity = capacity_rps(sim.fleet, *shape.mean_tokens())
            if capacity <= 0:
                raise ValueError(f"{spec.name}: no site hosts the model, so nothing can be served")
            rate = load * capacity
        if rate <= 0:
            raise ValueError("rate must be > 0")
        source = shape.model_copy(update={"rate_per_s": rate})
    result = sim.run(source)
    if plot_dir is not None:
        files = traffic_plots(sim.timeline, sim.fleet.names, sim.curtailments(), plot_dir,
                              f"{result.policy} on {result.spec}: traffic share by site")
        result.plots = [str(f) for f in files]
    if html is not None:
        from fabric.sim.html import write_html

        result.plots.append(str(write_html(sim.recorder, result, html)))
    result.print(console or Console(), json_out=json_out)
    return result
