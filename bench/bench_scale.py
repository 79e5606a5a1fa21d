"""Peak memory and wall time of every command at scale: the default model, a 1B and a 7B shape.

    python bench/make_scale_model.py --shape 1b --out runs/scale/llama-1b-shape
    python bench/make_scale_model.py --shape 7b --out runs/scale/llama2-7b-shape
    python bench/bench_scale.py --models default,runs/scale/llama-1b-shape,runs/scale/llama2-7b-shape

Each step runs as its own process under GNU time (peak resident memory, wall time): ``space``, importance
ordering (``load_supernet`` on a short calibration text), ``eval --limit 5``, a 4-evaluation search,
``extract`` of a 70%-MLP sub-network, and one step of ``finetune --lora`` (sandwich + distillation,
gradient checkpointing). The same command with ``--device cuda`` is the GPU check (bench/gpu_check.sh).
Results go to ``--out`` as JSON, and a markdown table is printed; a finished step is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.data import ALPACA_DEMO, find_data
from llamanas.model.load import load_config

LLAMANAS = [sys.executable, "-m", "llamanas.cli"]
STEPS = ("space", "ordering", "eval", "search", "extract", "finetune_lora")
INFERENCE = ("ordering", "eval", "search", "extract")  # goal: peak <= 1.3 x the bf16 weight bytes


def calibration_file(tmp: Path, windows: int = 4, seq_len: int = 128) -> str:
    """Alpaca demo text cut to give exactly ``windows`` calibration windows of ``seq_len`` tokens (the
    ordering step takes at most 64 windows, overlapping ones on short text): 512 tokens instead of 8,192,
    because a 7B forward pass on two CPU cores takes minutes."""
    from transformers import AutoTokenizer

    from llamanas.model.load import resolve

    records = json.loads(find_data(ALPACA_DEMO).read_text())[:20]
    text = "\n\n".join(r["instruction"] + " " + r["input"] + " " + r["output"] for r in records)
    from llamanas.supernet.importance import calibration_batches, calibration_texts

    tok = AutoTokenizer.from_pretrained(resolve("default"))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    path = tmp / "calibration.txt"
    for n in range(seq_len - 1, seq_len + 4 * windows):  # decoding and re-encoding may merge tokens
        path.write_text(tok.decode(ids[:n]))
        try:
            batches = calibration_batches(tok, calibration_texts(path), seq_len=seq_len)
        except LlamanasError:  # shorter than one window
            continue
        if sum(len(b) for b in batches) >= windows:
            break
    return str(path)


def commands(model: str, tmp: Path, device: str, dtype: str) -> dict[str, list[str]]:
    arch = Arch.from_hf(load_config(model))
    m = max(64, round(0.7 * arch.intermediate_size / 64) * 64)
    cfg = json.dumps(
        {
            "layers": list(range(arch.num_layers)),
            "mlp": [m] * arch.num_layers,
            "kv_groups": [arch.num_kv_heads] * arch.num_layers,
        }
    )
    cal = calibration_file(tmp)
    place = ["--device", device, "--dtype", dtype]
    load = f"from llamanas.supernet.elastic import load_supernet; load_supernet({model!r}, calibration={cal!r}, dtype={dtype!r}, device={device!r}, say=print)"
    data = str(find_data(ALPACA_DEMO))
    return {
        "space": [*LLAMANAS, "space", "--model", model],
        "ordering": [sys.executable, "-c", load],
        "eval": [*LLAMANAS, "eval", "--model", model, "--tasks", "arc_easy", "--split", "validation", "--limit", "5", *place],
        "search": [*LLAMANAS, "search", "--model", model, "--tasks", "arc_easy", "--limit", "5", "--evaluations", "4",
                   "--population", "2", "--algorithm", "random", "--no-order", "--out", str(tmp / "search"), *place],
        "extract": [*LLAMANAS, "extract", "--model", model, "--subnet", cfg, "--no-order", "--out", str(tmp / "extract"), *place],
        "finetune_lora": [*LLAMANAS, "finetune", "--model", model, "--data", data, "--out", str(tmp / "tune"), "--lora",
                          "--steps", "1", "--batch-size", "1", "--max-length", "96", "--strategy", "sandwich", "--distill",
                          "--num-random", "0", "--eval-size", "0", "--save-every", "0", "--calibration", cal,
                          "--gradient-checkpointing", *place],
    }  # fmt: skip


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under GNU time; its peak RSS (GB), wall seconds and exit code."""
    with open(log, "w") as f:
        rc = subprocess.call(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    secs = 0.0
    if wall:
        for part in wall.group(1).split(":"):
            secs = secs * 60 + float(part)
    return {
        "rc": rc,
        "peak_rss_gb": int(rss.group(1)) * 1024 / 1e9 if rss else None,
        "wall_s": round(secs, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", type=Path, default=Path("runs/scale/results.json"))
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        arch = Arch.from_hf(load_config(model))
        entry = results.setdefault(
            model, {"params": arch.num_params(), "bf16_gb": arch.num_params() * 2 / 1e9}
        )
        tmp = Path(tempfile.mkdtemp(prefix="scale-", dir=args.out.parent))
        try:
            cmds = commands(model, tmp, args.device, args.dtype)
            for step in args.steps.split(","):
                key = f"{step}@{args.device}"
                if entry.get(key, {}).get("rc") == 0:
                    continue
                print(f"{model}: {step} ...", flush=True)
                r = timed(cmds[step], args.out.parent / f"{Path(model).name}-{step}-{args.device}.log")
                r["command"] = " ".join(cmds[step]).replace(sys.executable, "python")
                entry[key] = r
                args.out.write_text(json.dumps(results, indent=2))
                print(f"  rc {r['rc']}, peak {r['peak_rss_gb']:.2f} GB, {r['wall_s']:.0f} s", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n| model | params | bf16 GB | step | peak RSS GB | x bf16 weights | wall s | rc |")
    print("|---|---|---|---|---|---|---|---|")
    for model, entry in results.items():
        for key, r in entry.items():
            if isinstance(r, dict):
                ratio = r["peak_rss_gb"] / entry["bf16_gb"] if r["peak_rss_gb"] else float("nan")
                print(f"| {Path(model).name} | {entry['params'] / 1e9:.2f}B | {entry['bf16_gb']:.1f} | {key} | "
                      f"{r['peak_rss_gb']:.2f} | {ratio:.2f} | {r['wall_s']:.0f} | {r['rc']} |")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main()
