"""The report of a search run: one self-contained HTML file (works offline) plus PNG figures.

It reads only files: the run folder (``run.json``, ``front.json``, ``hypervolume.csv``, ``predictors.csv``,
the results store through ``search.load_run``, and ``front_int8.json``/``front_int4.json`` from
``quantize_front``) and optionally a baselines folder (``baselines.json``). Every section whose inputs are
missing says so instead of failing, so the report can be written while a search is still running.

Plots are plotly figures with plotly.js embedded inline (no CDN); the same data is drawn with
matplotlib into ``figures/*.png``. An accuracy within two standard errors of chance is marked (hollow
markers, "≈ chance" in tables): such a sub-network cannot be told from random guessing.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.supernet.space import SubnetConfig

REPORT_FILE = "report.html"
FIG_DIR = "figures"
BANDS = (10, 25, 50, 100)  # accuracy percentiles of the per-layer analysis (top X% of sub-networks)
QUANT_METHODS = ("int8", "int4")
# Chance of uniform guessing by task, for stores that do not record it (4-way unless noted); ARC and
# TruthfulQA have a varying number of choices, so theirs are nominal.
NOMINAL_CHANCE = {
    "arc_easy": 0.25,
    "arc_challenge": 0.25,
    "hellaswag": 0.25,
    "openbookqa": 0.25,
    "sciq": 0.25,
    "piqa": 0.5,
    "winogrande": 0.5,
    "boolq": 0.5,
    "mmlu": 0.25,
}
BOUNDED = ("acc", "acc_norm")


CHANCE_RING = "≈ chance (within 2 s.e.)"
# Where a baseline's weights come from, and its legend suffix.
SOURCES = {"base": "", "supernet": " (super-network)", "recovered": " (pruned + fine-tuned)"}


def nominal_chance(task: str) -> float | None:
    if task in NOMINAL_CHANCE:
        return NOMINAL_CHANCE[task]
    if task.startswith("mmlu"):
        return 0.25
    return None


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """The accuracy-like value plotted on the y axis: the mean of ``metric`` over ``tasks``."""

    name: str
    metric: str
    tasks: tuple[str, ...]
    higher_is_better: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} ({self.metric} over {', '.join(self.tasks)})" if self.tasks else self.name

    def from_measured(self, m: dict) -> tuple[float | None, float | None, float | None]:
        """(value, standard error, chance) from a store's measured values (``acc:<task>``, ``n:<task>``)."""
        vals = [m.get(f"{self.metric}:{t}") for t in self.tasks]
        if not self.tasks or any(v is None or not math.isfinite(v) for v in vals):
            return None, None, None
        value = sum(vals) / len(vals)
        se = chance = None
        if self.metric in BOUNDED:
            ses = []
            for t, p in zip(self.tasks, vals, strict=True):
                n = m.get(f"n:{t}")
                ses.append(math.sqrt(max(p * (1 - p), 0.0) / (n - 1)) if n and n > 1 else None)
            if all(s is not None for s in ses):
                se = math.sqrt(sum(s * s for s in ses)) / len(ses)
            chances = [m.get(f"chance:{t}", nominal_chance(t)) for t in self.tasks]
            if all(c is not None for c in chances):
                chance = sum(chances) / len(chances)
        return value, se, chance

    def from_results(self, results: dict) -> tuple[float | None, float | None, float | None]:
        """(value, standard error, chance) from ``{task: TaskResult.to_dict()}``."""
        rs = [results.get(t) for t in self.tasks]
        if not self.tasks or any(r is None or self.metric not in r.get("metrics", {}) for r in rs):
            return None, None, None
        value = sum(r["metrics"][self.metric] for r in rs) / len(rs)
        ses = [r.get("stderr", {}).get(self.metric) for r in rs]
        se = math.sqrt(sum(s * s for s in ses)) / len(ses) if all(s is not None for s in ses) else None
        chance = None
        if self.metric in BOUNDED:
            cs = [
                r.get("chance") if r.get("chance") is not None else nominal_chance(t)
                for r, t in zip(rs, self.tasks, strict=True)
            ]
            chance = sum(cs) / len(cs) if all(c is not None for c in cs) else None
        return value, se, chance


@dataclass
class Point:
    """One model on the plots: a search evaluation, a baseline, the base model or a quantized one."""

    label: str
    kind: str  # evaluated | base | depth | shortgpt | width | int8 | int4 ...
    config: dict | None
    params: float | None
    score: float | None
    stderr: float | None = None
    chance: float | None = None
    latency: float | None = None
    bytes: float | None = None
    source: str = ""
    on_front: bool = False

    @property
    def at_chance(self) -> bool:
        """Within two standard errors of chance (only when both are known)."""
        if self.score is None or self.stderr is None or self.chance is None:
            return False
        return abs(self.score - self.chance) <= 2 * self.stderr


@dataclass
class ReportData:
    run_dir: Path
    info: dict
    score: Score
    arch: Arch | None
    space: dict | None
    evaluated: list[Point]
    front: list[Point]
    hypervolume: list[dict] | None
    predictors: list[dict] | None
    quantized: dict[str, list[tuple[Point, Point]]]
    baselines: list[Point]
    baselines_info: dict | None
    base: Point | None
    notes: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_csv(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            try:
                d[k] = float(v) if v not in ("", None, "None") else None
            except ValueError:
                d[k] = v
        out.append(d)
    return out


def choose_score(info: dict, front: dict | None) -> Score:
    """The run's first maximised task objective (``accuracy``, ``acc_norm``, ``acc:<task>``), else its
    first task objective, else accuracy over its tasks."""
    args = info.get("args", {}) if info else {}
    tasks = tuple(args.get("tasks") or ())
    objectives = (info or {}).get("objectives") or (front or {}).get("objectives") or []
    task_objs = [o for o in objectives if o.get("source") == "task"]
    pick = next((o for o in task_objs if o.get("direction") == "max"), task_objs[0] if task_objs else None)
    if pick is None:
        return Score("accuracy", "acc", tasks)
    name = pick["name"]
    metric, _, task = name.partition(":")
    metric = {"accuracy": "acc"}.get(metric, metric)
    return Score(name, metric, (task,) if task else tasks, pick.get("direction", "max") == "max")


def _point_from_measured(label: str, kind: str, cfg: dict, measured: dict, score: Score, arch) -> Point:
    value, se, chance = score.from_measured(measured)
    params = measured.get("params")
    if params is None and arch is not None:
        params = SubnetConfig.from_dict(cfg).num_params(arch)
    lat = measured.get("latency")
    return Point(
        label,
        kind,
        cfg,
        params,
        value,
        se,
        chance,
        latency=lat if lat is not None and math.isfinite(lat) else None,
        bytes=measured.get("bytes"),
    )


def _point_from_results(label, kind, cfg, results, score, arch, **kw) -> Point:
    value, se, chance = score.from_results(results)
    params = kw.pop("params", None)
    if params is None and cfg is not None and arch is not None:
        params = SubnetConfig.from_dict(cfg).num_params(arch)
    return Point(label, kind, cfg, params, value, se, chance, **kw)


def load_data(run_dir: str | Path, baselines: str | Path | None = None) -> ReportData:
    """Read everything the report shows; what is missing is recorded in ``missing`` with the reason."""
    run = Path(run_dir)
    if not run.is_dir():
        raise LlamanasError(f"Run folder {str(run_dir)!r} does not exist.")
    info = _read_json(run / "run.json") or {}
    front_json = _read_json(run / "front.json")
    missing: dict[str, str] = {}
    notes: list[str] = []
    if not info:
        notes.append("No run.json in the run folder: settings unknown.")
    score = choose_score(info, front_json)
    arch = space = None
    if isinstance(info.get("space"), dict):
        space = info["space"]
        try:
            arch = Arch(**space["arch"])
        except (KeyError, TypeError):
            arch = None

    # All evaluations (the store), else the front only.
    evaluated: list[Point] = []
    try:
        from llamanas.search.run import load_run

        view = load_run(run)
        front_ids = {m.id for m in view.front}
        for e in view.evaluated:
            p = _point_from_measured(f"#{e.seq}", "evaluated", e.config.to_dict(), e.measured, score, arch)
            p.on_front = e.seq in front_ids
            evaluated.append(p)
    except Exception as e:  # noqa: BLE001 - the report must still be written without the store
        missing["evaluations"] = (
            f"the results store could not be read ({_first_line(e)}); using front.json only"
        )
    front: list[Point] = []
    if front_json:
        for m in front_json.get("members", []):
            p = _point_from_measured(
                f"#{m.get('id')}", "evaluated", m["config"], m.get("measured", {}), score, arch
            )
            p.on_front = True
            front.append(p)
    elif evaluated:
        front = [p for p in evaluated if p.on_front]
    else:
        missing["front"] = "no front.json in the run folder"
    if not evaluated:
        evaluated = list(front)
    front.sort(key=lambda p: p.params or 0)

    hv = _read_csv(run / "hypervolume.csv")
    if not hv:
        missing["hypervolume"] = "no hypervolume.csv (or it is empty) in the run folder"
    pred = _read_csv(run / "predictors.csv")
    if not pred:
        missing["predictors"] = "no predictors.csv rows (random and NSGA-II searches train no predictors)"

    quantized: dict[str, list[tuple[Point, Point]]] = {}
    for method in QUANT_METHODS:
        q = _read_json(run / f"front_{method}.json")
        if not q:
            continue
        pairs = []
        for i, e in enumerate(q.get("points", [])):
            orig_measured = (e.get("original") or {}).get("measured", {})
            before = _point_from_measured(f"front {i + 1}", "front", e["config"], orig_measured, score, arch)
            before.bytes = e.get("bytes_fp16")
            after = _point_from_results(
                f"front {i + 1} {method}",
                method,
                e["config"],
                e.get("results", {}),
                score,
                arch,
                params=e.get("params"),
                bytes=e.get("bytes"),
                latency=e.get("latency_ms"),
            )
            pairs.append((before, after))
        quantized[method] = pairs
    if not quantized:
        missing["quantized"] = (
            "no front_int8.json / front_int4.json in the run folder (run `llamanas quantize --front RUN_DIR`)"
        )

    base_points: list[Point] = []
    b_info = None
    if baselines is not None:
        from llamanas.evidence.baselines import read_baselines

        try:
            b = read_baselines(baselines)
            b_info = {k: v for k, v in b.to_dict().items() if k != "rows"}
            for r in b.rows:
                if r.config is None:
                    continue
                label = "base model" if r.method == "base" else f"{r.method} {r.target:.0%}"
                if r.source != "base":
                    label += f" ({r.source})"
                base_points.append(
                    _point_from_results(
                        label, r.method, r.config, r.results, score, arch, params=r.params, source=r.source
                    )
                )
            args = info.get("args", {})
            diff = [
                k
                for k in ("split", "limit", "num_fewshot", "seed")
                if args and k in args and args.get(k) != getattr(b, k)
            ]
            if set(score.tasks) - set(b.tasks):
                diff.append("tasks")
            if diff:
                notes.append(
                    "Baselines were evaluated with different settings than the search ("
                    + ", ".join(f"{k}: {getattr(b, k)!r} vs {args.get(k)!r}" for k in diff)
                    + "); they are not directly comparable."
                )
        except LlamanasError as e:
            missing["baselines"] = str(e)
    else:
        missing["baselines"] = "no baselines folder given (llamanas report RUN_DIR --baselines DIR)"

    base = None
    if arch is not None:
        full = SubnetConfig.full(arch).to_dict()
        base = next((p for p in evaluated if p.config == full), None)
    if base is None:
        base = next((p for p in base_points if p.kind == "base" and p.source == "base"), None)
    if base is not None:
        base = Point(**{**base.__dict__, "label": "base model", "kind": "base"})
    return ReportData(
        run,
        info,
        score,
        arch,
        space,
        evaluated,
        front,
        hv,
        pred,
        quantized,
        base_points,
        b_info,
        base,
        notes,
        missing,
    )


# --- analysis ---------------------------------------------------------------------------------------


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
        tol = 0.01 if data.score.metric in BOUNDED else 0.01 * abs(data.base.score)  # one point
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
    """Per accuracy band (top X%): P(layer kept) [layers] and P(MLP size | kept) [sizes x layers]."""
    ranked = _ranked([p for p in points if p.config], score)
    out = {}
    for band in bands:
        k = max(1, math.ceil(len(ranked) * band / 100))
        top = ranked[:k]
        kept = [0.0] * num_layers
        sizes = {s: [0] * num_layers for s in mlp_sizes}
        for p in top:
            for i, m in zip(p.config["layers"], p.config["mlp"], strict=True):
                if i < num_layers:
                    kept[i] += 1
                    if m in sizes:
                        sizes[m][i] += 1
        mlp = [
            [sizes[s][i] / kept[i] if kept[i] else float("nan") for i in range(num_layers)] for s in mlp_sizes
        ]
        out[band] = {"n": len(top), "kept": [c / len(top) for c in kept] if top else kept, "mlp": mlp}
    return out


def _layer_dims(data: ReportData) -> tuple[int, list[int]] | None:
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


# --- formatting -------------------------------------------------------------------------------------


def _ranges(idx: Sequence[int]) -> str:
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


def _uniq(vals: Sequence[int]) -> str:
    s = sorted(set(vals))
    return str(s[0]) if len(s) == 1 else "[" + " ".join(map(str, vals)) + "]"


def describe_config(cfg: dict | None) -> str:
    if not cfg:
        return ""
    bits = f"<br>bits {_uniq(cfg['bits'])}" if cfg.get("bits") else ""
    return f"depth {len(cfg['layers'])}: layers {_ranges(cfg['layers'])}<br>mlp {_uniq(cfg['mlp'])}<br>kv {_uniq(cfg['kv_groups'])}{bits}"


def _fmt_params(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p / 1e9:.2f}B" if p >= 1e9 else f"{p / 1e6:.1f}M" if p >= 1e6 else f"{p / 1e3:.1f}K"


def _fmt_score(p: Point) -> str:
    if p.score is None:
        return "-"
    s = f"{p.score:.4f}"
    if p.stderr is not None:
        s += f" ± {p.stderr:.4f}"
    if p.at_chance:
        s += " (≈ chance)"
    return s


def hover(p: Point) -> str:
    lines = [f"<b>{html.escape(p.label)}</b>", f"score {_fmt_score(p)}", f"params {_fmt_params(p.params)}"]
    if p.latency is not None:
        lines.append(f"latency {p.latency:.1f} ms")
    if p.bytes is not None:
        lines.append(f"size {p.bytes / 2**20:.2f} MiB")
    if p.chance is not None:
        lines.append(f"chance {p.chance:.3f}")
    lines.append(describe_config(p.config))
    return "<br>".join(lines)


# --- figures: plotly ---------------------------------------------------------------------------------

MARKERS = {
    "base": "star",
    "depth": "square",
    "shortgpt": "diamond",
    "width": "triangle-up",
    "int8": "x",
    "int4": "cross",
}
COLORS = {
    "evaluated": "#9aa5b1",
    "front": "#1f77b4",
    "base": "#d62728",
    "depth": "#2ca02c",
    "shortgpt": "#9467bd",
    "width": "#ff7f0e",
    "int8": "#17becf",
    "int4": "#8c564b",
}


def _scatter(go, pts: Sequence[Point], x: str, name: str, kind: str, mode="markers", **kw):
    pts = [p for p in pts if getattr(p, x) is not None and p.score is not None]
    if not pts:
        return []
    scale = 1e6 if x == "params" else (2**20 if x == "bytes" else 1)
    marker = dict(color=COLORS.get(kind, "#444"), symbol=MARKERS.get(kind, "circle"), size=kw.pop("size", 8))
    errors = kw.pop("errors", False)
    traces = [
        go.Scatter(
            x=[getattr(p, x) / scale for p in pts],
            y=[p.score for p in pts],
            error_y=dict(type="data", array=[p.stderr or 0 for p in pts], visible=errors, thickness=1),
            mode=mode,
            name=name,
            marker=marker,
            hovertext=[hover(p) for p in pts],
            hoverinfo="text",
            **kw,
        )
    ]
    chance = [p for p in pts if p.at_chance]
    if chance:
        traces.append(
            go.Scatter(
                x=[getattr(p, x) / scale for p in chance],
                y=[p.score for p in chance],
                mode="markers",
                name=CHANCE_NAME,
                marker=dict(symbol="circle-open", size=14, color="black", line=dict(width=1.5)),
                hovertext=[hover(p) for p in chance],
                hoverinfo="text",
                legendgroup="chance",
            )
        )
    return traces


CHANCE_NAME = "≈ chance (within 2 s.e.)"


def _axis_title(x: str) -> str:
    return {"params": "parameters (M)", "latency": "prefill latency (ms)", "bytes": "weight size (MiB)"}[x]


def plotly_front(data: ReportData, x: str = "params"):
    import plotly.graph_objects as go

    fig = go.Figure()
    rest = [p for p in data.evaluated if not p.on_front]
    for t in _scatter(go, rest, x, "evaluated", "evaluated", size=6, opacity=0.6):
        fig.add_trace(t)
    for t in _scatter(go, data.front, x, "front", "front", mode="lines+markers", errors=True):
        fig.add_trace(t)
    if data.base is not None:
        for t in _scatter(go, [data.base], x, "base model", "base", size=14, errors=True):
            fig.add_trace(t)
    for kind in ("depth", "shortgpt", "width"):
        for source in SOURCES:
            pts = [p for p in data.baselines if p.kind == kind and p.source == source]
            name = {"depth": "depth truncation", "shortgpt": "ShortGPT (BI)", "width": "uniform MLP width"}[
                kind
            ]
            name += SOURCES[source]
            for t in _scatter(
                go,
                sorted(pts, key=lambda p: p.params or 0),
                x,
                name,
                kind,
                mode="lines+markers",
                size=10,
                errors=True,
            ):
                if source != "base":
                    t.line = dict(dash="dot" if source == "supernet" else "dash")
                fig.add_trace(t)
    _chance_line(fig, data)
    fig.update_layout(
        xaxis_title=_axis_title(x),
        yaxis_title=data.score.label,
        template="plotly_white",
        height=520,
        hovermode="closest",
    )
    return fig


def _chance_line(fig, data: ReportData) -> None:
    """A dashed line at chance, and one legend entry for all the at-chance rings."""
    shown = False
    for t in fig.data:
        if t.name == CHANCE_NAME:
            t.showlegend = not shown
            shown = True
    chances = [p.chance for p in data.evaluated + data.baselines if p.chance is not None]
    if chances:
        c = sum(chances) / len(chances)
        fig.add_hline(y=c, line_dash="dash", line_color="gray", annotation_text=f"chance {c:.3f}")


def plotly_quantized(data: ReportData):
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, pairs in data.quantized.items():
        before = [b for b, _ in pairs]
        after = [a for _, a in pairs]
        if not fig.data:
            for t in _scatter(
                go,
                sorted(before, key=lambda p: p.bytes or 0),
                "bytes",
                "front (16-bit)",
                "front",
                mode="lines+markers",
            ):
                fig.add_trace(t)
        for t in _scatter(
            go,
            sorted(after, key=lambda p: p.bytes or 0),
            "bytes",
            f"front after {method.upper()}",
            method,
            mode="lines+markers",
            size=10,
        ):
            fig.add_trace(t)
    _chance_line(fig, data)
    fig.update_layout(
        xaxis_title=_axis_title("bytes"), yaxis_title=data.score.label, template="plotly_white", height=480
    )
    return fig


def plotly_hypervolume(data: ReportData):
    import plotly.graph_objects as go

    rows = data.hypervolume or []
    fig = go.Figure(
        go.Scatter(
            x=[r["evaluations"] for r in rows],
            y=[r["hypervolume"] for r in rows],
            mode="lines",
            name="hypervolume",
        )
    )
    fig.update_layout(
        xaxis_title="evaluations",
        yaxis_title="hypervolume (normalised objectives)",
        template="plotly_white",
        height=380,
    )
    return fig


PRED_METRICS = ("kendall_tau", "mape", "cv_tau")


def plotly_predictors(data: ReportData):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = data.predictors or []
    metrics = [m for m in PRED_METRICS if any(r.get(m) is not None for r in rows)]
    fig = make_subplots(rows=1, cols=max(1, len(metrics)), subplot_titles=metrics or ["(no values)"])
    for j, metric in enumerate(metrics, 1):
        for obj in dict.fromkeys(r.get("objective") for r in rows):
            rs = [r for r in rows if r.get("objective") == obj and r.get(metric) is not None]
            fig.add_trace(
                go.Scatter(
                    x=[r["loop"] for r in rs],
                    y=[r[metric] for r in rs],
                    mode="lines+markers",
                    name=f"{obj}",
                    legendgroup=str(obj),
                    showlegend=j == 1,
                ),
                row=1,
                col=j,
            )
        fig.update_xaxes(title_text="loop", row=1, col=j)
    fig.update_layout(template="plotly_white", height=380)
    return fig


def plotly_layers(data: ReportData, stats: dict, sizes: Sequence[int]):
    import plotly.graph_objects as go
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


# --- figures: matplotlib (PNG) ------------------------------------------------------------------------


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mpl_points(ax, pts, x, label, kind, line=False, **kw):
    pts = [p for p in pts if getattr(p, x) is not None and p.score is not None]
    if not pts:
        return
    scale = 1e6 if x == "params" else (2**20 if x == "bytes" else 1)
    xs = [getattr(p, x) / scale for p in pts]
    ys = [p.score for p in pts]
    marker = {"base": "*", "depth": "s", "shortgpt": "D", "width": "^", "int8": "x", "int4": "P"}.get(
        kind, "o"
    )
    ax.plot(
        xs,
        ys,
        marker=marker,
        linestyle=kw.pop("linestyle", "-") if line else "none",
        color=COLORS.get(kind, "#444"),
        label=label,
        **kw,
    )
    ch = [p for p in pts if p.at_chance]
    if ch:
        ax.scatter(
            [getattr(p, x) / scale for p in ch],
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
    _mpl_points(
        ax,
        [p for p in data.evaluated if not p.on_front],
        x,
        "evaluated",
        "evaluated",
        alpha=0.5,
        markersize=4,
    )
    _mpl_points(ax, sorted(data.front, key=lambda p: getattr(p, x) or 0), x, "front", "front", line=True)
    if data.base is not None:
        _mpl_points(ax, [data.base], x, "base model", "base", markersize=14)
    for kind in ("depth", "shortgpt", "width"):
        for source in SOURCES:
            pts = sorted(
                [p for p in data.baselines if p.kind == kind and p.source == source],
                key=lambda p: p.params or 0,
            )
            _mpl_points(
                ax,
                pts,
                x,
                f"{kind}" + SOURCES[source],
                kind,
                line=True,
                linestyle={"base": "-", "supernet": ":", "recovered": "--"}[source],
            )
    ax.set_xlabel(_axis_title(x))
    ax.set_ylabel(data.score.label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the plot
    _save(plt, fig, path)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def png_quantized(data: ReportData, path: Path) -> None:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(8, 5))
    first = True
    for method, pairs in data.quantized.items():
        if first:
            _mpl_points(
                ax,
                sorted([b for b, _ in pairs], key=lambda p: p.bytes or 0),
                "bytes",
                "front (16-bit)",
                "front",
                line=True,
            )
            first = False
        _mpl_points(
            ax,
            sorted([a for _, a in pairs], key=lambda p: p.bytes or 0),
            "bytes",
            f"after {method.upper()}",
            method,
            line=True,
        )
    ax.set_xlabel(_axis_title("bytes"))
    ax.set_ylabel(data.score.label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def png_hypervolume(data: ReportData, path: Path) -> None:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = data.hypervolume or []
    ax.plot([r["evaluations"] for r in rows], [r["hypervolume"] for r in rows])
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume")
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def png_predictors(data: ReportData, path: Path) -> None:
    plt = _mpl()
    rows = data.predictors or []
    metrics = [m for m in PRED_METRICS if any(r.get(m) is not None for r in rows)] or ["kendall_tau"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for obj in dict.fromkeys(r.get("objective") for r in rows):
            rs = [r for r in rows if r.get("objective") == obj and r.get(metric) is not None]
            ax.plot([r["loop"] for r in rs], [r[metric] for r in rs], marker="o", label=str(obj))
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


# --- HTML -----------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;font-size:.88rem;margin:.6rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.missing{color:#8a6d3b;background:#fcf8e3;padding:.5rem .8rem;border-left:4px solid #f0ad4e}
.note{color:#555;font-size:.9rem}.chance{color:#b00;font-weight:600}code{background:#f4f4f4;padding:0 .2rem}
details summary{cursor:pointer;color:#1f77b4}
"""

# Counts script errors into <body data-errors>, so a headless browser test can assert there were none.
ERROR_HOOK = (
    "<script>window.__reportErrors=0;window.addEventListener('error',function(){"
    "window.__reportErrors++;document.body&&document.body.setAttribute('data-errors',window.__reportErrors);});</script>"
)


def _missing(text: str) -> str:
    return f'<p class="missing">Not available: {html.escape(text)}.</p>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = ()) -> str:
    th = "".join(f'<th class="{"l" if i in left else ""}">{html.escape(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i in left else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _score_cell(p: Point) -> str:
    s = html.escape(_fmt_score(p).replace(" (≈ chance)", ""))
    return s + (
        ' <span class="chance" title="within two standard errors of chance">≈ chance</span>'
        if p.at_chance
        else ""
    )


def _config_cell(p: Point) -> str:
    if not p.config:
        return ""
    c = p.config
    short = f"depth {len(c['layers'])}, mlp {_uniq(c['mlp'])}, kv {_uniq(c['kv_groups'])}"
    if c.get("bits"):
        short += f", bits {_uniq(c['bits'])}"
    return (
        f"<details><summary>{html.escape(short)}</summary><code>{html.escape(json.dumps(c))}</code></details>"
    )


def _summary(data: ReportData) -> str:
    args = data.info.get("args", {})
    rows = [
        ("run folder", str(data.run_dir)),
        ("model", args.get("model", "?")),
        ("tasks", ", ".join(args.get("tasks", [])) or "?"),
        ("split / limit / shots", f"{args.get('split')} / {args.get('limit')} / {args.get('num_fewshot')}"),
        ("algorithm", args.get("algorithm", "?")),
        ("objectives", ", ".join(o.get("name", "") for o in data.info.get("objectives", [])) or "?"),
        ("constraints", ", ".join(c.get("text", "") for c in data.info.get("constraints", [])) or "-"),
        ("evaluations", str(len(data.evaluated))),
        ("front size", str(len(data.front))),
        ("y axis", data.score.label),
    ]
    out = _table(["", ""], [(html.escape(k), html.escape(str(v))) for k, v in rows], left=(0, 1))
    for n in data.notes:
        out += f'<p class="note">{html.escape(n)}</p>'
    if "evaluations" in data.missing:
        out += f'<p class="note">{html.escape(data.missing["evaluations"])}.</p>'
    return out


def _highlights_html(data: ReportData) -> str:
    hl = highlights(data)
    if not hl:
        return _missing("no evaluated sub-network with a score")
    base_params = data.base.params if data.base is not None else None
    rows = []
    for role, p in hl:
        rows.append(
            [
                html.escape(role),
                html.escape(p.label),
                _fmt_params(p.params),
                f"{p.params / base_params:.1%}" if base_params and p.params else "-",
                _score_cell(p),
                f"{p.latency:.1f}" if p.latency is not None else "-",
                _config_cell(p),
            ]
        )
    if data.base is not None:
        rows.append(
            [
                "base model",
                "full",
                _fmt_params(data.base.params),
                "100%",
                _score_cell(data.base),
                "-",
                _config_cell(data.base),
            ]
        )
    return _table(
        ["role", "id", "params", "of base", "score ± s.e.", "latency ms", "config"], rows, left=(0, 1, 6)
    )


def _baselines_html(data: ReportData) -> str:
    if not data.baselines:
        return _missing(data.missing.get("baselines", "no baselines with a config"))
    rows = []
    for p in sorted(data.baselines, key=lambda p: (p.source, p.kind != "base", p.kind, -(p.params or 0))):
        rows.append(
            [
                html.escape(p.source),
                html.escape(p.label),
                _fmt_params(p.params),
                _score_cell(p),
                _config_cell(p),
            ]
        )
    bi = (data.baselines_info or {}).get("block_influence") or {}
    extra = ""
    for source, vals in bi.items():
        extra += (
            f'<p class="note">Block influence ({html.escape(source)}), by layer: '
            + ", ".join(f"{i}: {v:.3f}" for i, v in enumerate(vals))
            + "</p>"
        )
    return _table(["source", "baseline", "params", "score ± s.e.", "config"], rows, left=(0, 1, 4)) + extra


def _quant_table(data: ReportData) -> str:
    rows = []
    for method, pairs in data.quantized.items():
        for b, a in pairs:
            rows.append(
                [
                    method.upper(),
                    _fmt_params(a.params),
                    f"{b.bytes / 2**20:.2f}" if b.bytes else "-",
                    f"{a.bytes / 2**20:.2f}" if a.bytes else "-",
                    _score_cell(b),
                    _score_cell(a),
                    _config_cell(a),
                ]
            )
    return _table(
        ["method", "params", "MiB 16-bit", "MiB quantized", "score before", "score after", "config"],
        rows,
        left=(6,),
    )


def render(data: ReportData, fig_dir: Path | None = None) -> str:
    """The HTML text (and the PNGs in ``fig_dir`` when given)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    n_fig = [0]

    def fig_html(fig) -> str:
        n_fig[0] += 1
        return pio.to_html(
            fig,
            include_plotlyjs=False,
            full_html=False,
            div_id=f"fig{n_fig[0]}",
            config={"displaylogo": False},
        )

    def png(name: str, fn, *args) -> str:
        if fig_dir is None:
            return ""
        fig_dir.mkdir(parents=True, exist_ok=True)
        fn(*args, fig_dir / name)
        return f'<p class="note">PNG: <code>{FIG_DIR}/{name}</code></p>'

    parts = [f"<h1>llamanas search report</h1>{_summary(data)}"]
    parts.append("<h2>Highlighted sub-networks</h2>" + _highlights_html(data))

    parts.append("<h2>Accuracy vs parameters</h2>")
    if data.evaluated or data.baselines:
        parts.append(
            '<p class="note">Grey: every evaluated sub-network; blue: the Pareto front; red star: the base model; '
            "lines: pruning baselines at matched size. Error bars: one standard error; black rings: within two standard "
            "errors of chance. Hover a point for its config.</p>"
        )
        parts.append(fig_html(plotly_front(data, "params")) + png("front_params.png", png_front, data))
    else:
        parts.append(_missing(data.missing.get("front", "no evaluations")))

    parts.append("<h2>Accuracy vs measured latency</h2>")
    if any(p.latency is not None for p in data.evaluated):
        parts.append(
            fig_html(plotly_front(data, "latency"))
            + png("front_latency.png", lambda d, p: png_front(d, p, "latency"), data)
        )
    else:
        parts.append(_missing("no latency was measured in this run (add a latency objective or constraint)"))

    parts.append("<h2>Front before and after quantization</h2>")
    if data.quantized:
        parts.append(
            '<p class="note">Sizes are weight bytes: 16-bit for the original front, INT8/INT4 decoder linears '
            "(embeddings and head kept in 16 bits) after. The front moves left.</p>"
        )
        parts.append(
            fig_html(plotly_quantized(data))
            + png("front_quantized.png", png_quantized, data)
            + _quant_table(data)
        )
    else:
        parts.append(_missing(data.missing["quantized"]))

    parts.append("<h2>Hypervolume against evaluations</h2>")
    if data.hypervolume:
        parts.append(fig_html(plotly_hypervolume(data)) + png("hypervolume.png", png_hypervolume, data))
    else:
        parts.append(_missing(data.missing["hypervolume"]))

    parts.append("<h2>Predictor quality per loop</h2>")
    if data.predictors:
        parts.append(
            '<p class="note">kendall_tau / mape: the predictors of each loop scored on the sub-networks that loop '
            "then evaluated (out of sample); cv_tau: cross-validated on the training set.</p>"
        )
        parts.append(fig_html(plotly_predictors(data)) + png("predictors.png", png_predictors, data))
    else:
        parts.append(_missing(data.missing["predictors"]))

    parts.append("<h2>Per-layer analysis of the best sub-networks</h2>")
    dims = _layer_dims(data)
    scored = [p for p in data.evaluated if p.score is not None and p.config]
    if dims and len(scored) >= 2:
        n, sizes = dims
        stats = layer_stats(scored, data.score, n, sizes)
        parts.append(
            f'<p class="note">Over {len(scored)} evaluated sub-networks ranked by {html.escape(data.score.name)}: how often '
            "each layer is kept, and which MLP size it gets when kept, among the top 10/25/50/100% (LLaMA-NAS figures 6-9).</p>"
        )
        parts.append(
            fig_html(plotly_layers(data, stats, sizes)) + png("layers.png", png_layers, stats, sizes)
        )
    else:
        parts.append(_missing("fewer than two evaluated sub-networks with a score"))

    parts.append("<h2>Pruning baselines</h2>" + _baselines_html(data))

    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>llamanas report</title>"
        f"<style>{CSS}</style>{ERROR_HOOK}<script>{get_plotlyjs()}</script></head>"
        f"<body data-errors=0>{''.join(parts)}"
        f"<p class=note>Figures: {n_fig[0]}.</p></body></html>"
    )


def report(
    run_dir: str | Path, baselines: str | Path | None = None, out: str | Path | None = None, png: bool = True
) -> Path:
    """Write ``report.html`` (self-contained) and ``figures/*.png`` into ``out`` (default: the run folder)."""
    _require("plotly", "matplotlib" if png else None)
    data = load_data(run_dir, baselines)
    out_dir = Path(out) if out is not None else Path(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = render(data, out_dir / FIG_DIR if png else None)
    path = out_dir / REPORT_FILE
    path.write_text(text, encoding="utf-8")
    return path


def _require(*modules: str | None) -> None:
    import importlib.util

    missing = [m for m in modules if m and importlib.util.find_spec(m) is None]
    if missing:
        raise LlamanasError(f"The report needs {' and '.join(missing)}: pip install {' '.join(missing)}.")


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
