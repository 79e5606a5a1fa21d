"""Where `llamanas eval`'s time goes, in one fresh process: start-up (imports), model loading,
tokenization (``prepare``) and scoring, for each ``--dtype``; and the same for lm-eval's ``simple_evaluate``
when ``--lm-eval`` is given (start-up, then loading and evaluation, which lm-eval does not separate).

    python bench/bench_eval_phases.py --dtype float32            # ours, one phase table
    python bench/bench_eval_phases.py --dtype bfloat16
    python bench/bench_eval_phases.py --lm-eval --batch-size 8   # lm-eval in the same way

Each call prints one JSON line; run them alternately for a fair comparison (docs/benchmarks.md).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def ours(args) -> dict:
    from llamanas.evaluation.evaluate import model_max_length, prepare, score
    from llamanas.evaluation.questions import Questions
    from llamanas.model.load import load_model

    t_import = time.perf_counter()
    model, tok = load_model(args.model, dtype=args.dtype, device="cpu")
    t_load = time.perf_counter()
    prepared = prepare(
        tok,
        args.task,
        questions=Questions(split=args.split, limit=args.limit),
        max_length=model_max_length(model, tok),
    )
    t_prep = time.perf_counter()
    r = score(model, prepared)[args.task]
    t_score = time.perf_counter()
    return {
        "evaluator": "llamanas",
        "dtype": args.dtype,
        "startup_s": t_import - T0,
        "load_s": t_load - t_import,
        "tokenize_s": t_prep - t_load,
        "score_s": t_score - t_prep,
        "total_s": t_score - T0,
        "acc": r.metrics["acc"],
        "n": r.n,
    }


def lm_eval_run(args) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from llamanas.evaluation.tasks import write_lm_eval_configs
    from llamanas.model.load import resolve

    t_import = time.perf_counter()
    cfg = write_lm_eval_configs([args.task], args.split, tempfile.mkdtemp(prefix="lmeval-cfg-"))
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={resolve(args.model)},dtype={args.dtype}",
        tasks=[args.task],
        task_manager=TaskManager(include_path=str(cfg), include_defaults=False),
        batch_size=args.batch_size,
        device="cpu",
        limit=args.limit,
    )
    t_end = time.perf_counter()
    acc = out["results"][args.task]["acc,none"]
    return {
        "evaluator": f"lm-eval bs{args.batch_size}",
        "dtype": args.dtype,
        "startup_s": t_import - T0,
        "load_and_eval_s": t_end - t_import,
        "total_s": t_end - T0,
        "acc": acc,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--lm-eval", action="store_true")
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    print(json.dumps(lm_eval_run(a) if a.lm_eval else ours(a)), flush=True)
