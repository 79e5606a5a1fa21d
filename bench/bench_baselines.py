"""The searched front against pruning baselines at matched size (LLaMA-NAS tables 2-3, on our model).

    python bench/bench_baselines.py --out runs/bench_baselines

1. A LINAS search (accuracy on a seeded subset of ARC-Easy validation, and parameters) in the width-only
   space of ``bench/instatune_space.yaml`` (plus, with ``--space default``, the space that also skips
   layers). Resumes from its store when re-run.
2. For each size (fraction of the full model's parameters), the front member with the best search
   accuracy among those no larger than the size, and the three baselines of ``llamanas baselines`` (depth
   truncation, ShortGPT block influence, uniform MLP width), each the largest config not above the size.
3. Everything re-evaluated on the same held-out questions of two tasks (ARC-Easy validation and PIQA
   validation by default), with standard errors; accuracies within two standard errors of chance marked.

Selection and report use disjoint questions by construction: the search scores the first
``--search-limit`` questions of ARC-Easy validation in the order seeded by ``--seed``, and the table the
next ``--limit`` ones of the same order (``evaluate(..., offset=search_limit)``; 100 + 400 of the 570).
``--overlap`` restores the earlier protocol (search on a subset drawn with seed + 1, table on an
independent subset drawn with seed: about 70 of 400 table questions were then also search questions).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from llamanas.evaluation.evaluate import evaluate
from llamanas.evidence.baselines import run_baselines
from llamanas.search.run import SearchArgs, search
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.space import SubnetConfig

WIDTH_ONLY_SPACE = Path(__file__).with_name("instatune_space.yaml")


def cell(r: dict) -> str:
    """'acc ± se' with a mark when within two standard errors of chance."""
    acc, se, chance = r["metrics"]["acc"], r["stderr"]["acc"], r.get("chance")
    flag = " (chance)" if chance is not None and abs(acc - chance) <= 2 * se else ""
    return f"{acc:.3f} ± {se:.3f}{flag}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument(
        "--supernet",
        default=None,
        help="A fine-tuned super-network of --model: the search runs on it, and the baselines are also "
        "sliced from its weights (the same fine-tuning).",
    )
    ap.add_argument("--space", default=str(WIDTH_ONLY_SPACE), help="Search-space file, or 'default'.")
    ap.add_argument("--tasks", default="arc_easy,piqa", help="Tasks of the matched-size table.")
    ap.add_argument("--limit", type=int, default=500, help="Questions per task in the table.")
    ap.add_argument("--sizes", default="0.9,0.8,0.7")
    ap.add_argument("--search-task", default="arc_easy")
    ap.add_argument("--search-limit", type=int, default=100)
    ap.add_argument("--evaluations", type=int, default=24)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_baselines"))
    ap.add_argument("--overlap", action="store_true", help="the earlier protocol (see above)")
    args = ap.parse_args()
    offset = 0 if args.overlap else args.search_limit  # table questions after the search's ones
    space = None if args.space == "default" else args.space
    tasks = [t for t in args.tasks.split(",") if t]
    sizes = [float(s) for s in args.sizes.split(",")]
    t0 = time.time()

    run = search(
        SearchArgs(
            model=args.supernet or args.model,
            tasks=(args.search_task,),
            objectives=("accuracy", "params"),
            algorithm="linas",
            evaluations=args.evaluations,
            population=args.population,
            limit=args.search_limit,
            data_seed=args.seed + 1 if args.overlap else args.seed,
            seed=args.seed,
            space=space,
            inner_generations=300,
            out=str(args.out / "search"),
        )
    )
    search_s = time.time() - t0
    print(
        f"search: {run.evaluations} evaluations, {len(run.front)} on the front, {search_s:.0f} s", flush=True
    )

    t1 = time.time()
    baselines = run_baselines(
        args.model,
        tasks,
        sizes,
        args.out / "baselines",
        supernet_dir=args.supernet,
        split="validation",
        limit=args.limit,
        seed=args.seed,
        offset=offset,
    )
    baselines_s = time.time() - t1
    full = baselines.full_params

    supernet, tokenizer = load_supernet(args.supernet or args.model, space_file=space)
    picks: dict[float, tuple[SubnetConfig, float]] = {}
    for size in sizes:
        fits = [m for m in run.front if m.values["params"] <= size * full]
        if fits:
            best = max(fits, key=lambda m: m.values["accuracy"])
            picks[size] = (best.config, best.values["accuracy"])
    front_rows = {}
    for size, (cfg, search_acc) in picks.items():
        with supernet.subnet(cfg):
            res = evaluate(
                supernet.model,
                tokenizer,
                tasks,
                split="validation",
                limit=args.limit,
                seed=args.seed,
                offset=offset,
            )
        front_rows[size] = {
            "config": cfg.to_dict(),
            "params": cfg.num_params(supernet.arch),
            "search_acc": search_acc,
            "results": {k: r.to_dict() for k, r in res.items()},
        }
        print(f"front @ {size}: {cfg.num_params(supernet.arch) / full:.1%} params", flush=True)

    rows = [r for r in baselines.rows if r.config is not None]
    where = "overlapping the search's" if args.overlap else f"after the search's {offset} in the seeded order"
    print(f"\nValidation accuracy (acc ± standard error, {args.limit} questions per task, {where})\n")
    print("| size | method | params | " + " | ".join(tasks) + " |")
    print("|---|---|---|" + "---|" * len(tasks))

    def line(size: str, name: str, params: int, results: dict) -> None:
        cells = " | ".join(cell(results[t]) for t in tasks)
        print(f"| {size} | {name} | {params / 1e6:.1f}M ({params / full:.1%}) | {cells} |")

    for r in rows:
        if r.method == "base":
            line("100%", "base model" if r.source == "base" else "super-network, full", r.params, r.results)
    for size in sizes:
        if size in front_rows:
            f = front_rows[size]
            line(f"{size:.0%}", "**LINAS front**", f["params"], f["results"])
        for r in rows:
            if r.method != "base" and r.target == size:
                name = r.method + ("" if r.source == "base" else f" ({r.source})")
                line(f"{size:.0%}", name, r.params, r.results)
    meta = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "search_s": round(search_s, 1),
        "baselines_s": round(baselines_s, 1),
        "wall_s": round(time.time() - t0, 1),
        "front": {str(k): v for k, v in front_rows.items()},
        "baselines": baselines.to_dict(),
    }
    (args.out / "results.json").write_text(json.dumps(meta, indent=2))
    print(f"\nwrote {args.out / 'results.json'} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
