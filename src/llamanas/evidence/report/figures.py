"""What each figure plots, and the interactive (plotly) drawing of it.

Every figure exists twice: here as plotly (embedded in the HTML) and in ``png.py`` as matplotlib. Which
points go in which series, their legend names, colours, markers, line styles and marker weights are
decided once here (``front_series``, ``quantized_series``, ``LOOKS``, ...), so the two copies cannot
drift apart; each back end only translates a ``Series`` into its own calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llamanas.evidence.report.data import Point, ReportData
from llamanas.evidence.report.text import hover

CHANCE_RING = "≈ chance (within 2 s.e.)"
# Where a baseline's weights come from: its legend suffix and the dash of its line.
SOURCES = {"base": "", "supernet": " (super-network)", "recovered": " (pruned + fine-tuned)"}
DASHES = {"base": "solid", "supernet": "dot", "recovered": "dash"}
# Pruning baselines: (interactive legend name, PNG legend name).
BASELINE_NAMES = {
    "depth": ("depth truncation", "depth"),
    "shortgpt": ("ShortGPT (BI)", "shortgpt"),
    "width": ("uniform MLP width", "width"),
    "attention": ("attention blocks dropped (BI)", "attention"),
}
PRED_METRICS = ("kendall_tau", "mape", "cv_tau")
# Units of the x axes.
SCALES = {"params": 1e6, "bytes": 2**20}
AXIS_TITLES = {
    "params": "parameters (M)",
    "latency": "prefill latency (ms)",
    "bytes": "weight size (MiB)",
    "decode_ms": "decode latency in llama.cpp (ms / token)",
}


@dataclass(frozen=True)
class Look:
    """How one kind of point is drawn: colour, plotly marker symbol, matplotlib marker."""

    color: str
    symbol: str = "circle"
    marker: str = "o"


LOOKS = {
    "evaluated": Look("#9aa5b1"),
    "front": Look("#1f77b4"),
    "base": Look("#d62728", "star", "*"),
    "depth": Look("#2ca02c", "square", "s"),
    "shortgpt": Look("#9467bd", "diamond", "D"),
    "width": Look("#ff7f0e", "triangle-up", "^"),
    "attention": Look("#e377c2", "triangle-down", "v"),
    "runtime": Look("#1f77b4"),
    "predicted": Look("#9aa5b1", "circle-open", "o"),
    "int8": Look("#17becf", "x", "x"),
    "int4": Look("#8c564b", "cross", "P"),
}
OTHER_LOOK = Look("#444")


@dataclass(frozen=True)
class Series:
    """One legend entry of a score-against-x figure."""

    points: list[Point]  # in the order the line joins them
    kind: str  # the look (LOOKS)
    name: str  # legend of the interactive figure
    png_name: str  # legend of the PNG
    line: bool = False
    dash: str = "solid"  # solid | dot | dash
    weight: str = "normal"  # faint | normal | wide | star: marker size (and opacity)
    errors: bool = False  # error bars (interactive figure)

    @property
    def look(self) -> Look:
        return LOOKS.get(self.kind, OTHER_LOOK)

    def drawn(self, x: str) -> list[Point]:
        """The points that have both coordinates."""
        return [p for p in self.points if getattr(p, x) is not None and p.score is not None]


def xs(pts: Sequence[Point], x: str) -> list[float]:
    scale = SCALES.get(x, 1)
    return [getattr(p, x) / scale for p in pts]


def front_series(data: ReportData, x: str, front_by: str = "params") -> list[Series]:
    """Score against ``x``: every evaluation, the front, the base model and the pruning baselines.

    ``front_by`` orders the front's line: the interactive figure joins it in parameter order on every x
    axis, the PNG in the order of its own x axis.
    """
    out = [
        Series(
            [p for p in data.evaluated if not p.on_front],
            "evaluated",
            "evaluated",
            "evaluated",
            weight="faint",
        ),
        Series(
            sorted(data.front, key=lambda p: getattr(p, front_by) or 0),
            "front",
            "front",
            "front",
            line=True,
            errors=True,
        ),
    ]
    if data.base is not None:
        out.append(Series([data.base], "base", "base model", "base model", weight="star", errors=True))
    for kind, (name, png_name) in BASELINE_NAMES.items():
        for source, suffix in SOURCES.items():
            pts = [p for p in data.baselines if p.kind == kind and p.source == source]
            out.append(
                Series(
                    sorted(pts, key=lambda p: p.params or 0),
                    kind,
                    name + suffix,
                    png_name + suffix,
                    line=True,
                    dash=DASHES[source],
                    weight="wide",
                    errors=True,
                )
            )
    return out


def runtime_series(data: ReportData) -> list[Series]:
    """Score against decode ms per token in llama.cpp: the front as timed, and as the latency table
    predicted it (when the run searched with one)."""
    out = [
        Series(
            sorted(data.runtime_front, key=lambda p: p.decode_ms or 0),
            "runtime",
            "front, timed in llama.cpp",
            "front (llama.cpp)",
            line=True,
            errors=True,
        )
    ]
    if data.runtime_predicted:
        out.append(
            Series(
                sorted(data.runtime_predicted, key=lambda p: p.decode_ms or 0),
                "predicted",
                "front, latency table's prediction",
                "table's prediction",
                weight="faint",
            )
        )
    return out


def quantized_series(data: ReportData) -> list[Series]:
    """Score against weight bytes: the 16-bit front (from the first method's file), then each method's."""
    out = []
    for i, (method, pairs) in enumerate(data.quantized.items()):
        if i == 0:
            before = sorted([b for b, _ in pairs], key=lambda p: p.bytes or 0)
            out.append(Series(before, "front", "front (16-bit)", "front (16-bit)", line=True))
        after = sorted([a for _, a in pairs], key=lambda p: p.bytes or 0)
        out.append(
            Series(
                after,
                method,
                f"front after {method.upper()}",
                f"after {method.upper()}",
                line=True,
                weight="wide",
            )
        )
    return out


def hypervolume_xy(data: ReportData) -> tuple[list, list]:
    rows = data.hypervolume or []
    return [r["evaluations"] for r in rows], [r["hypervolume"] for r in rows]


def predictor_metrics(data: ReportData) -> list[str]:
    """The predictor-quality columns that have a value in some row."""
    return [m for m in PRED_METRICS if any(r.get(m) is not None for r in data.predictors or [])]


def predictor_lines(data: ReportData, metric: str) -> list[tuple[str, list, list]]:
    """(objective, loops, values) of ``metric``, one line per objective."""
    rows = data.predictors or []
    out = []
    for obj in dict.fromkeys(r.get("objective") for r in rows):
        rs = [r for r in rows if r.get("objective") == obj and r.get(metric) is not None]
        out.append((str(obj), [r["loop"] for r in rs], [r[metric] for r in rs]))
    return out


# --- plotly -----------------------------------------------------------------------------------------

PLOTLY_WEIGHTS = {"faint": (6, 0.6), "normal": (8, None), "wide": (10, None), "star": (14, None)}


def _traces(go, s: Series, x: str) -> list:
    pts = s.drawn(x)
    if not pts:
        return []
    size, opacity = PLOTLY_WEIGHTS[s.weight]
    traces = [
        go.Scatter(
            x=xs(pts, x),
            y=[p.score for p in pts],
            error_y=dict(type="data", array=[p.stderr or 0 for p in pts], visible=s.errors, thickness=1),
            mode="lines+markers" if s.line else "markers",
            name=s.name,
            marker=dict(color=s.look.color, symbol=s.look.symbol, size=size),
            hovertext=[hover(p) for p in pts],
            hoverinfo="text",
            **({} if opacity is None else {"opacity": opacity}),
        )
    ]
    chance = [p for p in pts if p.at_chance]
    if chance:
        traces.append(
            go.Scatter(
                x=xs(chance, x),
                y=[p.score for p in chance],
                mode="markers",
                name=CHANCE_RING,
                marker=dict(symbol="circle-open", size=14, color="black", line=dict(width=1.5)),
                hovertext=[hover(p) for p in chance],
                hoverinfo="text",
                legendgroup="chance",
            )
        )
    if s.dash != "solid":
        for t in traces:
            t.line = dict(dash=s.dash)
    return traces


def _chance_line(fig, data: ReportData) -> None:
    """A dashed line at chance, and one legend entry for all the at-chance rings."""
    shown = False
    for t in fig.data:
        if t.name == CHANCE_RING:
            t.showlegend = not shown
            shown = True
    chances = [p.chance for p in data.evaluated + data.baselines if p.chance is not None]
    if chances:
        c = sum(chances) / len(chances)
        fig.add_hline(y=c, line_dash="dash", line_color="gray", annotation_text=f"chance {c:.3f}")


def plotly_front(data: ReportData, x: str = "params"):
    import plotly.graph_objects as go  # lazy: plotly loads only when a report is drawn

    fig = go.Figure()
    for s in front_series(data, x):
        for t in _traces(go, s, x):
            fig.add_trace(t)
    _chance_line(fig, data)
    fig.update_layout(
        xaxis_title=AXIS_TITLES[x],
        yaxis_title=data.score.label,
        template="plotly_white",
        height=520,
        hovermode="closest",
    )
    return fig


def _plotly_series(data: ReportData, series: list[Series], x: str):
    import plotly.graph_objects as go  # lazy: plotly loads only when a report is drawn

    fig = go.Figure()
    for s in series:
        for t in _traces(go, s, x):
            fig.add_trace(t)
    _chance_line(fig, data)
    fig.update_layout(
        xaxis_title=AXIS_TITLES[x], yaxis_title=data.score.label, template="plotly_white", height=480
    )
    return fig


def plotly_quantized(data: ReportData):
    return _plotly_series(data, quantized_series(data), "bytes")


def plotly_runtime(data: ReportData):
    return _plotly_series(data, runtime_series(data), "decode_ms")


def plotly_hypervolume(data: ReportData):
    import plotly.graph_objects as go  # lazy: plotly loads only when a report is drawn

    x, y = hypervolume_xy(data)
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines", name="hypervolume"))
    fig.update_layout(
        xaxis_title="evaluations",
        yaxis_title="hypervolume (normalised objectives)",
        template="plotly_white",
        height=380,
    )
    return fig


def plotly_predictors(data: ReportData):
    import plotly.graph_objects as go  # lazy: plotly loads only when a report is drawn
    from plotly.subplots import make_subplots

    metrics = predictor_metrics(data)
    fig = make_subplots(rows=1, cols=max(1, len(metrics)), subplot_titles=metrics or ["(no values)"])
    for j, metric in enumerate(metrics, 1):
        for obj, loops, values in predictor_lines(data, metric):
            fig.add_trace(
                go.Scatter(
                    x=loops,
                    y=values,
                    mode="lines+markers",
                    name=obj,
                    legendgroup=obj,
                    showlegend=j == 1,
                ),
                row=1,
                col=j,
            )
        fig.update_xaxes(title_text="loop", row=1, col=j)
    fig.update_layout(template="plotly_white", height=380)
    return fig


def skips_attention(stats: dict) -> bool:
    """Whether any ranked config skips an attention block (then the layer plots show where)."""
    return any(v < 1 for s in stats.values() for v in s.get("attention", []) if not math.isnan(v))


def plotly_layers(data: ReportData, stats: dict, sizes: Sequence[int]):
    import plotly.graph_objects as go  # lazy: plotly loads only when a report is drawn
    from plotly.subplots import make_subplots

    bands = list(stats)
    titles = ["P(layer kept) among the top X% by accuracy"] + [
        f"P(MLP size | kept), top {b}% (n={stats[b]['n']})" for b in bands
    ]
    fig = make_subplots(rows=1 + len(bands), cols=1, subplot_titles=titles, vertical_spacing=0.06)
    n = len(stats[bands[0]]["kept"])
    for b in bands:
        fig.add_trace(
            go.Scatter(x=list(range(n)), y=stats[b]["kept"], mode="lines+markers", name=f"top {b}%"),
            row=1,
            col=1,
        )
        if skips_attention(stats):
            fig.add_trace(
                go.Scatter(
                    x=list(range(n)),
                    y=[None if math.isnan(v) else v for v in stats[b]["attention"]],
                    mode="lines",
                    line=dict(dash="dot"),
                    name=f"attention kept | layer kept, top {b}%",
                ),
                row=1,
                col=1,
            )
    for r, b in enumerate(bands, 2):
        z = [[None if math.isnan(v) else v for v in row] for row in stats[b]["mlp"]]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(range(n)),
                y=[str(s) for s in sizes],
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                showscale=r == 2,
                hovertemplate="layer %{x}, MLP %{y}: %{z:.2f}<extra></extra>",
            ),
            row=r,
            col=1,
        )
        fig.update_yaxes(title_text="MLP size", type="category", row=r, col=1)
    fig.update_xaxes(title_text="layer", row=1 + len(bands), col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_layout(
        template="plotly_white",
        height=300 * (1 + len(bands)),
        legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"),
    )
    return fig
