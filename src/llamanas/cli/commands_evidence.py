"""Commands that produce evidence: ``baselines``, ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llamanas.cli.app import (
    _task_list,
    app,
    console,
    out,
)
from llamanas.cli.options import (
    CompensateOpt,
    DeviceOpt,
    DtypeOpt,
    FewshotOpt,
    ImportanceOpt,
    LimitOpt,
    ModelOpt,
    OffsetOpt,
    SeedOpt,
    TasksOpt,
)
from llamanas.cli.tables import (
    baselines_table,
)
from llamanas.errors import LlamanasError
from llamanas.evaluation.questions import Questions
from llamanas.evidence.baselines import CALIBRATION_WINDOWS, run_baselines
from llamanas.evidence.report import report as report_fn


@app.command()
def baselines(
    tasks: TasksOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for baselines.json and baselines.csv.")],
    model: ModelOpt = "default",
    sizes: Annotated[
        str, typer.Option(help="Target sizes as fractions of the model's parameters, e.g. 0.9,0.8,0.7.")
    ] = "0.9,0.8,0.7",
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated: depth, shortgpt, width, attention (skip the attention blocks of least "
            "block influence, MLPs kept), sensitivity (per-layer widths allocated by each layer's measured "
            "loss increase per parameter saved)."
        ),
    ] = "depth,shortgpt,width",
    supernet: Annotated[
        str | None,
        typer.Option(help="A fine-tuned super-network folder: run the same baselines on its weights too."),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Data split (default: each task's test split).")] = None,
    limit: LimitOpt = None,
    num_fewshot: FewshotOpt = None,
    seed: SeedOpt = 0,
    offset: OffsetOpt = 0,
    calibration: Annotated[
        str | None,
        typer.Option(help="Calibration text for importance and block influence (default: built in)."),
    ] = None,
    calibration_samples: Annotated[
        int,
        typer.Option(
            help="Calibration windows of 128 tokens for block influence and sensitivity (a ranking)."
        ),
    ] = CALIBRATION_WINDOWS,
    recover: Annotated[
        bool,
        typer.Option(
            help="With --supernet: also prune the original model and fine-tune each baseline with the "
            "super-network's recorded budget (same data, steps, batch, learning rate), in OUT/recovered."
        ),
    ] = False,
    importance: ImportanceOpt = "rms",
    compensate: CompensateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
):
    """Evaluate pruning baselines at matched size: depth truncation, ShortGPT layer removal, uniform MLP width."""
    task_list = _task_list(tasks)
    try:
        size_list = [float(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise LlamanasError(
            f"--sizes must be comma-separated fractions like 0.9,0.8,0.7; got {sizes!r}."
        ) from None
    bad = [s for s in size_list if not 0 < s <= 1]
    if not size_list or bad:
        raise LlamanasError(f"--sizes must be fractions in (0, 1]; got {sizes!r}.")
    if calibration_samples < 1:
        raise LlamanasError(f"--calibration-samples must be >= 1; got {calibration_samples}.")
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    console.print("Evaluating baselines" + (" and fine-tuning them" if recover else "") + " ...")
    run = run_baselines(
        model,
        task_list,
        size_list,
        out_dir,
        supernet_dir=supernet,
        methods=method_list,
        questions=Questions(split=split, limit=limit, num_fewshot=num_fewshot, seed=seed, offset=offset),
        calibration=calibration,
        num_samples=calibration_samples,
        recover=recover,
        dtype=dtype,
        device=device,
        importance=importance,
        compensate=compensate,
    )
    out.print(baselines_table(f"Baselines of {model}", run.rows, task_list))
    console.print(f"wrote {out_dir / 'baselines.json'} and baselines.csv")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A search run folder (from `llamanas search`).")],
    baselines_dir: Annotated[
        Path | None, typer.Option("--baselines", help="A folder written by `llamanas baselines`.")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: RUN_DIR).")] = None,
    png: Annotated[bool, typer.Option(help="Also write PNG figures (--no-png: HTML only).")] = True,
):
    """Write one self-contained HTML report (offline, interactive) and PNG figures of a search run."""
    path = report_fn(run_dir, baselines_dir, out_dir, png=png)
    console.print(f"wrote {path}")
