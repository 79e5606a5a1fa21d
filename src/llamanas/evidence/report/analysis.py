"""What the report concludes from the evaluations: the highlighted sub-networks and the per-layer statistics.

Pure functions of ``ReportData`` (no drawing), so tests can check the picks and the statistics directly
and both figure back ends draw the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llamanas.evidence.report.data import Point, ReportData, Score

BANDS = (10, 25, 50, 100)  # accuracy percentiles of the per-layer analysis (top X% of sub-networks)


def _ranked(points: Sequence[Point], score: Score) -> list[Point]:
    pts = [p for p in points if p.score is not None]
    return sorted(pts, key=lambda p: p.score, reverse=score.higher_is_better)


def highlights(data: ReportData, sizes: Sequence[float] | None = None) -> list[tuple[str, Point]]:
    """(role, point): the smallest within one point of the base, the most accurate, the best at each size."""
    out: list[tuple[str, Point]] = []
    pts = [p for p in data.evaluated if p.score is not None and p.params is not None]
    if not pts:
        return out
    ranked = _ranked(pts, data.score)
    out.append(("most accurate", ranked[0]))
    if data.base is not None and data.base.score is not None:
        tol = 0.01 if data.score.bounded else 0.01 * abs(data.base.score)  # one point
        b = data.base.score
        ok = [p for p in pts if (p.score >= b - tol if data.score.higher_is_better else p.score <= b + tol)]
        if ok:
            out.append(("smallest within 1 point of the base", min(ok, key=lambda p: (p.params, p.label))))
    full = data.base.params if data.base is not None and data.base.params else max(p.params for p in pts)
    if sizes is None:
        sizes = sorted({r for r in (data.baselines_info or {}).get("sizes", [])}, reverse=True) or (
            0.9,
            0.8,
            0.7,
            0.6,
            0.5,
        )
    for s in sizes:
        fit = [p for p in pts if p.params <= s * full]
        if fit:
            out.append((f"best at <= {s:.0%} of the base size", _ranked(fit, data.score)[0]))
    return out


def layer_stats(
    points: Sequence[Point], score: Score, num_layers: int, mlp_sizes: Sequence[int], bands=BANDS
):
    """Per accuracy band (top X%): P(layer kept) [layers], P(MLP size | kept) [sizes x layers; size 0 is a
    skipped MLP] and P(attention kept | layer kept) [layers]."""
    ranked = _ranked([p for p in points if p.config], score)
    out = {}
    for band in bands:
        k = max(1, math.ceil(len(ranked) * band / 100))
        top = ranked[:k]
        kept = [0.0] * num_layers
        sizes = {s: [0] * num_layers for s in mlp_sizes}
        attn = [0] * num_layers
        for p in top:
            for i, m, g in zip(p.config["layers"], p.config["mlp"], p.config["kv_groups"], strict=True):
                if i < num_layers:
                    kept[i] += 1
                    attn[i] += g > 0
                    if m in sizes:
                        sizes[m][i] += 1
        mlp = [
            [sizes[s][i] / kept[i] if kept[i] else float("nan") for i in range(num_layers)] for s in mlp_sizes
        ]
        attention = [attn[i] / kept[i] if kept[i] else float("nan") for i in range(num_layers)]
        out[band] = {
            "n": len(top),
            "kept": [c / len(top) for c in kept] if top else kept,
            "mlp": mlp,
            "attention": attention,
        }
    return out


def layer_dims(data: ReportData) -> tuple[int, list[int]] | None:
    """(number of layers, MLP sizes): from the search space, else from the evaluated configs."""
    if data.space:
        try:
            n = int(data.space["arch"]["num_layers"])
            sizes = sorted({int(s) for ms in data.space["mlp_choices"] for s in ms})
            return n, sizes
        except (KeyError, TypeError, ValueError):
            pass
    cfgs = [p.config for p in data.evaluated if p.config]
    if not cfgs:
        return None
    n = max(max(c["layers"]) for c in cfgs) + 1
    return n, sorted({m for c in cfgs for m in c["mlp"]})
