"""How much importance ordering helps: ARC-Easy accuracy of fixed sub-networks with and without it.

    python bench/bench_ordering.py --limit 200 --json runs/bench_ordering.json

Width-only sub-networks are used because ordering only changes which channels a width slice keeps
(skipping whole layers is unaffected by it).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from llamanas.evaluation.evaluate import model_max_length, prepare, score
from llamanas.evaluation.questions import Questions
from llamanas.model.arch import Arch
from llamanas.model.load import load_model
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.importance import order_model
from llamanas.supernet.subnet import SubnetConfig


def fixed_subnets(arch: Arch) -> dict[str, SubnetConfig]:
    n, inter, kv = arch.num_layers, arch.intermediate_size, arch.num_kv_heads
    layers = tuple(range(n))
    mlp = lambda frac: tuple([int(64 * round(frac * inter / 64))] * n)  # noqa: E731
    return {
        "full": SubnetConfig.full(arch),
        "mlp 75%": SubnetConfig(layers, mlp(0.75), (kv,) * n),
        "mlp 50%": SubnetConfig(layers, mlp(0.5), (kv,) * n),
        f"kv {kv - 1}/{kv} groups": SubnetConfig(layers, (inter,) * n, (kv - 1,) * n),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    model, tokenizer = load_model(args.model)
    prepared = prepare(
        tokenizer,
        [args.task],
        questions=Questions(split=args.split, limit=args.limit, seed=args.seed),
        max_length=model_max_length(model),
    )
    supernet = SuperNet(model)
    subnets = fixed_subnets(supernet.arch)
    rows: dict[str, dict] = {name: {"params": cfg.num_params(supernet.arch)} for name, cfg in subnets.items()}
    t0 = time.time()
    for ordered in (False, True):
        if ordered:
            supernet.reset()
            order_model(model, tokenizer)
        key = "ordered" if ordered else "unordered"
        for name, cfg in subnets.items():
            with supernet.subnet(cfg):
                r = score(model, prepared)[args.task]
            rows[name][key] = (r.metrics["acc"], r.stderr["acc"])
            print(f"{key:9s} {name:16s} acc {r.metrics['acc']:.4f} ± {r.stderr['acc']:.4f}", flush=True)
    print(
        "\n| sub-network | params | acc without ordering | acc with ordering | gain |\n|---|---|---|---|---|"
    )
    for name, row in rows.items():
        (a, sa), (b, sb) = row["unordered"], row["ordered"]
        print(
            f"| {name} | {row['params'] / 1e6:.1f}M | {a:.3f} ± {sa:.3f} | {b:.3f} ± {sb:.3f} | {100 * (b - a):+.1f} pts |"
        )
    meta = {
        "args": vars(args) | {"json": str(args.json)},
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "wall_s": time.time() - t0,
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
