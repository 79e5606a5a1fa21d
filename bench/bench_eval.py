"""Benchmark and parity check: llamanas.evaluation.evaluate vs lm-evaluation-harness 0.4 on the same model and docs.

Runs, in one process on the same machine: our evaluator, then lm-eval's ``hf`` model
(``pretrained=DIR,dtype=float32``) offline, on a task YAML that ``include:``s the built-in one and reads
our offline copy of the split (``llamanas.evaluation.tasks.write_lm_eval_configs``). Reports wall times (model
loading excluded on both sides), acc / acc_norm, the speed ratio, and the largest per-request
loglikelihood difference. Example::

    python bench/bench_eval.py --model /tmp/smol --task arc_easy --split validation \\
        --lm-eval-batch-sizes 16 --bs1-limit 50 --parity-task hellaswag --parity-limit 100 \\
        --json runs/bench_eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


@dataclass
class Run:
    """One evaluator run on one task."""

    evaluator: str  # "llamanas" | "lm-eval"
    task: str
    split: str
    n: int
    batch: str  # batch_tokens for ours, batch_size for lm-eval
    wall_s: float  # evaluation only (tokenization included, model loading excluded)
    acc: float
    acc_norm: float | None
    acc_stderr: float
    lls: list[float] = field(default_factory=list, repr=False)  # per request, doc order
    wall_runs_s: list[float] = field(default_factory=list)  # ours: before and after lm-eval


def run_ours(
    model, tokenizer, task: str, split: str, limit: int | None, batch_tokens: int
) -> tuple[Run, np.ndarray]:
    from llamanas.evaluation.evaluate import (
        loglikelihoods,
        model_max_length,
        prepare,
        results_from_loglikelihoods,
    )
    from llamanas.evaluation.questions import Questions

    t0 = time.perf_counter()
    prepared = prepare(
        tokenizer,
        task,
        questions=Questions(split=split, limit=limit),
        batch_tokens=batch_tokens,
        max_length=model_max_length(model, tokenizer),
    )
    lls = loglikelihoods(model, prepared, progress=True)
    r = results_from_loglikelihoods(prepared, lls)[task]
    wall = time.perf_counter() - t0
    run = Run("llamanas", task, split, r.n, f"{batch_tokens} tokens", wall, r.metrics["acc"],
              r.metrics.get("acc_norm"), r.stderr["acc"], [float(x) for x in lls])  # fmt: skip
    return run, prepared.tasks[0].indices


def run_lm_eval(lm, task: str, split: str, indices: np.ndarray | None, batch_size: int, cfg_dir: Path) -> Run:
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm.batch_size_per_gpu = batch_size  # HFLM.batch_size reads this
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        num_fewshot=0,
        task_manager=TaskManager(include_path=str(cfg_dir), include_defaults=False),
        samples={task: [int(i) for i in indices]} if indices is not None else None,
        log_samples=True,
    )
    wall = time.perf_counter() - t0
    res = out["results"][task]
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    lls = [float(resp[0]) for s in samples for resp in s["filtered_resps"]]
    return Run("lm-eval", task, split, len(samples), f"{batch_size} seqs", wall, res["acc,none"],
               res.get("acc_norm,none"), res["acc_stderr,none"], lls)  # fmt: skip


def _fmt(x: float | None, nd: int = 4) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def _ours_for(runs: list[Run], r: Run) -> Run:
    """Our run on the same documents as ``r``."""
    return next(
        o for o in runs if o.evaluator == "llamanas" and (o.task, o.split, o.n) == (r.task, r.split, r.n)
    )


def table(runs: list[Run]) -> str:
    lines = [
        "| evaluator | task | split | n | batch | wall (s) | acc | acc_norm | acc stderr | speed-up vs this |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ours = _ours_for(runs, r)
        speed = "" if r is ours else f"{r.wall_s / ours.wall_s:.1f}x"
        lines.append(
            f"| {r.evaluator} | {r.task} | {r.split} | {r.n} | {r.batch} | {r.wall_s:.1f} | {_fmt(r.acc)} | "
            f"{_fmt(r.acc_norm)} | {_fmt(r.acc_stderr)} | {speed} |"
        )
    return "\n".join(lines)


def parity(runs: list[Run]) -> list[dict]:
    out = []
    for r in runs:
        if r.evaluator != "lm-eval":
            continue
        ours = _ours_for(runs, r)
        diff = (
            float(np.max(np.abs(np.asarray(ours.lls) - np.asarray(r.lls))))
            if len(ours.lls) == len(r.lls)
            else None
        )
        out.append({
            "task": r.task, "n": r.n, "lm_eval_batch": r.batch, "same_acc": ours.acc == r.acc,
            "same_acc_norm": ours.acc_norm == r.acc_norm, "max_abs_loglik_diff": diff,
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/tmp/smol", help="HF model folder (default: %(default)s)")
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=None, help="seeded random subset of the main task")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="ours: tokens per forward pass")
    ap.add_argument("--lm-eval-batch-sizes", default="16", help="comma-separated, on the main task")
    ap.add_argument(
        "--bs1-limit",
        type=int,
        default=None,
        help="also time lm-eval at batch size 1 on a seeded subset of this many docs of the main task",
    )
    ap.add_argument("--parity-task", default=None, help="a second task checked for parity (e.g. hellaswag)")
    ap.add_argument("--parity-split", default=None)
    ap.add_argument("--parity-limit", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamanas.evaluation.tasks import get_task, write_lm_eval_configs

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    sizes = [int(b) for b in args.lm_eval_batch_sizes.split(",") if b.strip()]
    jobs = [(args.task, args.split, args.limit, sizes)]
    if args.bs1_limit:
        jobs.append((args.task, args.split, args.bs1_limit, [1]))
    if args.parity_task:
        jobs.append((args.parity_task, args.parity_split, args.parity_limit, sizes[:1]))

    runs: list[Run] = []
    t0 = time.perf_counter()
    lm = HFLM(pretrained=args.model, dtype="float32", batch_size=sizes[0], device="cpu")
    lm_load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        for task, split, limit, batch_sizes in jobs:
            split = split or get_task(task).default_split
            ours, indices = run_ours(model, tokenizer, task, split, limit, args.batch_tokens)
            print(f"llamanas {task}/{split}: {ours.wall_s:.1f}s acc={ours.acc:.4f}", flush=True)
            cfg_dir = write_lm_eval_configs([task], split, Path(tmp) / task)
            lm_runs = []
            for bs in batch_sizes:
                r = run_lm_eval(lm, task, split, indices if limit else None, bs, cfg_dir)
                lm_runs.append(r)
                print(f"lm-eval bs={bs} {task}/{split}: {r.wall_s:.1f}s acc={r.acc:.4f}", flush=True)
            # The machine is shared: time ours again after lm-eval and report the mean of both runs.
            again, _ = run_ours(model, tokenizer, task, split, limit, args.batch_tokens)
            print(f"llamanas again {task}/{split}: {again.wall_s:.1f}s", flush=True)
            assert again.lls == ours.lls, "our evaluator is not deterministic"
            ours.wall_runs_s = [ours.wall_s, again.wall_s]
            ours.wall_s = float(np.mean(ours.wall_runs_s))
            runs += [ours, *lm_runs]

    import importlib.metadata

    import transformers

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{torch.get_num_threads()}, no GPU",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lm_eval": importlib.metadata.version("lm_eval"),
        },  # fmt: skip
        "model": args.model,
        "lm_eval_model_load_s": lm_load_s,
        "runs": [{k: v for k, v in asdict(r).items() if k != "lls"} for r in runs],
        "parity": parity(runs),
    }
    print()
    print(table(runs))
    print()
    for p in report["parity"]:
        print(
            f"parity {p['task']} n={p['n']} (lm-eval {p['lm_eval_batch']}): same acc: {p['same_acc']}, "
            f"same acc_norm: {p['same_acc_norm']}, max |loglik diff| = {p['max_abs_loglik_diff']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(p["same_acc"] for p in report["parity"]) else 1


if __name__ == "__main__":
    sys.exit(main())
