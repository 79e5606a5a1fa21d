"""Recovery without training: importance score x {none, bias compensation, least-squares repair}.

    python bench/bench_recovery.py --out runs/bench_recovery

(all defaults: --sizes 1.0,0.9,0.8,0.7,0.64 --limit 570 --piqa-limit 400 --scores rms,wanda,taylor
--methods none,bias,repair; a re-run skips every finished cell. Smoke test:
``--limit 10 --piqa-limit 10 --sizes 0.8 --sens-samples 8``.)

After training: ``--supernet DIR --label NAME`` evaluates the same cells on a super-network that is already
ordered (a ``llamanas finetune`` output) instead of ordering the base model, as rows ``NAME/method/size``
of the same table (so Δ against rms/none stays paired); ``repair`` then refits towards that super-network's
own full network. The table adds Δ against the untuned peer (the base model ordered by the same score,
same method), e.g. ``--supernet runs/recovery_tune --label tuned --methods none,repair --no-sensitivity``.

Sub-networks are the fixed yardstick of bench_instatune.py (``fixed_subnets`` on the width-only space
``instatune_space.yaml``: every layer kept, about 100/90/80/70/64% of the parameters); ``--sizes`` picks
them by their parameter fraction. The full network (1.0) is always included: it must score the same for
every method (checked by an assertion, and printed).

For each importance score the default model is loaded once and ordered (``order_model``); then
  none    the activated sub-network (``supernet.subnet``), compensation off;
  bias    the same with bias compensation (FLAP: ``SuperNet.compensate`` on the calibration text);
  repair  least-squares repair as ``llamanas extract --repair --compensate`` does it: the kept
          ``down_proj`` / ``o_proj`` columns and their biases refitted (``compensation.repair_weights``,
          default ridge) and the sub-network built in memory (``slicing.standalone``);
  repair-w (only with ``--methods``) the repair without a bias (``extract --repair``).
Then, on the rms-ordered model, the sensitivity allocation (``measure_sensitivity`` + ``allocate``) at the
same sizes (target = the yardstick sub-network's parameter fraction; all layers kept):
  sens       sensitivity measured and the allocated sub-network evaluated without compensation;
  sens+bias  both with bias compensation (as ``baselines --methods sensitivity --compensate``).
The calibration text is the one ordering uses (the Alpaca demo data when found; ``--calibration``).

Accuracy: ARC-Easy validation (all 570 questions; ``--limit`` cuts to a seeded subset) and PIQA validation
(a seeded subset of ``--piqa-limit`` = 400), lm-eval ``acc``. Per-question correctness is not in
``TaskResult``; it is recomputed from the evaluator's loglikelihoods (``evaluate.per_question``,
checked against ``acc``), so differences are paired.

Table columns:
  score / method / size  importance score, recovery method, requested size (fraction of parameters);
  params                 parameters of the sub-network (embeddings included) and their fraction;
  ARC-Easy, PIQA         accuracy ± standard error (lm-eval's: sample sd / sqrt(n));
  Δ vs rms/none          accuracy minus rms/none's at the same size, points, ± paired standard error
                         (same questions);
  step CPU s             process CPU seconds (time.process_time, all threads) of this method's own step:
                         0 for none; the compensation measurement for bias (once per score, shared by its
                         sizes); the least-squares refit at this size for repair; the sensitivity
                         measurement for sens (once, shared by its sizes). Ordering and evaluation are
                         not in it.
A second table lists every step (ordering per score, compensation, repair per size, sensitivity) with
CPU and wall seconds, and the evaluation seconds. Everything is kept in OUT/results.json, written after
each cell.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from llamanas.errors import LlamanasError
from llamanas.evaluation.evaluate import (
    loglikelihoods,
    model_max_length,
    per_question,
    prepare,
    results_from_loglikelihoods,
)
from llamanas.evaluation.questions import Questions
from llamanas.model.arch import Arch
from llamanas.model.load import load_config, load_model, resolve
from llamanas.supernet.compensation import DEFAULT_RIDGE, repair_weights
from llamanas.supernet.elastic import SuperNet, read_supernet_meta
from llamanas.supernet.importance import IMPORTANCES, calibration_batches, calibration_texts, order_model
from llamanas.supernet.sensitivity import Sensitivity, allocate, measure_sensitivity
from llamanas.supernet.slicing import standalone
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_instatune import WIDTH_ONLY_SPACE, fixed_subnets, paired  # noqa: E402

TASKS = ("arc_easy", "piqa")
METHODS = ("none", "bias", "repair", "repair-w")
SENS_METHODS = ("sens", "sens+bias")


@contextmanager
def timed(into: dict):
    """Process CPU seconds (all threads) and wall seconds of the block, written into ``into``."""
    c0, w0 = time.process_time(), time.perf_counter()
    yield into
    into["cpu_s"] = round(time.process_time() - c0, 2)
    into["wall_s"] = round(time.perf_counter() - w0, 2)


class Results:
    """OUT/results.json: settings (must match on a re-run), cells, steps (timings), sensitivities."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        old = json.loads(path.read_text()) if path.exists() else {}
        if old and old.get("settings") != settings:
            raise SystemExit(
                f"{path} was made with other settings:\n  {old.get('settings')}\nnow:\n  {settings}\n"
                "Use another --out."
            )
        self.settings = settings
        self.cells: dict[str, dict] = old.get("cells", {})
        self.steps: dict[str, dict] = old.get("steps", {})
        self.sensitivity: dict[str, dict] = old.get("sensitivity", {})
        self.sources: dict[str, str] = old.get("sources", {})  # --label -> its --supernet folder

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "settings": self.settings,
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
            "cells": self.cells,
            "steps": self.steps,
            "sensitivity": self.sensitivity,
            "sources": self.sources,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)


def key(score: str, method: str, size: float) -> str:
    return f"{score}/{method}/{size:.2f}"


def yardstick(space: SearchSpace, sizes: list[float]) -> dict[float, SubnetConfig]:
    """The bench_instatune sub-network whose parameter fraction is nearest each size (within 2 points)."""
    arch = space.arch
    full = SubnetConfig.full(arch).num_params(arch)
    configs = list(fixed_subnets(space).values())
    out = {}
    for s in sizes:
        cfg = min(configs, key=lambda c: abs(c.num_params(arch) / full - s))
        frac = cfg.num_params(arch) / full
        if abs(frac - s) > 0.02:
            have = ", ".join(f"{c.num_params(arch) / full:.2f}" for c in configs)
            raise SystemExit(f"No yardstick sub-network near {s}; there are: {have}.")
        out[s] = cfg
    return out


def evaluate_model(model, prepared: dict) -> dict:
    """Per task: acc, stderr and the per-question 0/1 vector."""
    out = {}
    for task, prep in prepared.items():
        lls = loglikelihoods(model, prep)
        r = results_from_loglikelihoods(prep, lls)[task]
        correct = per_question(prep, lls)[task]
        assert abs(correct.mean() - r.metrics["acc"]) < 1e-9, "per-question scores disagree with acc"
        out[task] = {
            "acc": r.metrics["acc"],
            "stderr": r.stderr["acc"],
            "correct": correct.astype(int).tolist(),
        }
    return out


class Run:
    def __init__(self, args, res: Results, space_file: str, sizes: list[float], cfgs: dict):
        self.args, self.res, self.space_file, self.sizes, self.cfgs = args, res, space_file, sizes, cfgs
        self.prepared: dict | None = None

    def load(self, score: str):
        """The model ordered by ``score`` as a SuperNet (as ``load_supernet`` does it, the ordering timed),
        or the ``--supernet`` as it is when ``score`` is its label; the tokenizer and the calibration
        batches."""
        a = self.args
        if a.supernet and score == a.label:
            print(f"\n== {score}: loading the super-network {a.supernet}", flush=True)
            model, tok = load_model(a.supernet, dtype=a.dtype)  # main checked that it is ordered
            ordered_by = a.peer
        else:
            print(f"\n== {score}: loading {a.model}", flush=True)
            model, tok = load_model(a.model, dtype=a.dtype)
            if read_supernet_meta(resolve(a.model)).get("ordered"):
                raise SystemExit(f"{a.model} is already importance-ordered; pass the unordered model.")
            step: dict = {}
            with timed(step):
                order_model(model, tok, a.calibration, importance=score)
            self.res.steps.setdefault(f"order/{score}", step)
            print(f"  ordered by {score}: {step['cpu_s']} CPU s, {step['wall_s']} s", flush=True)
            ordered_by = score
        supernet = SuperNet(model, SearchSpace.from_file(self.space_file, Arch.from_hf(model.config)))
        supernet.ordered_by = ordered_by
        if self.prepared is None:
            n = model_max_length(model)
            self.prepared = {
                "arc_easy": prepare(
                    tok,
                    ["arc_easy"],
                    questions=Questions(split=a.split, limit=a.limit, seed=a.seed),
                    max_length=n,
                ),
                "piqa": prepare(
                    tok,
                    ["piqa"],
                    questions=Questions(split="validation", limit=a.piqa_limit, seed=a.seed),
                    max_length=n,
                ),
            }
            print(
                f"  ARC-Easy {self.prepared['arc_easy'].n_docs}, PIQA {self.prepared['piqa'].n_docs} questions",
                flush=True,
            )
        batches = calibration_batches(tok, calibration_texts(a.calibration))
        return supernet, batches

    def compensation(self, supernet: SuperNet, batches, score: str):
        step: dict = {}
        with timed(step):
            comp = supernet.compensate(batches)
        supernet.set_compensation(None)
        self.res.steps.setdefault(f"compensation/{score}", step)  # the first measurement is kept
        self.res.save()
        print(f"  compensation measured: {step['cpu_s']} CPU s, {step['wall_s']} s", flush=True)
        return comp

    def record(self, k: str, cfg: SubnetConfig, supernet: SuperNet, evaluate) -> None:
        arch = supernet.arch
        row: dict = {"config": cfg.to_dict(), "params": cfg.num_params(arch)}
        row["frac"] = row["params"] / SubnetConfig.full(arch).num_params(arch)
        with timed(ev := {}):
            row.update(evaluate())
        row["eval"] = ev
        self.res.cells[k] = row
        self.res.save()
        check_full(self.res)
        print(
            f"  {k:24s} {row['frac']:.1%}  ARC {row['arc_easy']['acc']:.4f}  PIQA {row['piqa']['acc']:.4f}  "
            f"(eval {ev['cpu_s']} CPU s, {ev['wall_s']} s)",
            flush=True,
        )

    def score(self, score: str) -> None:
        a, res = self.args, self.res
        first = score == a.scores[0]  # --full-once: the full network only under the first score
        todo = [
            (m, s)
            for m in a.methods
            for s in self.sizes
            if key(score, m, s) not in res.cells and (s < 1.0 or first or not a.full_once)
        ]
        if not todo:
            print(f"\n== {score}: all cells done", flush=True)
            return
        supernet, batches = self.load(score)
        comp = None
        for method, size in todo:
            cfg = self.cfgs[size]
            if method != "none" and comp is None and method != "repair-w":
                comp = self.compensation(supernet, batches, score)
            if method in ("none", "bias"):
                supernet.set_compensation(comp if method == "bias" else None)

                def ev(cfg=cfg, supernet=supernet):
                    with torch.no_grad(), supernet.subnet(cfg):
                        return evaluate_model(supernet.model, self.prepared)

                self.record(key(score, method, size), cfg, supernet, ev)
            else:  # repair: least squares at full width, then an in-memory standalone model
                use = comp if method == "repair" else None
                supernet.set_compensation(use)
                supernet.reset()
                step: dict = {"cpu_s": 0.0, "wall_s": 0.0}  # the full network: nothing to refit
                if cfg != SubnetConfig.full(supernet.arch):
                    with timed(step):
                        overrides = repair_weights(supernet.model, cfg, batches, use, a.ridge)
                else:
                    overrides = {}
                res.steps[f"repair/{score}/{method}/{size:.2f}"] = step
                print(f"  repair {method} {size:.2f}: {step['cpu_s']} CPU s, {step['wall_s']} s", flush=True)
                new = standalone(supernet, cfg, overrides=overrides)

                def ev(new=new):
                    with torch.no_grad():
                        return evaluate_model(new, self.prepared)

                self.record(key(score, method, size), cfg, supernet, ev)
                del new, overrides
        supernet.set_compensation(None)
        del supernet
        gc.collect()

    def sensitivity(self) -> None:
        res = self.res
        todo = [
            (m, s) for m in self.args.sens_methods for s in self.sizes if key("rms", m, s) not in res.cells
        ]
        if not todo:
            return
        supernet, batches = self.load("rms")  # reloaded: the rms pass may have finished in an earlier run
        arch = supernet.arch
        full = SubnetConfig.full(arch).num_params(arch)
        comp = None
        sens_batches = batches[: max(1, -(-self.args.sens_samples // 8))]  # batches hold 8 windows each
        for method in self.args.sens_methods:
            sizes = [s for m, s in todo if m == method]
            if not sizes:
                continue
            if method == "sens+bias" and comp is None:
                comp = self.compensation(supernet, batches, "rms")
            supernet.set_compensation(comp if method == "sens+bias" else None)
            if method in res.sensitivity:
                sens = Sensitivity.from_dict(res.sensitivity[method])
            else:
                step: dict = {}
                with timed(step):
                    sens = measure_sensitivity(supernet, sens_batches)
                res.steps[f"sensitivity/{method}"] = step
                res.sensitivity[method] = sens.to_dict()
                res.save()
                print(f"  sensitivity ({method}): {step['cpu_s']} CPU s, {step['wall_s']} s", flush=True)
            for size in sizes:
                target = self.cfgs[size].num_params(arch) / full  # matched to the yardstick's size
                try:
                    cfg = supernet.space.validate(allocate(arch, sens, min(1.0, target + 1e-9)))
                except LlamanasError as e:
                    print(f"  {key('rms', method, size)}: {e}", flush=True)
                    continue

                def ev(cfg=cfg, supernet=supernet):
                    with torch.no_grad(), supernet.subnet(cfg):
                        return evaluate_model(supernet.model, self.prepared)

                self.record(key("rms", method, size), cfg, supernet, ev)
        supernet.set_compensation(None)
        del supernet
        gc.collect()


def check_full(res: Results) -> list[str]:
    """Full network unchanged: per score, every method's full-network answers are identical (asserted).
    Returns the lines that say so; across scores (orderings are permutations) it is reported, not asserted:
    a float rounding may flip a near tie."""
    lines = []
    full_cells = {k: c for k, c in res.cells.items() if k.endswith("/1.00")}
    by_score: dict[str, dict] = {}
    for k, c in full_cells.items():
        by_score.setdefault(k.split("/")[0], {})[k.split("/")[1]] = c
    for score, cells in by_score.items():
        ref_m, ref = next(iter(cells.items()))
        for m, c in cells.items():
            for t in TASKS:
                assert c[t]["correct"] == ref[t]["correct"], (
                    f"full network changed: {score}/{m} {t} acc {c[t]['acc']:.4f} vs {score}/{ref_m} {ref[t]['acc']:.4f}"
                )
        accs = ", ".join(f"{t} {ref[t]['acc']:.4f}" for t in TASKS)
        lines.append(f"{score}: {accs} for every method ({', '.join(cells)}): identical answers")
    scores = [s for s in by_score if s in IMPORTANCES]  # orderings of one base model; labels are others
    for s in scores[1:]:
        a, b = next(iter(by_score[scores[0]].values())), next(iter(by_score[s].values()))
        same = all(a[t]["correct"] == b[t]["correct"] for t in TASKS)
        lines.append(
            f"{scores[0]} vs {s}: {'identical answers' if same else 'answers differ (ordering rounding)'}"
        )
    return lines


def fmt_acc(c: dict, t: str) -> str:
    return f"{c[t]['acc']:.3f} ± {c[t]['stderr']:.3f}"


def step_cpu(res: Results, score: str, method: str, size: float) -> str:
    k = {
        "none": None,
        "bias": f"compensation/{score}",
        "repair": f"repair/{score}/repair/{size:.2f}",
        "repair-w": f"repair/{score}/repair-w/{size:.2f}",
        "sens": "sensitivity/sens",
        "sens+bias": "sensitivity/sens+bias",
    }[method]
    if k is None:
        return "0"
    return f"{res.steps[k]['cpu_s']:.1f}" if k in res.steps else "?"


def peer_table(res: Results, label: str, peer: str, methods: list[str], sizes: list[float]) -> None:
    """Δ of the ``--supernet`` rows against the base model ordered by the same score (same method, size)."""
    print(f"\nΔ {label} minus {peer} (same method and size), points ± paired stderr\n")
    print("| method | size | ARC-Easy | Δ ARC | PIQA | Δ PIQA |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        for size in sizes:
            c, p = res.cells.get(key(label, method, size)), res.cells.get(key(peer, method, size))
            if p is None and size == 1.0:
                p = next(
                    (v for k, v in res.cells.items() if k.startswith(f"{peer}/") and k.endswith("/1.00")),
                    None,
                )
            if c is None or p is None:
                continue
            deltas = ["{:+.1f} ± {:.1f}".format(*paired(p[t]["correct"], c[t]["correct"])) for t in TASKS]
            print(
                f"| {method} | {size:.2f} | {fmt_acc(c, 'arc_easy')} | {deltas[0]} | {fmt_acc(c, 'piqa')} | "
                f"{deltas[1]} |"
            )


def settings_split(res: Results) -> str:
    """The ARC-Easy split of the results file (files written before --split existed: validation)."""
    return res.settings.get("split", "validation")


def table(res: Results, scores: list[str], methods: list[str], sizes: list[float], sens: bool) -> None:
    rows = [(s, m) for s in scores for m in methods]
    if sens:
        rows += [("rms", m) for m in SENS_METHODS if any(k.startswith(f"rms/{m}/") for k in res.cells)]
    n = {t: len(next(iter(res.cells.values()))[t]["correct"]) for t in TASKS} if res.cells else {}
    print(
        f"\nARC-Easy {settings_split(res)} ({n.get('arc_easy')} questions), PIQA validation ({n.get('piqa')} "
        "questions): "
        "acc ± stderr; Δ = minus rms/none at the same size, points ± paired stderr\n"
    )
    print("| score | method | size | params | ARC-Easy | Δ ARC | PIQA | Δ PIQA | step CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for score, method in rows:
        for size in sizes:
            c = res.cells.get(key(score, method, size))
            if c is None:
                continue
            base = res.cells.get(key("rms", "none", size))
            deltas = []
            for t in TASKS:
                if base is None or (score, method) == ("rms", "none"):
                    deltas.append("—")
                else:
                    d, se = paired(base[t]["correct"], c[t]["correct"])
                    deltas.append(f"{d:+.1f} ± {se:.1f}")
            print(
                f"| {score} | {method} | {size:.2f} | {c['params'] / 1e6:.1f}M ({c['frac']:.1%}) | "
                f"{fmt_acc(c, 'arc_easy')} | {deltas[0]} | {fmt_acc(c, 'piqa')} | {deltas[1]} | "
                f"{step_cpu(res, score, method, size)} |"
            )
    print("\n| step | CPU s | wall s |")
    print("|---|---|---|")
    for k, s in res.steps.items():
        print(f"| {k} | {s['cpu_s']:.1f} | {s['wall_s']:.1f} |")
    ev = [c["eval"] for c in res.cells.values()]
    if ev:
        print(
            f"| evaluation, mean of {len(ev)} cells (ARC + PIQA) | {np.mean([e['cpu_s'] for e in ev]):.1f} | "
            f"{np.mean([e['wall_s'] for e in ev]):.1f} |"
        )
    print("\nFull network unchanged:")
    for line in check_full(res):
        print(f"  {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--sizes", default="1.0,0.9,0.8,0.7,0.64", help="Yardstick sizes (1.0 is always added).")
    ap.add_argument("--scores", default=",".join(IMPORTANCES), help="Importance scores.")
    ap.add_argument("--methods", default="none,bias,repair", help=f"Of {', '.join(METHODS)}.")
    ap.add_argument("--no-sensitivity", action="store_true", help="Skip the sensitivity allocation.")
    ap.add_argument("--sens-methods", default=",".join(SENS_METHODS), help="Of sens, sens+bias.")
    ap.add_argument(
        "--full-once",
        action="store_true",
        help="Evaluate the full network (1.0) under the first score only: an ordering is a permutation, so "
        "the full network is the same under every score (tested), and each evaluation costs minutes.",
    )
    ap.add_argument(
        "--split",
        default="validation",
        choices=("validation", "test"),
        help="ARC-Easy split: validation (where recipes were chosen) or test (held out: 2,376 questions).",
    )
    ap.add_argument(
        "--limit", type=int, default=570, help="ARC-Easy questions (570 = the whole validation split)."
    )
    ap.add_argument("--piqa-limit", type=int, default=400, help="PIQA questions (seeded subset).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration", default=None, help="Calibration text (default: as ordering's).")
    ap.add_argument("--ridge", type=float, default=DEFAULT_RIDGE, help="Ridge of the least-squares repair.")
    ap.add_argument(
        "--sens-samples",
        type=int,
        default=64,
        help="Calibration windows of the sensitivity measurement (64 = all, as baselines uses).",
    )
    ap.add_argument("--space", default=str(WIDTH_ONLY_SPACE), help="Search space (the yardstick's).")
    ap.add_argument(
        "--supernet",
        default=None,
        help="An ordered super-network folder (e.g. a finetune output) evaluated instead of --scores, as rows "
        "labelled --label.",
    )
    ap.add_argument("--label", default="tuned", help="Row label of --supernet (not an importance name).")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_recovery"))
    args = ap.parse_args()
    args.scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.sens_methods = [m.strip() for m in args.sens_methods.split(",") if m.strip()]
    if set(args.sens_methods) - set(SENS_METHODS):
        raise SystemExit(f"--sens-methods: allowed {', '.join(SENS_METHODS)}; got {args.sens_methods}.")
    for s in args.scores:
        if s not in IMPORTANCES:
            raise SystemExit(f"Unknown score {s!r}; allowed: {', '.join(IMPORTANCES)}.")
    for m in args.methods:
        if m not in METHODS:
            raise SystemExit(f"Unknown method {m!r}; allowed: {', '.join(METHODS)}.")
    sizes = sorted({1.0, *(float(s) for s in args.sizes.split(","))}, reverse=True)
    if args.supernet:
        if args.label in IMPORTANCES or "/" in args.label:
            raise SystemExit(f"--label {args.label!r} must not be an importance name or hold '/'.")
        meta = read_supernet_meta(resolve(args.supernet))
        if not meta.get("ordered"):
            raise SystemExit(f"--supernet {args.supernet} is not an ordered super-network folder.")
        args.peer = meta.get("ordered_by", "rms")  # the score it was ordered by: its untuned peer's rows
        args.scores = [args.label]

    arch = Arch.from_hf(load_config(args.model))
    cfgs = yardstick(SearchSpace.from_file(args.space, arch), sizes)
    settings = {
        "model": args.model,
        "dtype": args.dtype,
        "space": str(args.space),
        "limit": args.limit,
        **({"split": args.split} if args.split != "validation" else {}),
        "piqa_limit": args.piqa_limit,
        "seed": args.seed,
        "calibration": args.calibration,
        "ridge": args.ridge,
        "sens_samples": args.sens_samples,
    }
    res = Results(args.out / "results.json", settings)
    if args.supernet:
        old = res.sources.setdefault(args.label, str(args.supernet))
        if old != str(args.supernet):
            raise SystemExit(f"--label {args.label!r} already holds rows of {old}; use another label.")
    check_full(res)
    t0 = time.time()
    run = Run(args, res, args.space, sizes, cfgs)
    for score in args.scores:
        run.score(score)
    if not args.no_sensitivity:
        run.sensitivity()
    res.save()
    shown = [*IMPORTANCES, *args.scores] if args.supernet else args.scores
    table(
        res,
        [s for s in dict.fromkeys(shown) if any(k.startswith(f"{s}/") for k in res.cells)],
        args.methods,
        sizes,
        not args.no_sensitivity,
    )
    if args.supernet:
        peer_table(res, args.label, args.peer, args.methods, sizes)
    print(f"\nwrote {res.path} ({time.time() - t0:.0f} s this run, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
