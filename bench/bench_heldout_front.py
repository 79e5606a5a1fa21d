"""Warm-started LINAS fronts against every pruning baseline at matched size, claimed on held-out questions.

    OMP_NUM_THREADS=2 python bench/bench_heldout_front.py --out runs/bench_heldout_front

1. Two LINAS searches, accuracy on the first ``--search-limit`` (100) ARC-Easy validation questions in the
   order seeded by ``--seed`` and parameters, ``--evaluations`` (48), population 8, warm-started:
     width   the width-only space of bench/instatune_space.yaml (every layer, MLP 50/75/100%, 2-3 KV
             groups), ``--warm-start sensitivity``
     blocks  the full space (layer drops, attention and MLP block skips), ``--warm-start
             sensitivity,attention``
     hidden  the width-only space with a hidden-size gene (bench/hidden_space.yaml: 448, 512 or 576
             residual channels), ``--warm-start sensitivity`` (not run by default)
   Each resumes from its store when re-run.
2. Per size, the member is chosen on validation as ``llamanas compress`` chooses: the 4 most accurate
   evaluations no larger than the size plus the warm-start seeds that fit, re-scored on the next
   ``--confirm-limit`` (400) ARC-Easy validation questions, and the largest within 2 paired standard errors
   of the most accurate (``pipeline.pick.choose``).
3. The baselines of ``llamanas baselines`` (depth truncation, ShortGPT, uniform width, sensitivity
   allocation; 16 calibration windows), each the largest config not above the size.
4. Everything scored per question on ``--test-limit`` (1,000) seeded ARC-Easy *test* questions and
   ``--piqa-limit`` (400) seeded PIQA validation questions, neither of which any step above selected on.
   Differences are paired (same questions), in points, against each baseline; the headline is against the
   baseline best *on these questions* (which favours the baselines).

Each front's hypervolume is printed on its selection questions, with bounds every space shares (error and
fraction of the parameters, both in [0, 1]), over all its evaluations and over the sizes every front
reaches. A size no member of a front reaches (below 64% for ``width``) has no pick from it.

Scores are cached in ``OUT/scores.json``: a re-run only scores what is missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llamanas.deploy.gguf import export_subnet_gguf
from llamanas.evaluation.evaluate import model_max_length, prepare
from llamanas.evaluation.questions import Questions
from llamanas.evidence.args import METHODS
from llamanas.evidence.baselines import baseline_configs
from llamanas.pipeline.pick import PICK_TOLERANCE, Scored, choose
from llamanas.pipeline.timing import time_abab
from llamanas.search.args import SearchArgs
from llamanas.search.files import RunFiles
from llamanas.search.objectives import hypervolume, pareto_mask
from llamanas.search.run import load_run, search
from llamanas.supernet.blocks import block_influence
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.importance import calibration_batches, calibration_texts
from llamanas.supernet.sensitivity import measure_sensitivity
from llamanas.supernet.subnet import SubnetConfig

sys.path.insert(0, str(Path(__file__).parent))
from bench_instatune import WIDTH_ONLY_SPACE, paired  # noqa: E402
from bench_recovery import evaluate_model  # noqa: E402

# Front name -> (space file or None for the default space, warm start).
FRONTS = {
    "width": (str(WIDTH_ONLY_SPACE), ("sensitivity",)),
    "blocks": ("full", ("sensitivity", "attention")),
    "hidden": (str(Path(__file__).with_name("hidden_space.yaml")), ("sensitivity",)),
}
CONFIRM = 4  # compress's default --confirm


class Scores:
    """Per-question scores by label, saved after each one."""

    def __init__(self, path: Path):
        self.path = path
        self.d = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, label, supernet, cfg: SubnetConfig, prepared: dict) -> dict:
        if label not in self.d:
            t = time.time()
            with torch.no_grad(), supernet.subnet(cfg):
                self.d[label] = evaluate_model(supernet.model, prepared)
            self.d[label]["params"] = cfg.num_params(supernet.arch)
            self.d[label]["config"] = cfg.to_dict()
            self.path.write_text(json.dumps(self.d))
            accs = ", ".join(
                f"{t} {v['acc']:.3f}" for t, v in self.d[label].items() if isinstance(v, dict) and "acc" in v
            )
            print(f"  {label}: {accs} ({time.time() - t:.0f} s)", flush=True)
        return self.d[label]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fronts", default="width,blocks", help=f"Comma-separated, of {', '.join(FRONTS)}.")
    ap.add_argument("--sizes", default="0.9,0.8,0.7")
    ap.add_argument("--evaluations", type=int, default=48)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--search-limit", type=int, default=100)
    ap.add_argument("--confirm-limit", type=int, default=400)
    ap.add_argument("--test-limit", type=int, default=1000)
    ap.add_argument("--piqa-limit", type=int, default=400)
    ap.add_argument("--warm-windows", default="width=16,blocks=8", help="Warm-start windows per front.")
    ap.add_argument("--calibration-samples", type=int, default=16, help="Baselines' calibration windows.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--time-rounds",
        type=int,
        default=0,
        help="Time the hidden front's pick at the smallest size against uniform width of the same size, F16 "
        "GGUF in llama.cpp, alternately, this many rounds (0: no timing).",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench_heldout_front"))
    a = ap.parse_args()
    fronts = [f for f in a.fronts.split(",") if f]
    if set(fronts) - set(FRONTS):
        ap.error(f"unknown front(s) {sorted(set(fronts) - set(FRONTS))}; choose from {', '.join(FRONTS)}")
    sizes = [float(s) for s in a.sizes.split(",")]
    windows = {k: int(v) for k, v in (kv.split("=") for kv in a.warm_windows.split(","))}
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # 1. searches
    runs, search_s = {}, {}
    for name in fronts:
        space, warm = FRONTS[name]
        t = time.time()
        res = search(
            SearchArgs(
                tasks=("arc_easy",),
                objectives=("accuracy", "params"),
                algorithm="linas",
                evaluations=a.evaluations,
                population=a.population,
                limit=a.search_limit,
                data_seed=a.seed,
                seed=a.seed,
                space=space,
                warm_start=warm,
                warm_start_windows=windows.get(name, 16),
                out=str(a.out / f"search-{name}"),
            )
        )
        runs[name], search_s[name] = res.run_dir, time.time() - t
        print(
            f"search {name}: {res.evaluations} evaluations, {len(res.front)} on the front, {search_s[name]:.0f} s"
        )

    # A hidden gene slices the residual stream, so the scoring model orders it as the search's did (the
    # permutation leaves every other sub-network's function unchanged).
    supernet, tok = load_supernet("default", dtype="float32", device="cpu", residual="hidden" in fronts)
    arch, full = supernet.arch, SubnetConfig.full(supernet.arch).num_params(supernet.arch)
    n = model_max_length(supernet.model, tok)
    scores = Scores(a.out / "scores.json")

    # 2. baselines' configs (as llamanas baselines makes them)
    cfg_file = a.out / "baseline_configs.json"
    if not cfg_file.is_file():
        t = time.time()
        batches = calibration_batches(tok, calibration_texts(None), a.calibration_samples, 128)
        supernet.reset()
        bi = block_influence(supernet.model, batches)
        sens = measure_sensitivity(supernet, batches)
        specs = baseline_configs(arch, sizes, bi, (*METHODS, "sensitivity"), sensitivity=sens)
        cfg_file.write_text(
            json.dumps(
                [
                    {"method": s.method, "target": s.target, "config": s.config and s.config.to_dict()}
                    for s in specs
                ]
            )
        )
        print(f"baseline configs: {time.time() - t:.0f} s", flush=True)
    specs = json.loads(cfg_file.read_text())

    # Hypervolume of each run's evaluations on its selection questions, on bounds every space shares
    # (error 1 - accuracy in [0, 1], parameters / full in [0, 1], reference point (1, 1)); ``>= floor`` is
    # the part of it where every front can go (parameters clipped up to the smallest a front reached).
    pts = {}
    for name in fronts:
        ev = load_run(runs[name]).evaluated
        pts[name] = np.array([[1 - e.values["accuracy"], e.values["params"] / full] for e in ev])
    floor = max(p[:, 1].min() for p in pts.values())
    hv = {}
    for name, p in pts.items():
        clipped = np.column_stack([p[:, 0], np.maximum(p[:, 1], floor)])
        hv[name] = {
            "all": hypervolume(p[pareto_mask(p)]),
            "above_floor": hypervolume(clipped[pareto_mask(clipped)]),
            "smallest": float(p[:, 1].min()),
            "front": int(pareto_mask(p).sum()),
        }
        print(
            f"hypervolume {name}: {hv[name]['all']:.4f} (>= {floor:.1%} of the parameters: "
            f"{hv[name]['above_floor']:.4f}); smallest {hv[name]['smallest']:.1%}, {hv[name]['front']} on the front"
        )

    # 3. the pick, on validation questions after the search's
    confirm = prepare(
        tok,
        ["arc_easy"],
        Questions(split="validation", limit=a.confirm_limit, seed=a.seed, offset=a.search_limit),
        max_length=n,
    )
    picks: dict[tuple[str, float], dict] = {}
    for name in fronts:
        view = load_run(runs[name])
        seeds = RunFiles(runs[name]).warm_start(FRONTS[name][1]) or {}
        seeded = [SubnetConfig.from_dict(d) for v in seeds.values() for d in v]
        for size in sizes:
            fits = [e for e in view.evaluated if e.values["params"] <= size * full]
            if not fits:
                print(f"pick {name} @ {size:.0%}: no evaluated member is that small")
                continue
            top = sorted(fits, key=lambda e: (-e.values["accuracy"], e.seq))[:CONFIRM]
            found = top + [e for e in fits if e.config in seeded and e not in top]
            scored = {}
            for e in found:
                s = scores.get(f"confirm/{name}/#{e.seq}", supernet, e.config, {"arc_easy": confirm})
                scored[e.seq] = Scored(s["params"], {"arc_easy": np.asarray(s["arc_easy"]["correct"])})
            k = choose(scored, PICK_TOLERANCE)
            e = next(e for e in found if e.seq == k)
            picks[name, size] = {
                "seq": k,
                "config": e.config,
                "seed": e.config in seeded,
                "select": e.values["accuracy"],
                "confirm": scored[k].accuracy,
                "candidates": len(found),
            }
            print(
                f"pick {name} @ {size:.0%}: #{k} ({scored[k].params / full:.1%}), seed={e.config in seeded}"
            )

    # 4. held-out scores
    held = {
        "arc_easy": prepare(
            tok, ["arc_easy"], Questions(split="test", limit=a.test_limit, seed=a.seed), max_length=n
        ),
        "piqa": prepare(
            tok, ["piqa"], Questions(split="validation", limit=a.piqa_limit, seed=a.seed), max_length=n
        ),
    }
    rows: dict[float, list[tuple[str, dict]]] = {s: [] for s in sizes}
    base = scores.get("test/base", supernet, SubnetConfig.full(arch), held)
    for s in specs:
        if s["method"] != "base" and s["config"] is not None:
            r = scores.get(
                f"test/{s['method']}/{s['target']}", supernet, SubnetConfig.from_dict(s["config"]), held
            )
            rows[s["target"]].append((s["method"], r))
    for (name, size), p in picks.items():
        r = scores.get(f"test/front-{name}/{size}/#{p['seq']}", supernet, p["config"], held)
        rows[size].insert(0, (f"front ({name}) #{p['seq']}" + (" [seed]" if p["seed"] else ""), r))

    tasks = list(held)
    print(f"\nARC-Easy test ({a.test_limit} seeded), PIQA validation ({a.piqa_limit} seeded): acc ± stderr;")
    print(
        "Δ = front minus the baseline best on these questions (mean of the two tasks' accuracies), points ± paired SE\n"
    )
    print("| size | row | params | ARC-Easy test | PIQA val | Δ ARC vs best | Δ PIQA vs best |")
    print("|---|---|---|---|---|---|---|")

    def acc(r: dict, t: str) -> str:
        return f"{r[t]['acc']:.3f} ± {r[t]['stderr']:.3f}"

    print(
        f"| 100% | base | {base['params'] / 1e6:.1f}M | {acc(base, 'arc_easy')} | {acc(base, 'piqa')} | | |"
    )
    table = {}
    for size in sizes:
        bl = [(m, r) for m, r in rows[size] if not m.startswith("front")]
        best_m, best = max(bl, key=lambda mr: np.mean([mr[1][t]["acc"] for t in tasks]))
        for m, r in rows[size]:
            d = (
                {t: paired(best[t]["correct"], r[t]["correct"]) for t in tasks}
                if m.startswith("front")
                else {}
            )
            table[f"{size}/{m}"] = {
                "params": r["params"],
                **{t: r[t]["acc"] for t in tasks},
                "vs": best_m,
                "delta": d,
            }
            cells = [f"{d[t][0]:+.1f} ± {d[t][1]:.1f} ({best_m})" if d else "" for t in tasks]
            print(f"| {size:.0%} | {m} | {r['params'] / 1e6:.1f}M ({r['params'] / full:.1%}) | {acc(r, 'arc_easy')} | "
                  f"{acc(r, 'piqa')} | {cells[0]} | {cells[1]} |")  # fmt: skip
    timing = None
    size = min(sizes)
    if a.time_rounds and ("hidden", size) in picks:
        pick = picks["hidden", size]["config"]
        width = next(
            SubnetConfig.from_dict(s["config"])
            for s in specs
            if (s["method"], s["target"]) == ("width", size)
        )
        with tempfile.TemporaryDirectory() as tmp:
            paths = {k: Path(tmp) / f"{k}.gguf" for k in ("width", "hidden")}
            for k, cfg in (("width", width), ("hidden", pick)):
                export_subnet_gguf(supernet, cfg, "default", paths[k], type="f16")
            timing = time_abab(paths["width"], paths["hidden"], a.time_rounds, print)
        d, p = timing["decode_tokens_per_s"], timing["prefill_tokens_per_s"]
        print(
            f"llama.cpp F16 at {size:.0%}: hidden pick ({pick.width(arch)} channels, {pick.num_params(arch) / full:.1%}) "
            f"vs uniform width ({width.num_params(arch) / full:.1%}): decode {d['compressed']:.1f} vs {d['base']:.1f} "
            f"tok/s ({d['ratio']:.2f}x, rounds {d['ratio_range'][0]:.2f}-{d['ratio_range'][1]:.2f}); prefill "
            f"{p['ratio']:.2f}x (rounds {p['ratio_range'][0]:.2f}-{p['ratio_range'][1]:.2f}); load {timing['load_average']}"
        )
    out = {
        "args": {k: str(v) for k, v in vars(a).items()},
        "timing": timing,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "search_s": search_s,
        "hypervolume": {"floor": floor, **hv},
        "wall_s": round(time.time() - t0, 1),
        "picks": {f"{n}/{s}": {**p, "config": p["config"].to_dict()} for (n, s), p in picks.items()},
        "table": table,
    }
    (a.out / "results.json").write_text(json.dumps(out, indent=2))
    print(f"\nwrote {a.out / 'results.json'} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
