"""Commands that produce evidence: ``baselines``, ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llamanas.cli.app import app, console, out
from llamanas.cli.options import dataclass_command
from llamanas.cli.tables import baselines_table
from llamanas.evaluation.tasks import resolve_tasks
from llamanas.evidence.args import BaselineArgs
from llamanas.evidence.baselines import run_baselines
from llamanas.evidence.report import report as report_fn


@dataclass_command(
    app,
    BaselineArgs,
    required=("tasks", "out"),
    exclude=("seq_len", "width_multiple"),
    epilog="Example: `llamanas baselines --tasks arc_easy --sizes 0.9,0.8 --methods width,sensitivity "
    "--split validation --limit 200 --out runs/baselines`. Re-running the same command after an interruption "
    "re-uses the baselines it finished.",
)
def baselines(args: BaselineArgs):
    """Evaluate pruning baselines at matched size: depth truncation, ShortGPT layer removal, uniform MLP width."""
    resolve_tasks(list(args.tasks))  # an unknown task fails here, before anything loads
    console.print("Evaluating baselines" + (" and fine-tuning them" if args.recover else "") + " ...")
    columns = (
        TextColumn("  baseline {task.completed}/{task.total}: {task.fields[label]}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console)
    task = bar.add_task("baselines", total=None, label="")

    def progress(done: int, total: int, label: str) -> None:
        if not bar.live.is_started:  # started at the first baseline: loading and calibration print cleanly
            bar.start()
        bar.update(task, completed=done, total=total, label=label)

    try:
        run = run_baselines(args, progress)
    finally:
        bar.stop()
    out.print(baselines_table(f"Baselines of {args.model}", run.rows, list(args.tasks)))
    console.print(f"wrote {Path(args.out) / 'baselines.json'} and baselines.csv")


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
