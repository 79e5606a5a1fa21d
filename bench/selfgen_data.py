"""Self-generated distillation text: the full model's own samples, written as Alpaca-format records.

    OMP_NUM_THREADS=2 python bench/selfgen_data.py --num 600 --new-tokens 128 \
        --out runs/selfgen/alpaca_plus_selfgen600.json

Offline, the only instruction data here is the 999-record Alpaca demo, and InstaTune over-fits it past
about 1.2 epochs (docs/benchmarks.md). Distillation needs no labels, so more text can come from the
teacher itself, as in LLM-QAT (Liu et al., 2023, data-free distillation from the model's own
generations): sampled at temperature 1 (top-50) from the start-of-text token, the samples follow the
distribution the model was pre-trained on (web and educational text for SmolLM2), not Alpaca's. Each
sample becomes a record with a fixed instruction, so ``llamanas finetune --data`` takes the file
unchanged; the Alpaca demo records come first, so ``--eval-size`` holds out a mix of both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from llamanas.model.data import ALPACA_DEMO, alpaca_records, find_data
from llamanas.model.load import load_model

INSTRUCTION = "Write a passage of text."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--num", type=int, default=600, help="Samples to generate.")
    ap.add_argument("--new-tokens", type=int, default=128, help="Tokens per sample (at most).")
    ap.add_argument("--min-tokens", type=int, default=24, help="Shorter samples are dropped.")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument(
        "--top-k", type=int, default=50, help="Sample among the k likeliest tokens (transformers' default)."
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-data", default=None, help="Alpaca records put first (default: the demo; 'none').")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    model, tok = load_model(args.model)
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    torch.manual_seed(args.seed)
    texts: list[str] = []
    t0 = time.perf_counter()
    bar = tqdm(total=args.num, desc="generating", dynamic_ncols=True)
    while len(texts) < args.num:
        n = min(args.batch_size, args.num - len(texts))
        ids = torch.full((n, 1), start, dtype=torch.long)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=1.0,
                max_new_tokens=args.new_tokens,
                pad_token_id=pad,
            )
        for row in out[:, 1:]:
            keep = row.tolist()
            if tok.eos_token_id in keep:  # the sample ended itself
                keep = keep[: keep.index(tok.eos_token_id)]
            text = tok.decode(keep, skip_special_tokens=True).strip()
            if len(tok(text, add_special_tokens=False)["input_ids"]) >= args.min_tokens:
                texts.append(text)
                bar.update(1)
    bar.close()
    wall = time.perf_counter() - t0
    records = []
    base = args.base_data or str(find_data(ALPACA_DEMO) or "")
    if base and base != "none":
        records = alpaca_records(base)
    records += [{"instruction": INSTRUCTION, "input": "", "output": t} for t in texts]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    print(f"{len(texts)} samples in {wall:.0f} s; {len(records)} records -> {args.out}")


if __name__ == "__main__":
    main()
