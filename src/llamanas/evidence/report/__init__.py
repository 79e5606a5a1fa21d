"""The report of a search run: one self-contained HTML file (works offline) plus PNG figures.

It reads only files: the run folder and optionally a baselines folder (``baselines.json``). One module
per concern, in the order the report is made:

- ``data``: read the run folder and the baselines into one ``ReportData`` (what is missing, and why);
- ``analysis``: the highlighted sub-networks and the per-layer statistics;
- ``figures``: what each figure plots, drawn with plotly; ``png``: the same figures with matplotlib;
- ``text`` and ``html``: hover text, tables and the page.

    report("runs/a", baselines="runs/baselines")  # -> runs/a/report.html, runs/a/figures/*.png
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llamanas.errors import LlamanasError
from llamanas.evidence.report.analysis import BANDS, highlights, layer_stats
from llamanas.evidence.report.data import Point, ReportData, Score, choose_score, load_data
from llamanas.evidence.report.html import FIG_DIR, REPORT_FILE, render

__all__ = [
    "BANDS",
    "FIG_DIR",
    "REPORT_FILE",
    "Point",
    "ReportData",
    "Score",
    "choose_score",
    "highlights",
    "layer_stats",
    "load_data",
    "render",
    "report",
]


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
    missing = [m for m in modules if m and importlib.util.find_spec(m) is None]
    if missing:
        raise LlamanasError(f"The report needs {' and '.join(missing)}: pip install {' '.join(missing)}.")
