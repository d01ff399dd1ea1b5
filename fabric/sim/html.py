"""``fabric simulate --html OUT.html``: the live page's views of a simulated run, one file.

The file is the live page itself (``fabric/layers/ui.html``) with the run embedded as data:
each time bin a state of the same shape the page reads from the live fabric, replayed with a
slider. Self-contained: no script, style or font from anywhere else, so it opens offline and
can be mailed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fabric.sim.record import Recorder
from fabric.sim.results import SimResult

MAX_SITES = 40   # the page draws at most this many sites: the busiest
REPLAY_PREFIX = "<script>window.FABRIC_REPLAY = "


def _clean(value):
    """NaN and infinities become null (the embedded data stays valid JSON); floats keep six
    significant digits (the file stays small)."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def summary_rows(result: SimResult) -> list[tuple[str, str]]:
    return [(k, v) for k, v in (
        ("trace", result.trace),
        ("sites", f"{result.sites}" + (f" (the {MAX_SITES} busiest drawn)" if result.sites > MAX_SITES else "")),
        ("simulated time", f"{result.duration_s:,.0f} s"),
        ("arrivals / served / dropped", f"{result.arrivals:,} / {result.served:,} / {result.dropped:,}"),
        (f"SLO attainment (TTFT ≤ {result.slo_ttft_s:g} s)", f"{result.slo_attainment:.2%}"),
        ("TTFT p50 / p99", f"{result.ttft_p50_s:.3f} / {result.ttft_p99_s:.3f} s"),
        ("energy", f"{result.energy_mwh:,.4f} MWh"),
        ("energy cost", f"${result.energy_cost_usd:,.2f} (${result.usd_per_mtok:.4f}/Mtok)"),
        ("carbon", f"{result.carbon_kg:,.1f} kg CO2"))]


def read_replay(path: str | Path) -> dict:
    """The run a page written by ``write_html`` holds (title, summary, frames)."""
    html = Path(path).read_text()
    start = html.index(REPLAY_PREFIX) + len(REPLAY_PREFIX)
    return json.loads(html[start:html.index(";</script>", start)])


def write_html(recorder: Recorder, result: SimResult, out: str | Path) -> Path:
    """Write the replay page for ``result`` (recorded by ``recorder``) to ``out``."""
    from fabric.layers.ui import page

    frames = recorder.frames(result.policy, top=MAX_SITES)
    if not frames:
        raise ValueError("nothing to show: the run has no time bin")
    title = f"{result.policy} on {result.spec} ({result.sites} sites), {result.trace}"
    data = {"title": title, "summary": summary_rows(result), "start": frames[0]["time"] - frames[0]["bin_s"],
            "end": frames[-1]["time"], "frames": frames, "actions_dropped": recorder.actions_dropped}
    blob = json.dumps(_clean(data), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    html = page()
    marker = '<script>\n"use strict";'
    if marker not in html:
        raise RuntimeError("the live page's script is not where the replay expects it")
    html = html.replace(marker, f"{REPLAY_PREFIX}{blob};</script>\n{marker}", 1)
    path = Path(out)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    path.write_text(html)
    return path
