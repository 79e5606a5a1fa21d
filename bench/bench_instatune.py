"""Does InstaTune make sub-networks good? ARC-Easy accuracy of five fixed sub-networks in three super-networks.

    python bench/bench_instatune.py --steps 100 --batch-size 8 --limit 570 --lr 1e-4 --out runs/bench_instatune_w

Super-networks, all from the same importance-ordered model and search space (default: the width-only
space of instatune_space.yaml; --space default for the model's default space, which also skips layers):
  ordering  importance ordering only, no training;
  full-ft   plain fine-tuning of the full network on Alpaca (``--strategy full``), same steps and data;
  instatune InstaTune (default: ``alternate`` + ``--distill``, uniform sampling), same steps and data.

Sub-networks are fixed by a rule (``fixed_subnets``) to about 100/90/80/70/60% of the parameters; the
chosen configs are printed. Accuracy is on a fixed seeded subset of the ARC-Easy validation split (570
questions = all of it), with standard errors; differences between super-networks are paired (same
questions), with paired standard errors. Goal: InstaTune lifts the 80% sub-network by >= 5 points over
ordering only, and the full network loses <= 1 point. Re-running reuses finished fine-tunings and
evaluations in --out (and resumes interrupted fine-tunings).

``--variants lora,split,mixture`` adds InstaTune runs with the same strategy, batches, steps, learning
rate and questions that train low-rank adapters on the frozen base instead of all weights: ``lora`` (one
shared adapter), ``split`` (few-shot NAS: one adapter per choice of the gene whose gradients disagree most)
and ``mixture`` (Mixture-of-Supernets: an architecture-routed mixture of ``--experts`` adapters), each
paired against the full-weight InstaTune and against ``lora``, with its cost per step. ``--skip-full-ft``
leaves plain fine-tuning out. Two more variants answer other questions, so they have peers of their own:

- ``tickets`` (SuperTickets): the full-weight InstaTune run with ``--ticket-sparsity`` of the decoder
  weights pruned while it trains, against the same InstaTune run pruned to the same sparsity afterwards
  (magnitude, per linear: what a user would do without tickets).
- ``precision`` (LLM-QFA): one adapter per weight precision, trained on the space plus ``bits: [4, 8, 16]``
  with fake quantization, against one shared adapter trained the same way (``lora-bits``) and against
  ``lora`` (trained at 16 bits). Besides the sizes at 16 bits, each is evaluated at every size with all
  layers at ``--bits`` (fake-quantized exactly as extraction stores them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from llamanas.evaluation.evaluate import (
    loglikelihoods,
    model_max_length,
    per_question,
    prepare,
    results_from_loglikelihoods,
)
from llamanas.evaluation.questions import Questions
from llamanas.model.data import ALPACA_DEMO, find_data
from llamanas.supernet.elastic import SuperNet, load_supernet
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig
from llamanas.tuning.args import TuneArgs
from llamanas.tuning.tickets import Tickets
from llamanas.tuning.tune import finetune

TARGETS = (1.0, 0.9, 0.8, 0.7, 0.6)
DROP_PENALTY = 0.003  # per dropped layer: prefer narrowing to dropping when sizes are within ~1%
KV_PENALTY = 0.002  # per KV group removed: prefer narrowing the MLPs when sizes are within ~0.5%
WIDTH_ONLY_SPACE = Path(__file__).with_name("instatune_space.yaml")
VARIANTS = {"lora", "split", "mixture", "tickets", "precision"}
BITS_SPACE = (4, 8, 16)


def spread(n: int, j: int) -> set[int]:
    """``j`` of ``n`` layer positions spread evenly (the layers that get the narrower MLP)."""
    return {min(n - 1, int((k + 0.5) * n / j)) for k in range(j)} if j else set()


def fixed_subnets(space: SearchSpace, targets=TARGETS) -> dict[str, SubnetConfig]:
    """For each target fraction of the parameters, the closest config of a fixed family of rules.

    Candidates: one KV-group count for all layers; MLP widths mixing two adjacent choices (``j`` layers
    spread evenly at the narrower one); dropping the layers just before the last one (the last layer is
    kept: it feeds the head) when the space allows skipping. Ties prefer narrowing to removing.
    """
    arch = space.arch
    n = arch.num_layers
    full = SubnetConfig.full(arch).num_params(arch)
    widths = sorted(set.intersection(*(set(c) for c in space.mlp_choices)))
    pairs = [(w, w) for w in widths] + list(zip(widths, widths[1:], strict=False))
    kvs = sorted(set.intersection(*(set(c) for c in space.kv_choices)))
    out = {}
    for target in targets:
        best, best_cost = None, float("inf")
        for kv in kvs:
            for lo, hi in pairs:
                for j in range(n + 1) if lo != hi else (0,):
                    for d in range(n - space.min_depth + 1):
                        dropped = set(range(n - 1 - d, n - 1))
                        layers = tuple(i for i in range(n) if i not in dropped)
                        narrow = spread(len(layers), j)
                        mlp = tuple(lo if k in narrow else hi for k in range(len(layers)))
                        cfg = SubnetConfig(layers, mlp, (kv,) * len(layers))
                        frac = cfg.num_params(arch) / full
                        cost = abs(frac - target) + DROP_PENALTY * d + KV_PENALTY * (arch.num_kv_heads - kv)
                        if cost < best_cost:
                            best, best_cost = cfg, cost
        space.validate(best)
        frac = best.num_params(arch) / full
        mean_mlp = sum(best.mlp) / len(best.mlp)
        name = (
            f"{frac:.0%} (mlp {mean_mlp:.0f}/{arch.intermediate_size}, kv {best.kv_groups[0]}/"
            f"{arch.num_kv_heads}, {best.depth}/{n} layers)"
        )
        out[name] = best
        print(f"{name}: {best.to_json()}", flush=True)
    return out


def focus_space(cfg: SubnetConfig, arch, path: Path) -> Path:
    """A space file spanning ``cfg`` and the full network: per layer, ``cfg``'s MLP width or the full one,
    its KV groups or all. Its smallest network is ``cfg``, so a sandwich with no random sub-networks
    gives every student pass to ``cfg``: the most any sampling can give one sub-network on a budget."""
    assert cfg.depth == arch.num_layers, "focus needs a sub-network that keeps every layer"
    layers = {
        str(i): {
            "mlp_choices": sorted({m, arch.intermediate_size}),
            "kv_groups": sorted({g, arch.num_kv_heads}),
        }
        for i, (m, g) in enumerate(zip(cfg.mlp, cfg.kv_groups, strict=True))
    }
    spec = {"mode": "per_layer", "min_depth": arch.num_layers, "layers": layers}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1))
    return path


def evaluate_supernet(supernet: SuperNet, prepared, subnets: dict[str, SubnetConfig], task: str) -> dict:
    model = supernet.model.eval()
    rows = {}
    for name, cfg in subnets.items():
        t0 = time.time()
        with torch.no_grad(), supernet.subnet(cfg):
            lls = loglikelihoods(model, prepared)
        r = results_from_loglikelihoods(prepared, lls)[task]
        correct = per_question(prepared, lls)[task]
        assert abs(correct.mean() - r.metrics["acc"]) < 1e-9, "per-document scores disagree with acc"
        rows[name] = {
            "acc": r.metrics["acc"],
            "stderr": r.stderr["acc"],
            "correct": correct.tolist(),
            "eval_s": round(time.time() - t0, 1),
        }
        print(f"  {name:40s} acc {r.metrics['acc']:.4f} ± {r.stderr['acc']:.4f}", flush=True)
    return rows


def cached_eval(
    folder: Path, supernet: SuperNet, prepared, subnets: dict[str, SubnetConfig], args, tag: str = ""
) -> dict:
    """``evaluate_supernet``, kept in ``folder`` so that a re-run after an interruption skips it."""
    key = {"task": args.task, "split": args.split, "limit": args.limit, "seed": args.seed}
    key["subnets"] = {k: v.to_dict() for k, v in subnets.items()}
    path = folder / f"eval_{args.task}{tag}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            print(f"  (reusing {path})", flush=True)
            return saved["rows"]
    rows = evaluate_supernet(supernet, prepared, subnets, args.task)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "rows": rows}))
    return rows


def quantized(subnets: dict[str, SubnetConfig], bits: int) -> dict[str, SubnetConfig]:
    """The same sub-networks with every kept layer at ``bits``."""
    return {
        f"{name} @ {bits} bits": dataclasses.replace(cfg, bits=(bits,) * cfg.depth)
        for name, cfg in subnets.items()
    }


def bits_space(space: str | None, path: Path) -> Path:
    """``space`` (a YAML file) with the weight-precision gene ``bits: [4, 8, 16]`` added."""
    if space is None:
        raise SystemExit("the precision variant needs a space file (--space), not the default space.")
    spec = yaml.safe_load(Path(space).read_text())
    spec["bits"] = list(BITS_SPACE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def prune_magnitude(supernet: SuperNet, sparsity: float) -> float:
    """Zero the smallest-magnitude ``sparsity`` of every decoder linear's weights (post hoc, no training);
    the same masks ``Tickets`` makes, in one step."""
    tickets = Tickets(supernet.model, steps=1, sparsity=sparsity, start=0.0, end=0.0, every=1)
    tickets.step(1)
    return tickets.achieved()


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of b - a in points, and its paired standard error."""
    d = np.asarray(b) - np.asarray(a)
    return 100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(len(d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=None, help="Alpaca-format data (default: the shared Alpaca demo).")
    ap.add_argument(
        "--calibration",
        default=None,
        help="Text of the importance ordering (default: --data); the Alpaca demo keeps the ordering of the "
        "other runs when --data differs.",
    )
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=570, help="Questions (570 = the whole validation split).")
    ap.add_argument("--steps", type=int, default=150, help="Optimizer steps of each fine-tuning.")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-5, help="Peak learning rate of both fine-tunings.")
    ap.add_argument(
        "--space",
        default=str(WIDTH_ONLY_SPACE),
        help="Search-space file of all three super-networks ('default': the model's default space, which "
        "also skips layers).",
    )
    ap.add_argument("--strategy", default="alternate", help="InstaTune strategy (alternate | sandwich).")
    ap.add_argument("--schedule", default="uniform")
    ap.add_argument("--no-distill", action="store_true", help="InstaTune without in-place distillation.")
    ap.add_argument(
        "--min-params",
        type=float,
        default=0.0,
        help="InstaTune samples only sub-networks with at least this fraction of the parameters.",
    )
    ap.add_argument(
        "--num-random",
        type=int,
        default=2,
        help="Random sub-networks per sandwich step (TuneArgs.num_random).",
    )
    ap.add_argument(
        "--focus",
        type=float,
        default=None,
        help="A control, not a strategy: InstaTune trains only between the fixed sub-network of this target "
        "(e.g. 0.8) and the full network (see focus_space); with --strategy sandwich --num-random 0 every "
        "student pass goes to that one sub-network.",
    )
    ap.add_argument("--distill-tokens", default="all", help="all | response (see TuneArgs.distill_tokens).")
    ap.add_argument(
        "--variants",
        default="",
        help="Comma-separated, of lora, split, mixture, tickets, precision (see above).",
    )
    ap.add_argument(
        "--ticket-sparsity", type=float, default=0.3, help="Decoder weights the tickets variant prunes."
    )
    ap.add_argument(
        "--bits", type=int, default=4, help="The precision variant's evaluation precision (4 or 8)."
    )
    ap.add_argument("--experts", type=int, default=4, help="Adapters the mixture routes between.")
    ap.add_argument("--lora-r", type=int, default=16, help="Rank of every adapter of the variants.")
    ap.add_argument("--skip-full-ft", action="store_true", help="Leave plain fine-tuning out.")
    ap.add_argument(
        "--targets", default=",".join(map(str, TARGETS)), help="Sizes of the fixed sub-networks (fractions)."
    )
    ap.add_argument("--eval-size", type=int, default=64, help="Held-out Alpaca examples for final losses.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_instatune"))
    args = ap.parse_args()
    if args.space == "default":
        args.space = None

    data = args.data or str(find_data(ALPACA_DEMO) or "")
    common = dict(
        data=data,
        model=args.model,
        space=args.space,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        seed=args.seed,
        eval_size=args.eval_size,
        calibration=args.calibration,
        save_every=25,
    )
    if args.focus is not None and args.focus not in TARGETS:
        raise SystemExit(f"--focus {args.focus} is not a target; allowed: {list(TARGETS)}.")
    # Built (and so checked) before the model loads; InstaTune first: it is the one the goal is about,
    # and a re-run reuses both.
    runs = {
        "instatune": TuneArgs(
            out=str(args.out / "instatune"),
            strategy=args.strategy,
            schedule=args.schedule,
            distill=not args.no_distill,
            distill_tokens=args.distill_tokens,
            min_params=args.min_params,
            num_random=args.num_random,
            **common,
        ),
        "full-ft": TuneArgs(out=str(args.out / "full-ft"), strategy="full", **common),
    }
    if args.skip_full_ft:
        del runs["full-ft"]
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - VARIANTS:
        raise SystemExit(
            f"unknown variant(s) {sorted(set(variants) - VARIANTS)}; allowed: {sorted(VARIANTS)}"
        )
    if args.bits not in (4, 8):
        raise SystemExit(f"--bits {args.bits}: allowed are 4 and 8.")
    lora = {"lora": True, "lora_dropout": 0.0}
    for v in variants:  # the InstaTune run's settings, with adapters on the frozen base (or tickets)
        if v == "tickets":
            runs[v] = dataclasses.replace(
                runs["instatune"], out=str(args.out / v), ticket_sparsity=args.ticket_sparsity
            )
            continue
        if v == "precision":
            space_q = str(bits_space(args.space, args.out / "bits_space.yaml"))
            runs["lora-bits"] = dataclasses.replace(
                runs["instatune"], out=str(args.out / "lora-bits"), lora_r=args.lora_r, space=space_q, **lora
            )
        adapters = lora if v == "lora" else {"routing": v, "experts": args.experts}
        runs[v] = dataclasses.replace(
            runs["instatune"], out=str(args.out / v), lora_r=args.lora_r, **adapters
        )
        if v == "precision":
            runs[v] = dataclasses.replace(runs[v], space=space_q)
    t_start = time.time()
    # Ordering only: the same ordering the fine-tunings start from (calibrated on the same data).
    base, tokenizer = load_supernet(args.model, space_file=args.space, calibration=args.calibration or data)
    prepared = prepare(
        tokenizer,
        [args.task],
        questions=Questions(split=args.split, limit=args.limit, seed=args.seed),
        max_length=model_max_length(base.model),
    )
    targets = tuple(float(t) for t in args.targets.split(","))
    subnets = fixed_subnets(base.space, targets)
    arch = base.arch
    if args.focus is not None:
        target = dict(zip(targets, subnets.values(), strict=True))[args.focus]
        space = str(focus_space(target, arch, args.out / "focus_space.json"))
        runs["instatune"] = dataclasses.replace(runs["instatune"], space=space)
    n_docs = prepared.n_docs
    print(f"{args.task} {args.split}: {n_docs} questions", flush=True)
    results: dict[str, dict] = {}
    training: dict[str, dict] = {}
    print("ordering", flush=True)
    results["ordering"] = cached_eval(args.out / "ordering", base, prepared, subnets, args)
    del base
    results_order = ["ordering", *runs]
    low_bits = quantized(subnets, args.bits)
    quant: dict[str, dict] = {}  # at --bits: the precision comparison
    if "precision" in variants:
        base, _ = load_supernet(args.model, space_file=args.space, calibration=args.calibration or data)
        base.fake_quant = True
        print(f"ordering at {args.bits} bits", flush=True)
        quant["ordering"] = cached_eval(args.out / "ordering", base, prepared, low_bits, args, "_bits")
        del base
    for name, tune_args in runs.items():
        print(f"{name}: fine-tuning {tune_args.strategy}/{tune_args.schedule}", flush=True)
        result = finetune(tune_args)
        rec = result.record
        training[name] = {k: rec[k] for k in ("steps", "tokens", "forward_tokens", "wall_time_s", "epochs")}
        training[name]["final_losses"] = rec["final_losses"]
        training[name]["trainable"] = sum(
            p.numel() for p in result.supernet.model.parameters() if p.requires_grad
        )
        if rec.get("routing"):
            training[name]["routing"] = rec["routing"]
            training[name]["trainable"] = sum(p.numel() for p in result.supernet.routing.parameters())
        print(
            f"  {rec['steps']} steps, {rec['tokens']:,} tokens ({rec['epochs']:.2f} epochs), "
            f"{rec['forward_tokens']:,} forward tokens, {rec['wall_time_s']:.0f} s",
            flush=True,
        )
        results[name] = cached_eval(args.out / name, result.supernet, prepared, subnets, args)
        if "precision" in variants and name in ("lora", "lora-bits", "precision"):
            result.supernet.fake_quant = True
            print(f"{name} at {args.bits} bits", flush=True)
            quant[name] = cached_eval(args.out / name, result.supernet, prepared, low_bits, args, "_bits")
        if name == "instatune" and "tickets" in variants:  # the peer: InstaTune, pruned afterwards
            achieved = prune_magnitude(result.supernet, args.ticket_sparsity)
            print(f"instatune pruned afterwards to {achieved:.1%} sparsity", flush=True)
            results["instatune-pruned"] = cached_eval(
                args.out / "instatune-pruned", result.supernet, prepared, subnets, args
            )
            results_order.insert(results_order.index("instatune") + 1, "instatune-pruned")
        del result
    results = {k: results[k] for k in results_order}

    print(
        f"\nARC-Easy ({args.split}, {n_docs} questions) accuracy ± standard error; "
        "Δ = InstaTune − peer, paired ± paired standard error\n"
    )
    main_cols = [k for k in ("ordering", "full-ft", "instatune") if k in results]
    peers = [k for k in ("ordering", "full-ft") if k in results]
    titles = {"ordering": "ordering only", "full-ft": "plain fine-tuning", "instatune": "InstaTune"}
    print(
        "| sub-network | params | "
        + " | ".join(titles[k] for k in main_cols)
        + "".join(f" | Δ InstaTune vs {titles[p]}" for p in peers)
        + " |"
    )
    print("|---|---|" + "---|" * (len(main_cols) + len(peers)))
    for name, cfg in subnets.items():
        cells = [f"{results[k][name]['acc']:.3f} ± {results[k][name]['stderr']:.3f}" for k in main_cols]
        for peer in peers:
            d, se = paired(results[peer][name]["correct"], results["instatune"][name]["correct"])
            cells.append(f"{d:+.1f} ± {se:.1f} pts")
        params = cfg.num_params(arch)
        print(f"| {name} | {params / 1e6:.1f}M | {' | '.join(cells)} |")
    if variants:
        print(
            "\nAdapters on the frozen base, paired against the full-weight InstaTune and against one shared LoRA:\n"
        )
        print("| sub-network | " + " | ".join(f"{v} | Δ vs InstaTune | Δ vs lora" for v in variants) + " |")
        print("|---|" + "---|---|---|" * len(variants))
        for name in subnets:
            cells = []
            for v in variants:
                r = results[v][name]
                cells.append(f"{r['acc']:.3f} ± {r['stderr']:.3f}")
                for peer in ("instatune", "lora"):
                    if peer in results and peer != v:
                        d, se = paired(results[peer][name]["correct"], r["correct"])
                        cells.append(f"{d:+.1f} ± {se:.1f}")
                    else:
                        cells.append("")
            print(f"| {name} | {' | '.join(cells)} |")
    if "tickets" in variants:
        print(
            f"\nSuperTickets: InstaTune pruning {args.ticket_sparsity:.0%} of the decoder weights while it trains, "
            "against the same InstaTune run pruned as much afterwards (Δ paired):\n"
        )
        print(
            "| sub-network | InstaTune (dense) | InstaTune, pruned afterwards | tickets | Δ tickets vs pruned afterwards |"
        )
        print("|---|---|---|---|---|")
        for name in subnets:
            a, b, c = (results[k][name] for k in ("instatune", "instatune-pruned", "tickets"))
            d, se = paired(b["correct"], c["correct"])
            cells = [f"{r['acc']:.3f} ± {r['stderr']:.3f}" for r in (a, b, c)]
            print(f"| {name} | {' | '.join(cells)} | {d:+.1f} ± {se:.1f} pts |")
    if "precision" in variants:
        cols = [k for k in ("ordering", "lora", "lora-bits", "precision") if k in quant]
        print(
            f"\nPer-precision adapters (LLM-QFA): every layer at {args.bits} bits, and at 16 bits; Δ precision − "
            "peer, paired:\n"
        )
        print("| sub-network | " + " | ".join(cols) + " | Δ vs lora-bits | Δ vs lora |")
        print("|---|" + "---|" * (len(cols) + 2))
        rows = [(n, quant) for n in low_bits] + [(n, results) for n in subnets]
        for name, table in rows:
            cells = [f"{table[k][name]['acc']:.3f} ± {table[k][name]['stderr']:.3f}" for k in cols]
            for peer in ("lora-bits", "lora"):
                d, se = paired(table[peer][name]["correct"], table["precision"][name]["correct"])
                cells.append(f"{d:+.1f} ± {se:.1f}")
            print(f"| {name} | {' | '.join(cells)} |")
    for name, t in training.items():
        print(
            f"\n{name}: {t['steps']} steps, {t['tokens']:,} tokens, {t['forward_tokens']:,} forward tokens, "
            f"{t['wall_time_s']:.0f} s ({t['wall_time_s'] / max(1, t['steps']):.1f} s/step); "
            f"held-out loss {t['final_losses']['held_out']}"
            + (f"; split on {t['routing']['gene']}" if t.get("routing", {}).get("gene") else "")
        )
    meta = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "instatune_args": runs["instatune"].to_dict(),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "wall_s": round(time.time() - t_start, 1),
        "subnets": {k: v.to_dict() for k, v in subnets.items()},
        "training": training,
        "results": results,
        "results_at_bits": quant,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(meta, indent=2))
    print(f"\nwrote {args.out / 'results.json'} (total {time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
