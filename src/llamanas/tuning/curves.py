"""Loss curves of a fine-tuning run: a CSV row per trained sub-network per step, and a smoothed plot."""

from __future__ import annotations

import csv
from pathlib import Path

from llamanas.tuning.sampling import Role

CSV_COLUMNS = ("step", "role", "series", "params", "kind", "loss", "lr")


def write_loss_curves(records: list[dict], csv_path: Path, png_path: Path | None = None) -> None:
    """One row per trained sub-network per step; the PNG plots a smoothed curve per size series."""
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows({k: r[k] for k in CSV_COLUMNS} for r in records)
    if png_path is None or not records:
        return
    try:  # lazy: matplotlib only draws the PNG, and Agg must be chosen before pyplot loads
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is a convenience; the CSV holds the data
        return
    kinds = sorted({r["kind"] for r in records})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in records:
            if r["kind"] == kind:
                series.setdefault(r["series"], []).append((r["step"], r["loss"]))
        for name in sorted(series, key=lambda s: (s != Role.LARGEST, s)):
            steps, losses = zip(*series[name], strict=True)
            ax.plot(steps, _ema(losses), label=f"{name} ({len(steps)} steps)")
        ax.set_xlabel("step")
        ax.set_ylabel("response cross-entropy" if kind == "ce" else "KL to the full network")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _ema(values, beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (smooths noisy per-step losses)."""
    out, m = [], 0.0
    for k, v in enumerate(values, 1):
        m = beta * m + (1 - beta) * v
        out.append(m / (1 - beta**k))
    return out
