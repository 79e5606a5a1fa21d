"""``compress``: one command from a model to a smaller one; and ``demo``, the same on the default model."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from llamanas.cli.app import app, console
from llamanas.cli.demo import DemoArgs, demo_args
from llamanas.cli.options import Flag, dataclass_command
from llamanas.pipeline.args import CompressArgs
from llamanas.pipeline.compress import Progress as CompressProgress
from llamanas.pipeline.compress import compress as compress_fn


def _run(args: CompressArgs) -> None:
    columns = (
        TextColumn("  search"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("front {task.fields[front]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console)
    task = bar.add_task("search", total=args.evaluations, front=0)

    def update(traj):
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=traj.live.done, front=len(traj.live.points))

    def say(line: str) -> None:
        if bar.live.is_started:
            bar.stop()
        console.print(line, highlight=False)

    try:
        card = compress_fn(args, CompressProgress(say=say, search=update))
    finally:
        bar.stop()
    console.print(f"[bold green]Model card:[/bold green] {card.resolve()}")


@dataclass_command(
    app,
    CompressArgs,
    flags={"tasks": Flag(help="See `llamanas tasks`.")},
    epilog="Example: `llamanas compress --model default --tasks arc_easy --target 0.8 --out small/`. "
    "Re-running the same command resumes where it stopped (after a crash or kill -9, too).",
)
def compress(args: CompressArgs):
    """Make a model smaller for your tasks: search, extract, GGUF and a model card, in one folder.

    The recipe is the best one measured (docs/benchmarks.md) and is printed before any work; the model card
    (OUT/README.md) compares base and compressed model on held-out questions the search never saw, and
    their llama.cpp speeds timed alternately.
    """
    _run(args)


@dataclass_command(app, DemoArgs, flags={"out": Flag("--out")})
def demo(args: DemoArgs):
    """`llamanas compress` on the default model with a small budget (about five minutes on two cores)."""
    _run(demo_args(args))
