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

``--fronts`` runs several searches of the same budget, one front row each (``OUT/search`` for ``plain``,
``OUT/search-NAME`` for the others), against one set of baselines:
  plain       the super-network as every command loads it (rms ordering, no compensation);
  warm        the same with ``--warm-start sensitivity`` (the first population seeded by sensitivity);
  wanda+bias  the compensated super-network: wanda ordering and bias compensation (``--importance wanda
              --compensate``); its front members are re-evaluated with the same settings.
The baselines (``--methods``, e.g. ``depth,shortgpt,width,sensitivity``) are evaluated once and kept in
``OUT/baselines``; a re-run reuses them when the settings match (``--fresh-baselines`` re-evaluates).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from llamanas.evaluation.evaluate import evaluate
from llamanas.evaluation.questions import Questions
from llamanas.evidence.args import METHODS, BaselineArgs
from llamanas.evidence.baselines import read_baselines, run_baselines
from llamanas.search.args import SearchArgs
from llamanas.search.run import search
from llamanas.supernet.elastic import load_supernet

WIDTH_ONLY_SPACE = Path(__file__).with_name("instatune_space.yaml")
# Front name -> (search settings, load_supernet settings) that differ from the plain run.
FRONTS = {
    "plain": ({"warm_start": ()}, {}),  # cold, as measured before warm starts were the default
    "warm": ({"warm_start": ("sensitivity",)}, {}),
    "wanda+bias": (
        {"importance": "wanda", "compensate": True, "warm_start": ()},
        {"importance": "wanda", "compensate": True},
    ),
}


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
    ap.add_argument("--fronts", default="plain", help=f"Comma-separated, of {', '.join(FRONTS)}.")
    ap.add_argument("--methods", default=",".join(METHODS), help="Baselines (llamanas baselines --methods).")
    ap.add_argument("--fresh-baselines", action="store_true", help="Re-evaluate stored baselines.")
    ap.add_argument(
        "--calibration-samples",
        type=int,
        default=32,
        help="Calibration windows (128 tokens) of block influence and sensitivity (run_baselines' num_samples; "
        "sensitivity costs one pass over them per (layer, width choice)).",
    )
    args = ap.parse_args()
    fronts = [f for f in args.fronts.split(",") if f]
    if set(fronts) - set(FRONTS):
        ap.error(f"unknown front(s) {sorted(set(fronts) - set(FRONTS))}; choose from {', '.join(FRONTS)}")
    methods = [m for m in args.methods.split(",") if m]
    offset = 0 if args.overlap else args.search_limit  # table questions after the search's ones
    space = "full" if args.space == "default" else args.space
    tasks = [t for t in args.tasks.split(",") if t]
    sizes = [float(s) for s in args.sizes.split(",")]
    t0 = time.time()

    runs, search_s = {}, {}
    for name in fronts:
        extra, _ = FRONTS[name]
        t = time.time()
        runs[name] = search(
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
                out=str(args.out / ("search" if name == "plain" else f"search-{name}")),
                **extra,
            )
        )
        search_s[name] = time.time() - t
        run = runs[name]
        print(
            f"search {name}: {run.evaluations} evaluations, {len(run.front)} on the front, "
            f"{search_s[name]:.0f} s",
            flush=True,
        )

    t1 = time.time()
    stored = args.out / "baselines" / "settings.json"
    settings = {"tasks": tasks, "sizes": sizes, "methods": methods, "limit": args.limit, "seed": args.seed}
    settings |= {"offset": offset, "model": args.model, "supernet": args.supernet}
    settings |= {"calibration_samples": args.calibration_samples}
    if not args.fresh_baselines and stored.is_file() and json.loads(stored.read_text()) == settings:
        baselines = read_baselines(args.out / "baselines")
        print("baselines: reused from", args.out / "baselines", flush=True)
    else:
        baselines = run_baselines(
            BaselineArgs(
                model=args.model,
                tasks=tuple(tasks),
                sizes=tuple(sizes),
                out=str(args.out / "baselines"),
                supernet=args.supernet,
                methods=tuple(methods),
                calibration_samples=args.calibration_samples,
                questions=Questions(split="validation", limit=args.limit, seed=args.seed, offset=offset),
            )
        )
        stored.write_text(json.dumps(settings))
    baselines_s = time.time() - t1
    full = baselines.full_params

    front_rows: dict[str, dict[float, dict]] = {}
    for name, run in runs.items():
        supernet, tokenizer = load_supernet(args.supernet or args.model, space_file=space, **FRONTS[name][1])
        front_rows[name] = {}
        for size in sizes:
            fits = [m for m in run.front if m.values["params"] <= size * full]
            if not fits:
                continue
            best = max(fits, key=lambda m: m.values["accuracy"])
            cfg = best.config
            with supernet.subnet(cfg):
                res = evaluate(
                    supernet.model,
                    tokenizer,
                    tasks,
                    questions=Questions(split="validation", limit=args.limit, seed=args.seed, offset=offset),
                )
            front_rows[name][size] = {
                "config": cfg.to_dict(),
                "params": cfg.num_params(supernet.arch),
                "search_acc": best.values["accuracy"],
                "results": {k: r.to_dict() for k, r in res.items()},
            }
            print(f"front {name} @ {size}: {cfg.num_params(supernet.arch) / full:.1%} params", flush=True)
        del supernet

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
        for name, by_size in front_rows.items():
            if size in by_size:
                f = by_size[size]
                label = "**LINAS front**" if name == "plain" else f"**LINAS front ({name})**"
                line(f"{size:.0%}", label, f["params"], f["results"])
        for r in rows:
            if r.method != "base" and r.target == size:
                name = r.method + ("" if r.source == "base" else f" ({r.source})")
                line(f"{size:.0%}", name, r.params, r.results)
    meta = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "search_s": {k: round(v, 1) for k, v in search_s.items()},
        "baselines_s": round(baselines_s, 1),
        "wall_s": round(time.time() - t0, 1),
        "front": {name: {str(k): v for k, v in rows.items()} for name, rows in front_rows.items()},
        "baselines": baselines.to_dict(),
    }
    (args.out / "results.json").write_text(json.dumps(meta, indent=2))
    print(f"\nwrote {args.out / 'results.json'} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
