"""The pick rule of ``llamanas compress``, chosen on validation questions only.

    python bench/bench_pick.py --runs runs/compress-0.9 runs/compress-0.8 runs/compress-0.7 \
        --out runs/bench_pick.json

``compress`` re-scores a few candidates (``pipeline.pick.candidates``) on confirmation questions and keeps
the largest one within ``--pick-tolerance`` paired standard errors of the most accurate (``pick.choose``;
0 = the most accurate). Which tolerance generalizes is judged here without the test split:

* ARC-Easy validation after each run's selection questions (all the rest: 400 confirmation + 70 unused,
  for the default settings), every candidate scored per question, split into two seeded halves. The rule
  picks on one half and is judged on the other, both ways (two folds per run).
* PIQA validation (``--piqa-limit`` seeded questions), a task no search here selects on: the rule picks
  on the run's own confirmation questions, exactly as ``compress`` does, and the pick is judged there.

Table: per tolerance, the mean judged accuracy of its picks and the paired difference against tolerance 0
(points ± paired standard error, questions of all runs and folds pooled), and the picks' mean size. Scores
are cached in ``--out`` (a re-run scores only new candidates).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from llamanas.evaluation.evaluate import loglikelihoods, model_max_length, per_question, prepare
from llamanas.evaluation.questions import Questions
from llamanas.evaluation.tasks import load_docs, subset
from llamanas.pipeline.args import CompressArgs, confirm_questions
from llamanas.pipeline.pick import Scored, candidates, choose
from llamanas.pipeline.recipe import Recipe
from llamanas.search.run import load_run
from llamanas.supernet.elastic import load_supernet

sys.path.insert(0, str(Path(__file__).parent))
from bench_instatune import paired  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--runs", nargs="+", type=Path, required=True, help="compress output folders (search done)"
    )
    ap.add_argument(
        "--tolerances", default="0,0.5,1,1.5,2,3", help="pick tolerances to compare (standard errors)"
    )
    ap.add_argument("--piqa-limit", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_pick.json"))
    a = ap.parse_args()
    tolerances = [float(t) for t in a.tolerances.split(",")]
    cache = json.loads(a.out.read_text()) if a.out.is_file() else {}
    runs = []
    for run in a.runs:
        state = json.loads((run / "compress.json").read_text())
        args = CompressArgs(
            **{k: v for k, v in state["args"].items() if k in CompressArgs.__dataclass_fields__}
        )
        if list(args.tasks) != ["arc_easy"]:
            raise SystemExit(f"{run}: this bench reads ARC-Easy runs only, got tasks {args.tasks}")
        recipe = Recipe.from_dict(state["stages"]["plan"]["recipe"])
        view = load_run(run / "search")
        runs.append((run, args, recipe, candidates(view, run / "search", recipe, args.confirm)))

    supernet, tok = load_supernet("default", importance=runs[0][2].importance, dtype="float32", device="cpu")
    arch = supernet.arch
    n_max = model_max_length(supernet.model, tok)
    seed = runs[0][1].seed
    rest = Questions(split="validation", limit=None, seed=seed, offset=runs[0][1].select_limit)
    piqa = Questions(split="validation", limit=a.piqa_limit, seed=seed)
    prepared = {
        "arc_easy": prepare(tok, ["arc_easy"], rest, max_length=n_max),
        "piqa": prepare(tok, ["piqa"], piqa, max_length=n_max),
    }
    for run, args, recipe, cands in runs:
        assert (args.seed, args.select_limit, recipe.importance) == (seed, rest.offset, runs[0][2].importance)
        for e in cands:
            key = json.dumps(e.config.to_dict(), sort_keys=True)
            if key in cache:
                continue
            row = {"params": e.config.num_params(arch)}
            with torch.no_grad(), supernet.subnet(e.config):
                for task, prep in prepared.items():
                    row[task] = (
                        per_question(prep, loglikelihoods(supernet.model, prep))[task].astype(int).tolist()
                    )
            cache[key] = row
            print(f"{run.name} #{e.seq}: {row['params']:,} params, ARC rest {np.mean(row['arc_easy']):.3f}, "
                  f"PIQA {np.mean(row['piqa']):.3f}", flush=True)  # fmt: skip
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(cache))

    # Which of the rest-of-validation questions are the confirmation ones (the first confirm_limit after the
    # selection in the seeded order), and two seeded halves of all of them for the folds.
    indices = prepared["arc_easy"].tasks[0].indices
    confirm = confirm_questions(runs[0][1])
    n_docs = len(load_docs("arc_easy", "validation"))
    confirm_mask = np.isin(indices, subset(n_docs, confirm.limit, seed, offset=confirm.offset))
    halves = np.random.default_rng(seed).permutation(len(indices)) % 2
    print(f"\nARC-Easy validation after the selection: {len(indices)} questions ({confirm_mask.sum()} confirmation); "
          f"PIQA validation: {a.piqa_limit}")  # fmt: skip

    judged: dict[float, dict[str, list]] = {
        t: {"arc": [], "piqa": [], "params": [], "picks": []} for t in tolerances
    }
    for run, _, _, cands in runs:
        rows = {e.seq: cache[json.dumps(e.config.to_dict(), sort_keys=True)] for e in cands}
        for t in tolerances:
            for fold in (0, 1):
                on = {
                    s: Scored(r["params"], {"arc_easy": np.asarray(r["arc_easy"])[halves == fold]})
                    for s, r in rows.items()
                }
                k = choose(on, t)
                judged[t]["arc"].append(np.asarray(rows[k]["arc_easy"])[halves != fold])
            on = {
                s: Scored(r["params"], {"arc_easy": np.asarray(r["arc_easy"])[confirm_mask]})
                for s, r in rows.items()
            }
            k = choose(on, t)
            judged[t]["piqa"].append(np.asarray(rows[k]["piqa"]))
            judged[t]["params"].append(rows[k]["params"] / arch.num_params())
            judged[t]["picks"].append(f"{run.name}:#{k}")

    ref = {m: np.concatenate(judged[0.0][m]) if 0.0 in judged else None for m in ("arc", "piqa")}
    print("\n| tolerance (SE) | picks on the confirmation questions | mean size | ARC-Easy val, other half | "
          "Δ vs 0 | PIQA val | Δ vs 0 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for t in tolerances:
        arc, pq = np.concatenate(judged[t]["arc"]), np.concatenate(judged[t]["piqa"])
        d = [
            "{:+.1f} ± {:.1f}".format(*paired(ref[m], x)) if ref[m] is not None else "-"
            for m, x in (("arc", arc), ("piqa", pq))
        ]
        print(f"| {t:g} | {', '.join(judged[t]['picks'])} | {np.mean(judged[t]['params']):.1%} | "
              f"{arc.mean():.3f} | {d[0]} | {pq.mean():.3f} | {d[1]} |")  # fmt: skip


if __name__ == "__main__":
    main()
