"""Commands that run the long stages: ``finetune``, ``search``, ``front``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llamanas.cli.app import (
    app,
    console,
    out,
)
from llamanas.cli.options import Flag, dataclass_command
from llamanas.cli.tables import (
    front_table,
)
from llamanas.deploy.speed import DEFAULT_CONFIGS, DEFAULT_HOLDOUT, build_latency_table_for, time_front
from llamanas.search import objectives as objmod
from llamanas.search.algorithms import ALGORITHMS
from llamanas.search.args import SearchArgs
from llamanas.search.objectives import RUNTIMES
from llamanas.search.predictors import KINDS as PREDICTORS
from llamanas.search.run import adopt_run, load_run
from llamanas.search.run import search as search_fn
from llamanas.search.warm_start import WARM_STARTS
from llamanas.supernet.importance import IMPORTANCES
from llamanas.tuning.args import TuneArgs
from llamanas.tuning.tune import finetune as finetune_fn


@dataclass_command(
    app,
    TuneArgs,
    required=("data", "out"),
    flags={"out": Flag(help="Pass it to any other command as --model.")},
    epilog="Several GPUs: `accelerate launch -m llamanas.cli finetune --data DATA --out DIR ...` "
    "(one process per GPU; --batch-size is per process). Re-running the same command resumes from the "
    "last checkpoint in --out.",
)
def finetune(args: TuneArgs):
    """Fine-tune a model once into a super-network whose sub-networks are all good (InstaTune).

    Channels are ordered by importance first, then the full network and sampled sub-networks are
    trained together on instruction data (loss on the response tokens). The output folder is an HF
    checkpoint with `llamanas_supernet.json` (search space, training record), `losses.csv` and
    `losses.png`; pass it to any other command as `--model`.
    """
    result = finetune_fn(args)
    if not result.main_process:
        return
    rec = result.record
    held = rec["final_losses"]["held_out"]
    summary = ", ".join(f"{k} {v:.3f}" for k, v in held.items())
    console.print(
        f"wrote {result.out} ({rec['steps']} steps, {rec['tokens']:,} tokens, {rec['wall_time_s']:.0f} s"
        + (f"; held-out loss {summary}" if summary else "")
        + ")"
    )


# --- quantization, baselines and the report (issue 5) ------------------------------------------------


def _latency_table_builder(args, space, path):
    """Time sub-networks in llama.cpp and fit the latency table a `--runtime llamacpp` search needs."""
    n = DEFAULT_CONFIGS + DEFAULT_HOLDOUT
    console.print(f"No --latency-table: timing {n} sub-networks in llama.cpp for {path} ...")
    table = build_latency_table_for(
        args,
        space,
        path,
        progress=lambda i, total, cfg: console.print(
            f"  {i + 1}/{total}: {cfg.depth} layers", highlight=False
        ),
    )
    for v, h in table.holdout.items():
        tau = "n/a" if h["kendall_tau"] is None else f"{h['kendall_tau']:.2f}"
        console.print(f"latency table, held out ({h['n']}): {v} MAPE {h['mape']:.1%}, Kendall tau {tau}")
    return table


OBJECTIVES_HELP = (
    f"{', '.join(objmod.KINDS)}; per task as METRIC:TASK with METRIC one of {', '.join(objmod.PER_TASK)} "
    "(e.g. acc:arc_easy)."
)


@dataclass_command(
    app,
    SearchArgs,
    required=("out", "evaluations"),
    exclude=("seq_len",),
    flags={
        "objectives": Flag(help=OBJECTIVES_HELP),
        "algorithm": Flag(help=f"Choices: {', '.join(ALGORITHMS)}."),
        "predictor": Flag(help=f"Choices: {', '.join(PREDICTORS)}."),
        "importance": Flag(help=f"Choices: {', '.join(IMPORTANCES)}."),
        "runtime": Flag(help=f"Choices: {', '.join(RUNTIMES)}."),
        "warm_start": Flag(help=f"Choices: {', '.join(WARM_STARTS)}, none."),
        "constraints": Flag("--constraint", repeat=True, help="Units K, M, B, %; repeatable."),
        "workers": Flag(help="Parallel workers; > 1 starts a local Ray with one actor per worker."),
        "ray_address": Flag(help="Join this Ray cluster: one worker per GPU there."),
    },
    epilog="Example: `llamanas search --model default --tasks arc_easy --objectives accuracy,params "
    "--algorithm linas --evaluations 100 --limit 200 --out runs/linas`. Re-running the same command resumes "
    "the run (nothing evaluated is lost or evaluated again); a larger --evaluations extends it.",
)
def search(args: SearchArgs):
    """Multi-objective search for sub-networks (LINAS, NSGA-II or random), resumable, optionally on Ray."""
    out_dir, algorithm, evaluations = args.run_dir, args.algorithm, args.evaluations
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("front {task.fields[front]}  HV {task.fields[hv]:.4f}"),
        TimeElapsedColumn(),
    )
    bar = Progress(*columns, console=console)
    task = bar.add_task(f"{algorithm} search", total=evaluations, front=0, hv=0.0)

    def update(traj):
        if not bar.live.is_started:  # started at the first result: errors and loading print cleanly
            bar.start()
        bar.update(task, completed=traj.live.done, front=len(traj.live.points), hv=traj.live.hv)

    kept, _ = adopt_run(args)
    if kept.warm_start != args.warm_start:
        console.print(
            f"Resuming {out_dir} with its own warm start ({', '.join(kept.warm_start) or 'none'}); "
            "use a new --out for today's default."
        )
    console.print(f"Loading {args.model} (workers: {args.ray_address or args.workers}) ...")
    try:
        result = search_fn(args, progress=update, latency_table_builder=_latency_table_builder)
    finally:
        bar.stop()
    out.print(front_table(load_run(out_dir), f"Pareto front of {out_dir}"))
    if args.runtime == "llamacpp" and args.timing_names:  # the table predicted speeds: time the front
        with console.status("Timing the front in llama.cpp"):
            console.print(f"wrote {time_front(out_dir)}")
    hv = result.hypervolume[-1][1] if result.hypervolume else 0.0
    if args.minutes and result.evaluations < evaluations:
        console.print(
            f"The --minutes {args.minutes:g} time budget stopped the search before --evaluations {evaluations}."
        )
    questions = f"; {result.questions[-1]} questions scored, low rungs included" if args.halving else ""
    console.print(
        f"{result.evaluations} evaluations ({result.computed} run now, {result.evaluations - result.computed} "
        f"from the store{questions}), front {len(result.front)}, hypervolume {hv:.4f}, {result.seconds:.0f}s; wrote "
        f"{out_dir}/front.json, front.csv, hypervolume.csv, predictors.csv, run.json"
    )


@app.command()
def front(
    run_dir: Annotated[Path, typer.Argument(help="A search run directory (written by `llamanas search`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the front as JSON.")] = False,
):
    """Print the current Pareto front of a search run (also while it runs); extract one with --subnet RUN_DIR:ID."""
    view = load_run(run_dir)
    if as_json:
        print(
            json.dumps(
                [{"id": m.id, "values": m.values, "config": m.config.to_dict()} for m in view.front], indent=2
            )
        )
        return
    out.print(front_table(view, f"Pareto front of {run_dir} ({len(view.evaluated)} evaluations)"))
