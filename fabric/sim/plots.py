"""PNG plots of a run: who served the traffic over time, with the grid's curtailments marked.

matplotlib with the Agg backend, imported only here and only when a plot is asked for, so the
simulator itself runs without a display or matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fabric.sim.engine import Timeline

TOP_SITES = 12   # stacked plot: the sites that served most, the rest as "other"
PANELS = 16      # small multiples: one panel per site, at most this many


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def traffic_plots(timeline: Timeline, sites: list[str], curtailments: list[tuple[str, float, float, float]],
                  out_dir: str | Path, title: str) -> list[Path]:
    """``traffic_share.png`` (stacked shares, every curtailment shaded) and ``sites.png`` (each
    busy site's share with its own curtailments). Returns the files written."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t, shares = timeline.shares()
    if not len(t):
        raise ValueError("nothing to plot: the run served no requests")
    scale, unit = (3600, "h") if t[-1] > 3 * 3600 else (1, "s")
    x = t / scale
    order = np.argsort(-shares.sum(axis=0), kind="stable")
    top = [i for i in order[:TOP_SITES] if shares[:, i].any()]
    stacks = [shares[:, i] for i in top]
    labels = [sites[i] for i in top]
    rest = shares.sum(axis=1) - sum(stacks, start=np.zeros(len(t)))
    if len(sites) > len(top) and rest.any():
        stacks.append(rest)
        labels.append(f"other ({len(sites) - len(top)} sites)")

    fig, ax = plt.subplots(figsize=(12, 5))
    ax.stackplot(x, stacks, labels=labels, step="post")
    curtailments = [c for c in curtailments if c[1] < t[-1] + timeline.bin_s and c[2] > 0]
    for i, (_, start, end, _) in enumerate(curtailments):
        ax.axvspan(start / scale, end / scale, color="red", alpha=0.15, lw=0,
                   label="curtailment (any site)" if i == 0 else None)
    xlim = (x[0], x[-1] + timeline.bin_s / scale)
    ax.set(xlabel=f"simulated time ({unit})", ylabel="share of requests served", ylim=(0, 1),
           xlim=xlim, title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    files = [out / "traffic_share.png"]
    fig.savefig(files[0], dpi=110, bbox_inches="tight")
    plt.close(fig)

    panels = top[:PANELS]
    if panels:
        cols = min(4, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), sharex=True, sharey=True,
                                 squeeze=False)
        for ax, i in zip(axes.flat, panels):
            ax.step(x, shares[:, i], where="post", lw=0.8)
            for name, start, end, _ in curtailments:
                if name == sites[i]:
                    ax.axvspan(start / scale, end / scale, color="red", alpha=0.2, lw=0)
            cuts = ", ".join(f"×{c[3]:g}" for c in curtailments if c[0] == sites[i])
            ax.set_title(sites[i] + (f" (budget {cuts})" if cuts else ""), fontsize=8)
            ax.set_xlim(*xlim)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.supxlabel(f"simulated time ({unit}); red: curtailment")
        fig.supylabel("share of requests served")
        files.append(out / "sites.png")
        fig.savefig(files[1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return files
