"""``make demo``: the main job on the default model, small enough for a 2-core laptop.

Evaluates the full model and a few random sub-networks of its importance-ordered super-network on a
fixed ARC-Easy validation subset, and prints size, MACs, latency and accuracy side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DemoArgs:
    model: str = "default"
    task: str = "arc_easy"
    split: str = "validation"
    limit: int = 100
    subnets: int = 3
    seed: int = 0


def run_demo(args: DemoArgs, console) -> list[dict]:
    from rich.table import Table

    from llamanas.evaluate import model_max_length, prepare, score
    from llamanas.measure import measure
    from llamanas.space import SubnetConfig
    from llamanas.supernet import load_supernet

    with console.status(f"Loading {args.model} and ordering channels by importance"):
        supernet, tokenizer = load_supernet(args.model)
    rng = np.random.default_rng(args.seed)
    configs = [("full", SubnetConfig.full(supernet.arch))]
    configs += [(f"random{k + 1}", supernet.space.sample(rng)) for k in range(args.subnets)]
    prepared = prepare(
        tokenizer,
        [args.task],
        args.split,
        args.limit,
        seed=args.seed,
        max_length=model_max_length(supernet.model, tokenizer),
    )
    rows = []
    for name, cfg in configs:
        console.print(f"[bold]{name}[/bold]: {cfg.depth} layers, {cfg.num_params(supernet.arch):,} params")
        with supernet.subnet(cfg):
            result = score(supernet.model, prepared, progress=True)[args.task]
        m = measure(supernet, cfg, repeats=3, gen_tokens=16)
        rows.append(
            {"name": name, "subnet": cfg.to_dict(), "result": result.to_dict(), "measure": m.to_dict()}
        )
    table = Table(title=f"{args.model}: {args.task} ({args.split}, {args.limit} items, seed {args.seed})")
    for col in (
        "sub-network",
        "layers",
        "params (M)",
        "MACs/token (M)",
        "latency ms",
        "tok/s",
        "acc",
        "± se",
    ):
        table.add_column(col, justify="left" if col == "sub-network" else "right")
    for row in rows:
        r, m = row["result"], row["measure"]
        acc, se = r["metrics"]["acc"], r["stderr"]["acc"]
        at_chance = r["chance"] is not None and abs(acc - r["chance"]) <= 2 * se
        table.add_row(
            row["name"],
            str(len(row["subnet"]["layers"])),
            f"{m['params'] / 1e6:.1f}",
            f"{m['macs_per_token'] / 1e6:.1f}",
            f"{m['latency_ms']:.1f}",
            f"{m['throughput_tok_s']:.1f}",
            f"{acc:.3f} ± {se:.3f}" + (" ~chance" if at_chance else ""),
        )
    console.print(table)
    console.print(
        "Random sub-networks of an untrained super-network are near chance: `llamanas finetune` (InstaTune) "
        "trains them, `llamanas search` finds the good ones."
    )
    return rows
