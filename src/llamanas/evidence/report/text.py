"""How a point is written in words: the hover text of the interactive figures and the cells of the tables.

One place, so a figure's hover and the table row of the same sub-network always agree.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from llamanas.evidence.report.data import Point


def ranges(idx: Sequence[int]) -> str:
    """[0,1,2,5,7,8] -> '0-2,5,7-8'."""
    parts, start, prev = [], None, None
    for i in idx:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


def uniq(vals: Sequence[int]) -> str:
    s = sorted(set(vals))
    return str(s[0]) if len(s) == 1 else "[" + " ".join(map(str, vals)) + "]"


def describe_config(cfg: dict | None) -> str:
    if not cfg:
        return ""
    bits = f"<br>bits {uniq(cfg['bits'])}" if cfg.get("bits") else ""
    return f"depth {len(cfg['layers'])}: layers {ranges(cfg['layers'])}<br>mlp {uniq(cfg['mlp'])}<br>kv {uniq(cfg['kv_groups'])}{bits}"


def fmt_params(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p / 1e9:.2f}B" if p >= 1e9 else f"{p / 1e6:.1f}M" if p >= 1e6 else f"{p / 1e3:.1f}K"


def fmt_score(p: Point) -> str:
    if p.score is None:
        return "-"
    s = f"{p.score:.4f}"
    if p.stderr is not None:
        s += f" ± {p.stderr:.4f}"
    if p.at_chance:
        s += " (≈ chance)"
    return s


def hover(p: Point) -> str:
    lines = [f"<b>{html.escape(p.label)}</b>", f"score {fmt_score(p)}", f"params {fmt_params(p.params)}"]
    if p.latency is not None:
        lines.append(f"latency {p.latency:.1f} ms")
    if p.bytes is not None:
        lines.append(f"size {p.bytes / 2**20:.2f} MiB")
    if p.chance is not None:
        lines.append(f"chance {p.chance:.3f}")
    lines.append(describe_config(p.config))
    return "<br>".join(lines)
