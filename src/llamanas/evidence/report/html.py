"""The report page: one self-contained HTML file (plotly.js inline, no CDN, works offline).

Sections in a fixed order; a section whose inputs are missing says why (``ReportData.missing``) instead
of failing, so the report can be written while a search is still running. ``render`` also writes the
PNG copy of each figure next to it when given a folder.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from llamanas.evidence.report.analysis import highlights, layer_dims, layer_stats
from llamanas.evidence.report.data import Point, ReportData
from llamanas.evidence.report.figures import (
    plotly_front,
    plotly_hypervolume,
    plotly_layers,
    plotly_predictors,
    plotly_quantized,
    plotly_runtime,
)
from llamanas.evidence.report.png import (
    png_front,
    png_hypervolume,
    png_layers,
    png_predictors,
    png_quantized,
    png_runtime,
)
from llamanas.evidence.report.text import fmt_params, fmt_score, uniq

REPORT_FILE = "report.html"
FIG_DIR = "figures"

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
    s = html.escape(fmt_score(p).replace(" (≈ chance)", ""))
    return s + (
        ' <span class="chance" title="within two standard errors of chance">≈ chance</span>'
        if p.at_chance
        else ""
    )


def _config_cell(p: Point) -> str:
    if not p.config:
        return ""
    c = p.config
    short = f"depth {len(c['layers'])}, mlp {uniq(c['mlp'])}, kv {uniq(c['kv_groups'])}"
    if c.get("bits"):
        short += f", bits {uniq(c['bits'])}"
    if c.get("hidden"):
        short += f", hidden {c['hidden']}"
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
                fmt_params(p.params),
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
                fmt_params(data.base.params),
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
                fmt_params(p.params),
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
                    fmt_params(a.params),
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
    import plotly.io as pio  # lazy: plotly loads only when a report is drawn
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
    if data.runtime_front:
        r = data.runtime or {}
        parts.append(
            f'<p class="note">The front exported to GGUF ({html.escape(str(r.get("type", "?")).upper())}) and timed '
            f"in llama.cpp on this run's machine: ms per decoded token after a {r.get('prompt_tokens', '?')}-token "
            f"prompt, batch 1, {r.get('threads', '?')} threads, median of {r.get('repeats', '?')}."
            + (" Open circles: what the latency table predicted." if data.runtime_predicted else "")
            + "</p>"
        )
        parts.append(fig_html(plotly_runtime(data)) + png("front_llamacpp.png", png_runtime, data))
    elif any(p.latency is not None for p in data.evaluated):
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
    dims = layer_dims(data)
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
