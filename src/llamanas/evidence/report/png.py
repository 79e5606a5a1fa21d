"""The matplotlib copy of every figure, written to ``figures/*.png`` (for papers, slides and READMEs).

Kept apart from the plotly figures because it needs its own library and back end; what each figure
plots comes from ``figures.py`` (the same ``Series``), only the drawing calls are here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llamanas.evidence.report.data import ReportData
from llamanas.evidence.report.figures import (
    AXIS_TITLES,
    CHANCE_RING,
    Series,
    front_series,
    hypervolume_xy,
    predictor_lines,
    predictor_metrics,
    quantized_series,
    runtime_series,
    skips_attention,
    xs,
)

LINESTYLES = {"solid": "-", "dot": ":", "dash": "--"}
WEIGHTS = {"faint": dict(alpha=0.5, markersize=4), "normal": {}, "wide": {}, "star": dict(markersize=14)}


def _mpl():
    # lazy: matplotlib only draws the PNGs, and Agg must be chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw(ax, s: Series, x: str) -> None:
    pts = s.drawn(x)
    if not pts:
        return
    ax.plot(
        xs(pts, x),
        [p.score for p in pts],
        marker=s.look.marker,
        linestyle=LINESTYLES[s.dash] if s.line else "none",
        color=s.look.color,
        label=s.png_name,
        **WEIGHTS[s.weight],
    )
    ch = [p for p in pts if p.at_chance]
    if ch:
        ax.scatter(
            xs(ch, x),
            [p.score for p in ch],
            s=160,
            facecolors="none",
            edgecolors="black",
            # One legend entry for the rings, however many series have points at chance.
            label=None if CHANCE_RING in ax.get_legend_handles_labels()[1] else CHANCE_RING,
        )


def png_front(data: ReportData, path: Path, x: str = "params") -> None:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(10.5, 5))
    for s in front_series(data, x, front_by=x):
        _draw(ax, s, x)
    ax.set_xlabel(AXIS_TITLES[x])
    ax.set_ylabel(data.score.label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the plot
    _save(plt, fig, path)


def _png_series(data: ReportData, series, x: str, path: Path) -> None:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(8, 5))
    for s in series:
        _draw(ax, s, x)
    ax.set_xlabel(AXIS_TITLES[x])
    ax.set_ylabel(data.score.label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def png_runtime(data: ReportData, path: Path) -> None:
    _png_series(data, runtime_series(data), "decode_ms", path)


def png_quantized(data: ReportData, path: Path) -> None:
    _png_series(data, quantized_series(data), "bytes", path)


def png_hypervolume(data: ReportData, path: Path) -> None:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*hypervolume_xy(data))
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume")
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def png_predictors(data: ReportData, path: Path) -> None:
    plt = _mpl()
    metrics = predictor_metrics(data) or ["kendall_tau"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for obj, loops, values in predictor_lines(data, metric):
            ax.plot(loops, values, marker="o", label=obj)
        ax.set_title(metric)
        ax.set_xlabel("loop")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(plt, fig, path)


def png_layers(stats: dict, sizes: Sequence[int], path: Path) -> None:
    plt = _mpl()
    bands = list(stats)
    fig, axes = plt.subplots(1 + len(bands), 1, figsize=(9, 2.6 * (1 + len(bands))), squeeze=False)
    n = len(stats[bands[0]]["kept"])
    ax = axes[0][0]
    for b in bands:
        ax.plot(range(n), stats[b]["kept"], marker="o", label=f"top {b}%")
        if skips_attention(stats):
            ax.plot(range(n), stats[b]["attention"], linestyle=":", label=f"attention | kept, top {b}%")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("P(kept)")
    ax.legend(fontsize=7, ncol=len(bands))
    for i, b in enumerate(bands, 1):
        ax = axes[i][0]
        im = ax.imshow(stats[b]["mlp"], aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis")
        ax.set_yticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_ylabel(f"top {b}%\nMLP size")
        fig.colorbar(im, ax=ax, fraction=0.02)
    axes[-1][0].set_xlabel("layer")
    _save(plt, fig, path)
