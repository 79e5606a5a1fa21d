"""Random vs NSGA-II vs LINAS at the same budget of real evaluations (a benchmark, not a test).

    python bench/bench_search.py --plan                      # time one evaluation, print the projected cost
    python bench/bench_search.py --evaluations 48 --population 8 --limit 50 --seeds 0 1 2 --out runs/bench_search

Setup: the default model (SmolLM2-135M-Instruct, importance-ordered), a fixed ARC-Easy validation subset
(``--limit`` questions, ``--data-seed``), objectives gold_nll (mean NLL of the gold answers, minimised) and
params. gold_nll rather than accuracy: without InstaTune fine-tuning most sub-networks of the default model
score near chance on ARC-Easy, and on a 50-question subset accuracy moves in steps of 2 points with a
standard error of ~7; the gold answer's NLL still separates them smoothly, which is what a search (and
its predictors) needs. Every algorithm runs with each seed; all runs share one results store, so the
random initial population (the same for the three algorithms of a seed) is evaluated once, but every run
counts all evaluations in its own trajectory (honest budgets). The hypervolume uses fixed bounds: params
between the smallest and largest sub-network, gold_nll between 0 and a uniform guess over the vocabulary.

Columns (``--columns``): random, nsga2, linas, and LINAS with its optional pieces: +screen (the KL proxy
screen), +halving (multi-fidelity: candidates scored on the first 1/K of the questions, the best promoted),
+warm (``--warm``: sensitivity and attention warm starts, computed once and shared), +all. Costs are also counted in
questions scored (low rungs included), and each column's hypervolume is read at NSGA-II's question budget.

Reported: hypervolume against real evaluations (mean and range over seeds, PNG into docs/), and how many
real evaluations each algorithm needs to reach the hypervolume NSGA-II reaches with the full budget (per
seed). Goal: LINAS needs at most a third of NSGA-II's evaluations.

Re-running the same command resumes: finished runs are read back from the store, interrupted ones resume.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from llamanas.search.args import SearchArgs
from llamanas.search.files import RunFiles
from llamanas.search.run import resolve_space, search
from llamanas.search.workers import SupernetSpec

# Columns: an algorithm, then LINAS's optional pieces: +screen (the proxy screen), +halving (multi-fidelity),
# +warm (sensitivity and attention warm starts); "linas+all" is LINAS with every piece.
PIECES = ("screen", "halving", "warm")
ALGORITHMS = (
    "random",
    "nsga2",
    "linas",
    "linas+screen",
    "linas+halving",
    "linas+warm",
    "linas+warm+halving",
    "linas+all",
)


class SharedSpec:
    """Builds the super-network evaluator once and hands the same one to every run (saves 9 model loads)."""

    def __init__(self, spec: SupernetSpec):
        self.spec = spec
        self.evaluator = None

    def build(self, device=None):
        if self.evaluator is None:
            self.evaluator = self.spec.build(device)
        return self.evaluator


def search_args(a: argparse.Namespace, column: str, seed: int) -> SearchArgs:
    algorithm, *pieces = column.split("+")
    pieces = PIECES if pieces == ["all"] else pieces
    return SearchArgs(
        model=a.model,
        tasks=(a.task,),
        objectives=("gold_nll", "params"),
        algorithm=algorithm,
        evaluations=a.evaluations,
        proxy_windows=a.proxy_windows,
        screen=a.screen if "screen" in pieces else 0,
        halving=a.halving if "halving" in pieces else 0,
        warm_start=tuple(a.warm.split(",")) if "warm" in pieces else (),
        warm_start_windows=a.warm_windows,
        space=a.space,
        out=str(a.out / f"{column}-seed{seed}"),
        split="validation",
        limit=a.limit,
        population=a.population,
        seed=seed,
        data_seed=a.data_seed,
        inner_generations=a.inner_generations,
        predictor=a.predictor,
        store=str(a.out / "results.sqlite"),
    )


def evaluations_to_reach(trace: list[float], target: float) -> int | None:
    """First number of evaluations whose hypervolume is >= target (None: never)."""
    for n, hv in enumerate(trace, 1):
        if hv >= target - 1e-12:
            return n
    return None


def cost_to_reach(trace: list[float], cost: list[int], target: float) -> int | None:
    """Questions spent when the hypervolume first reaches target (None: never)."""
    n = evaluations_to_reach(trace, target)
    return None if n is None else cost[n - 1]


def hv_at_cost(trace: list[float], cost: list[int], budget: int) -> float:
    """Hypervolume after the last evaluation that fits within ``budget`` questions."""
    fit = [hv for hv, c in zip(trace, cost, strict=True) if c <= budget]
    return fit[-1] if fit else 0.0


def prepare_warm_start(a: argparse.Namespace, shared: SharedSpec, columns: list[str]) -> float:
    """Compute the warm-start seeds once and put them in every warm run's folder (each would compute the
    same ones: they depend on the super-network and the calibration text only). Returns the seconds spent."""
    warm = [c for c in columns if search_args(a, c, a.seeds[0]).warm_start]
    if not warm:
        return 0.0
    path = a.out / "warm_start.json"
    t = time.time()
    if path.is_file():
        seeds = json.loads(path.read_text())
    else:
        seeds = shared.build().warm_start(tuple(a.warm.split(",")))
        path.write_text(json.dumps(seeds))
    for seed in a.seeds:
        for c in warm:
            files = RunFiles(search_args(a, c, seed).run_dir)
            files.dir.mkdir(parents=True, exist_ok=True)
            if files.warm_start(tuple(a.warm.split(","))) is None:
                files.write_warm_start(seeds)
    return time.time() - t


def plan(a: argparse.Namespace, shared: SharedSpec, space) -> None:
    """Time a few evaluations and project the cost of the full benchmark."""
    t = time.time()
    ev = shared.build()
    load = time.time() - t
    rng = np.random.default_rng(0)
    cfgs = [space.largest(), *(space.sample(rng) for _ in range(3))]
    secs = []
    for cfg in cfgs:
        t = time.time()
        ev.evaluate(cfg)
        secs.append(time.time() - t)
    per = float(np.mean(secs[1:]))  # random sub-networks, like the search's
    seeds, algs, pop = len(a.seeds), len(a.columns), a.population
    evals = seeds * (algs * a.evaluations - (algs - 1) * pop)
    loops = seeds * max(0, (a.evaluations - pop) // pop)
    inner = 10.0 * a.inner_generations / 1000  # ~10 s per 1000 generations on 2 cores (30-layer space)
    print(
        f"load + order + prepare: {load:.0f}s; full network {secs[0]:.1f}s; random sub-networks {per:.1f}s each"
    )
    print(
        f"{seeds} seeds x {algs} algorithms x {a.evaluations} evaluations (shared initial populations): "
        f"~{evals} real evaluations ~ {evals * per / 60:.0f} min + ~{loops} LINAS loops ~ {loops * inner / 60:.0f} min"
    )
    budget = a.minutes * 60 - load - loops * inner
    fits = int((budget / per + seeds * (algs - 1) * pop) / (seeds * algs))
    print(f"--evaluations that fit in {a.minutes} min at population {pop}: ~{fits}")


def plot(a: argparse.Namespace, traces: dict[str, list[list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = dict(zip(ALGORITHMS, plt.get_cmap("tab10").colors, strict=False))
    for alg in traces:
        T = np.array(traces[alg])
        x = np.arange(1, T.shape[1] + 1)
        ax.plot(x, T.mean(axis=0), color=colors[alg], label=f"{alg} (mean of {len(T)} seeds)")
        ax.fill_between(x, T.min(axis=0), T.max(axis=0), color=colors[alg], alpha=0.15)
    target = float(np.mean([t[-1] for t in traces["nsga2"]]))
    ax.axhline(target, color=colors["nsga2"], ls=":", lw=1, label="nsga2 final (mean)")
    ax.axvline(a.evaluations / 3, color="k", ls="--", lw=0.8, label="1/3 of the budget")
    ax.set_xlabel("real evaluations")
    ax.set_ylabel("hypervolume (gold_nll, params; fixed bounds)")
    ax.set_title(f"{a.task} validation, {a.limit} questions, population {a.population}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--limit", type=int, default=50, help="ARC-Easy validation questions (fixed subset)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--evaluations", type=int, default=48, help="budget of real evaluations per run")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--inner-generations", type=int, default=1000)
    ap.add_argument("--predictor", default="auto")
    ap.add_argument(
        "--proxy-windows",
        type=int,
        default=0,
        help="KL proxy windows recorded by every run (the screen needs them)",
    )
    ap.add_argument(
        "--screen", type=int, default=3, help="linas+screen: candidates screened per real evaluation"
    )
    ap.add_argument("--halving", type=int, default=3, help="+halving: candidates per real evaluation")
    ap.add_argument(
        "--warm-windows", type=int, default=8, help="+warm: calibration windows of the warm start"
    )
    ap.add_argument(
        "--warm",
        default="sensitivity,attention",
        help="+warm: the warm starts (sensitivity alone in a space that skips no attention, e.g. width)",
    )
    ap.add_argument(
        "--space",
        default="full",
        help="Search space (file or name); full: the space every column was measured in",
    )
    ap.add_argument("--columns", nargs="+", default=list(ALGORITHMS[:3]), choices=ALGORITHMS)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_search"))
    ap.add_argument("--png", type=Path, default=Path("docs/bench_search.png"))
    ap.add_argument("--plan", action="store_true", help="time a few evaluations and exit")
    ap.add_argument("--minutes", type=float, default=35, help="--plan: time available for the benchmark")
    a = ap.parse_args()

    first = search_args(a, "random", a.seeds[0])
    space = resolve_space(first)
    spec = SupernetSpec(
        a.model, space.to_dict(), first.settings(timing=False)
    )  # what every run's store key says
    shared = SharedSpec(spec)
    if a.plan:
        plan(a, shared, space)
        return

    a.out.mkdir(parents=True, exist_ok=True)
    columns = a.columns
    traces: dict[str, list[list[float]]] = {alg: [] for alg in columns}
    costs: dict[str, list[list[int]]] = {alg: [] for alg in columns}
    warm_seconds = prepare_warm_start(a, shared, columns)
    if warm_seconds:
        print(f"warm-start seeds: {warm_seconds:.0f}s (once, shared by the warm runs)", flush=True)
    runs = []
    for seed in a.seeds:
        for alg in columns:
            t = time.time()
            r = search(search_args(a, alg, seed), shared, space)
            trace = [hv for _, hv, _ in r.hypervolume]
            traces[alg].append(trace)
            costs[alg].append(r.questions)
            runs.append(
                dict(
                    algorithm=alg,
                    seed=seed,
                    evaluations=r.evaluations,
                    computed_now=r.computed,
                    seconds=round(time.time() - t, 1),
                    final_hv=trace[-1],
                    questions=r.questions[-1],
                    front=len(r.front),
                )
            )
            print(
                f"{alg:12s} seed {seed}: hv {trace[-1]:.4f}, front {len(r.front)}, "
                f"{r.computed} evaluated now, {time.time() - t:.0f}s",
                flush=True,
            )

    rows = []
    for i, seed in enumerate(a.seeds):
        target = traces["nsga2"][i][-1]
        need = {alg: evaluations_to_reach(traces[alg][i], target) for alg in columns}
        asked = {alg: cost_to_reach(traces[alg][i], costs[alg][i], target) for alg in columns}
        budget = costs["nsga2"][i][-1]  # NSGA-II's questions: every column's at equal cost
        rows.append(
            {
                "seed": seed,
                "nsga2_final_hv": target,
                **{f"{alg}_evals": need[alg] for alg in columns},
                **{f"{alg}_questions": asked[alg] for alg in columns},
                **{
                    f"{alg}_hv_at_nsga2_questions": hv_at_cost(traces[alg][i], costs[alg][i], budget)
                    for alg in columns
                },
            }
        )
    plot(a, traces, a.png)
    summary = {
        "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "runs": runs,
        "to_reach_nsga2_final": rows,
        "traces": traces,
        "questions": costs,
        "warm_start_seconds": warm_seconds,
    }
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))

    print(f"\nEvaluations needed to reach NSGA-II's final hypervolume ({a.evaluations} evaluations):\n")
    print("| seed | nsga2 final HV | " + " | ".join(columns) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
    for r in rows:
        fmt = [str(r[f"{alg}_evals"]) if r[f"{alg}_evals"] else "not reached" for alg in columns]
        print(f"| {r['seed']} | {r['nsga2_final_hv']:.4f} | " + " | ".join(fmt) + " |")
    print("\nQuestions (in full evaluations' worth) needed to reach it:\n")
    print("| seed | " + " | ".join(columns) + " |")
    print("| --- | " + " | ".join("---" for _ in columns) + " |")
    for r in rows:
        fmt = [
            f"{r[f'{alg}_questions'] / a.limit:.1f}" if r[f"{alg}_questions"] else "not reached"
            for alg in columns
        ]
        print(f"| {r['seed']} | " + " | ".join(fmt) + " |")
    finals = {alg: np.mean([t[-1] for t in traces[alg]]) for alg in columns}
    print("\nmean final hypervolume: " + ", ".join(f"{alg} {v:.4f}" for alg, v in finals.items()))
    at_cost = {alg: np.mean([r[f"{alg}_hv_at_nsga2_questions"] for r in rows]) for alg in columns}
    print(
        "mean hypervolume at NSGA-II's questions: "
        + ", ".join(f"{alg} {v:.4f}" for alg, v in at_cost.items())
    )
    print(f"wrote {a.png} and {a.out / 'summary.json'}")


if __name__ == "__main__":
    main()
