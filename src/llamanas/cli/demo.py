"""``make demo``: ``llamanas compress`` on the default model with a budget small enough for a 2-core laptop.

It writes what a user keeps: the compressed HF checkpoint, its GGUF files, the search run with its report,
and a model card comparing base and compressed model on held-out questions (``OUT/README.md``). Re-running
resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamanas.pipeline.args import CompressArgs


@dataclass
class DemoArgs:
    """What ``llamanas demo`` runs: ``compress`` with a small budget."""

    task: str = "arc_easy"
    """Task to compress for (one with signal on the default model)."""
    target: float = 0.8
    """Largest fraction of the parameters the compressed model keeps."""
    evaluations: int = 12
    """Real evaluations of the search."""
    select_limit: int = 50
    """Validation questions the search selects on."""
    report_limit: int = 200
    """Held-out (test) questions the model card reports on."""
    warm_start_windows: int = 4
    """Calibration windows of the sensitivity warm start (compress's default 16 takes 5 of the demo's minutes)."""
    seed: int = 0
    """Seed of the search and of the question subsets."""
    out: str = "runs/demo"
    """Folder for everything the demo writes; re-running resumes there."""
    device: str = "auto"
    """auto (CUDA if present, else cpu) | cpu | cuda | cuda:N."""


def demo_args(args: DemoArgs) -> CompressArgs:
    return CompressArgs(
        model="default",
        tasks=(args.task,),
        target=args.target,
        evaluations=args.evaluations,
        population=6,
        select_limit=args.select_limit,
        report_limit=args.report_limit,
        warm_start_windows=args.warm_start_windows,
        confirm=2,
        confirm_limit=100,
        timing_rounds=3,
        seed=args.seed,
        out=args.out,
        device=args.device,
    )
