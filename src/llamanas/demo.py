"""``make demo``: the pipeline on the default model, small enough for a 2-core laptop (about 10 minutes).

LINAS search (accuracy vs parameters on a fixed ARC-Easy validation subset) on the importance-ordered
super-network -> the Pareto front -> extraction of the best member under a size budget -> INT8 of it ->
pruning baselines at the same size -> the HTML report. Every step writes into ``out`` and is resumable:
re-running continues where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoArgs:
    model: str = "default"
    task: str = "arc_easy"
    limit: int = 50
    evaluations: int = 24
    population: int = 8
    size: float = 0.8  # fraction of the full model's parameters for extraction and baselines
    seed: int = 0
    out: str = "runs/demo"


def run_demo(args: DemoArgs, console, front_table) -> Path:
    from llamanas.baselines import run_baselines
    from llamanas.extract import extract
    from llamanas.quantize import quantize_model, save_quantized  # noqa: I001
    from llamanas.report import report
    from llamanas.search import SearchArgs, load_run, search
    from llamanas.supernet import load_supernet

    out = Path(args.out)
    run_dir = out / "search"
    console.rule(
        f"1/5 LINAS search: {args.evaluations} sub-networks, {args.task} ({args.limit} validation items)"
    )
    search(
        SearchArgs(
            model=args.model,
            tasks=(args.task,),
            objectives=("accuracy", "params"),
            algorithm="linas",
            evaluations=args.evaluations,
            population=args.population,
            limit=args.limit,
            seed=args.seed,
            inner_generations=300,
            out=str(run_dir),
        )
    )
    view = load_run(run_dir)
    console.print(front_table(view, f"Pareto front ({len(view.evaluated)} evaluations)"))

    console.rule(f"2/5 extraction: most accurate front member within {args.size:.0%} of the parameters")
    supernet, tokenizer = load_supernet(args.model)
    budget = args.size * supernet.num_params()
    fitting = [
        m for m in view.front if m.measured.get("params", m.config.num_params(supernet.arch)) <= budget
    ]
    if not fitting:
        console.print(
            f"No front member is within {args.size:.0%} of the parameters; extracting the smallest."
        )
        fitting = [min(view.front, key=lambda m: m.config.num_params(supernet.arch))]
    best = max(fitting, key=lambda m: m.values["accuracy"])
    small = extract(
        supernet, best.config, out / "extracted", tokenizer, metadata={"run": str(run_dir), "id": best.id}
    )
    console.print(f"front member {best.id}: accuracy {best.values['accuracy']:.3f}, saved to {small}")

    console.rule("3/5 INT8 weight-only quantization: the extracted model, and the whole front re-evaluated")
    from llamanas.models import load_model
    from llamanas.quantize import quantize_front

    quantize_front(run_dir, "int8", supernet=supernet, tokenizer=tokenizer, progress=True)

    model, tok = load_model(str(small))
    quantize_model(model, "int8", backend="cpu")
    qdir = save_quantized(model, out / "extracted-int8", tok, metadata={"source": str(small)})
    info = json.loads((qdir / "llamanas_quant.json").read_text())
    console.print(f"saved to {qdir}: " + ", ".join(f"{k}={v}" for k, v in info.items() if "bytes" in k))

    console.rule(f"4/5 pruning baselines at {args.size:.0%} of the parameters")
    run_baselines(
        args.model,
        [args.task],
        sizes=(args.size,),
        out_dir=out / "baselines",
        split="validation",
        limit=args.limit,
        seed=0,
    )

    console.rule("5/5 report")
    path = report(run_dir, baselines=out / "baselines")
    console.print(f"[bold green]Report:[/bold green] {path.resolve()}")
    return path
