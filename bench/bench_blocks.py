"""Attention blocks vs MLP width: what skipping attention costs in accuracy and buys at long context.

    python bench/bench_blocks.py --out runs/bench_blocks            # part A (drops) and part B (fronts)
    python bench/bench_blocks.py --out runs/bench_blocks --no-search # part A only

Part A, on the default model ordered by activation RMS (as ``load_supernet`` does it):
  - Block Influence of every attention and MLP block on the calibration text (``1 - cos(h, h + block)``);
  - ``attn-k``: every layer kept at full width, the k attention blocks of least influence skipped
    (``blocks.drop_attention_blocks``; k from ``--counts``, default 2,4,8,12);
  - ``width-k``: the same parameter reduction by a uniform MLP width instead (every layer and attention
    block kept; the widest multiple of 8 whose size does not exceed attn-k's);
  - each config's KV-cache bytes per token, and, exported to F16 GGUF, its llama.cpp prefill and decode
    speed after a 128- and a 2048-token prompt (batch 1, 32 decoded tokens, median of 3 after a warm-up,
    ``--threads``); timings first, in a row, on a quiet machine;
  - accuracy: ARC-Easy validation (all 570) and PIQA validation (seeded 400), lm-eval ``acc``, with the
    paired difference attn-k minus width-k on the same questions.
Part B (unless ``--no-search``): a LINAS search of accuracy vs params in the default space, which now has
the block genes, with the budget of ``bench_deploy.py``'s run in the space without them (ARC-Easy
validation, seeded 100-question subset, 30 evaluations, population 8, seed 0); both fronts timed in
llama.cpp (F16, 2048-token prompt, 32 decoded, median of 3) and compared on params and on measured decode
latency: hypervolume with one reference point, and how many members of each the other dominates.
Everything is kept in OUT/results.json after each step; a re-run continues where it stopped.

After a short InstaTune (``llamanas finetune`` in the default space, which skips blocks), the same configs
on the fine-tuned weights (timings do not change with training):

    python bench/bench_blocks.py --supernet runs/blocks_tune --influence-from runs/bench_blocks/results.json \
        --out runs/bench_blocks_tuned --no-search --no-timing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from llamanas.deploy.gguf import export_subnet_gguf  # noqa: E402
from llamanas.deploy.llamacpp import time_gguf  # noqa: E402
from llamanas.errors import LlamanasError  # noqa: E402
from llamanas.evaluation.evaluate import model_max_length, prepare  # noqa: E402
from llamanas.evaluation.questions import Questions
from llamanas.evidence.baselines import uniform_width  # noqa: E402
from llamanas.search.args import SearchArgs  # noqa: E402
from llamanas.search.run import load_run, search  # noqa: E402
from llamanas.supernet.blocks import block_influence_per_block, drop_attention_blocks  # noqa: E402
from llamanas.supernet.elastic import load_supernet  # noqa: E402
from llamanas.supernet.importance import calibration_batches, calibration_texts  # noqa: E402
from llamanas.supernet.subnet import SubnetConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_instatune import paired  # noqa: E402
from bench_latency_search import dominated, hypervolume  # noqa: E402 - both maximised: cost negated
from bench_recovery import evaluate_model  # noqa: E402

CONTEXTS = (128, 2048)
COMMON = dict(
    model="default", tasks=("arc_easy",), algorithm="linas", evaluations=30, population=8, limit=100,
    inner_generations=300, seed=0, warm_start=(),  # measured cold, before warm starts were the default
)  # fmt: skip


class Store:
    def __init__(self, path: Path):
        self.path = path
        self.d = json.loads(path.read_text()) if path.is_file() else {}

    def save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.d, indent=1))
        os.replace(tmp, self.path)


def timings(supernet, cfg: SubnetConfig, threads: int) -> dict:
    """llama.cpp prefill / decode tokens/s of cfg's F16 GGUF after each prompt length of CONTEXTS."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        try:
            export_subnet_gguf(supernet, cfg, "default", path, type="f16")
        except LlamanasError as e:
            return {"error": str(e)}
        for n in CONTEXTS:
            t = time_gguf(path, prompt_tokens=n, decode_tokens=32, repeats=3, threads=threads)
            out[str(n)] = {"prefill_tok_s": t.prefill_tokens_per_s, "decode_tok_s": t.decode_tokens_per_s}
        out["file_bytes"] = t.file_bytes
    return out


def part_a(args, st: Store, supernet, tok):
    a = supernet.arch
    full_params = SubnetConfig.full(a).num_params(a)
    if "influence" not in st.d:
        supernet.reset()
        batches = calibration_batches(tok, calibration_texts(None))
        st.d["influence"] = block_influence_per_block(supernet.model, batches)
        st.save()
    attn_bi = st.d["influence"]["attention"]
    cfgs = {"base": SubnetConfig.full(a)}
    for k in args.counts:
        drop = drop_attention_blocks(a, attn_bi, k)
        cfgs[f"attn-{k}"] = drop
        cfgs[f"width-{k}"] = uniform_width(a, drop.num_params(a) / full_params)
    rows = st.d.setdefault("rows", {})
    for name, cfg in cfgs.items():
        r = rows.setdefault(name, {"config": cfg.to_dict()})
        r.update(params=cfg.num_params(a), kv_bytes_per_token=cfg.kv_bytes(a))
        r["dropped_attention"] = [i for i, g in zip(cfg.layers, cfg.kv_groups, strict=True) if g == 0]
    st.save()
    for name, cfg in cfgs.items():  # timings first, in a row
        if "llamacpp" not in rows[name] and not args.no_timing:
            print(f"timing {name} in llama.cpp ...", flush=True)
            rows[name]["llamacpp"] = timings(supernet, cfg, args.threads)
            st.save()
    prepared = None
    for name, cfg in cfgs.items():
        if "acc" in rows[name]:
            continue
        if prepared is None:
            n = model_max_length(supernet.model)
            prepared = {
                "arc_easy": prepare(
                    tok,
                    ["arc_easy"],
                    questions=Questions(split="validation", limit=args.limit, seed=0),
                    max_length=n,
                ),
                "piqa": prepare(
                    tok,
                    ["piqa"],
                    questions=Questions(split="validation", limit=args.piqa_limit, seed=0),
                    max_length=n,
                ),
            }
        print(f"evaluating {name} ...", flush=True)
        with supernet.subnet(cfg):
            rows[name]["acc"] = evaluate_model(supernet.model, prepared)
        st.save()


def table_a(st: Store) -> str:
    rows = st.d["rows"]
    full = rows["base"]["params"]
    lines = [
        "| config | params | KV bytes/token | ARC-Easy (570) | PIQA (400) | Δ ARC vs width | Δ PIQA vs width "
        "| decode tok/s @128 | decode tok/s @2048 | prefill tok/s @2048 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        acc = r.get("acc", {})
        cells = []
        for task in ("arc_easy", "piqa"):
            t = acc.get(task)
            cells.append(f"{t['acc']:.3f} ± {t['stderr']:.3f}" if t else "")
        deltas = []
        partner = rows.get(name.replace("attn-", "width-")) if name.startswith("attn-") else None
        for task in ("arc_easy", "piqa"):
            if partner and task in acc and task in partner.get("acc", {}):
                m, se = paired(partner["acc"][task]["correct"], acc[task]["correct"])
                deltas.append(f"{m:+.1f} ± {se:.1f}")
            else:
                deltas.append("")
        lc = r.get("llamacpp", {})
        speed = [
            f"{lc[c]['decode_tok_s']:.1f}" if c in lc else lc.get("error", "")[:40] for c in ("128", "2048")
        ] + [f"{lc['2048']['prefill_tok_s']:.0f}" if "2048" in lc else ""]
        lines.append(
            f"| {name} | {r['params'] / 1e6:.1f}M ({r['params'] / full:.1%}) | {r['kv_bytes_per_token']:,} | "
            + " | ".join(cells + deltas + speed)
            + " |"
        )
    return "\n".join(lines)


def part_b(args, st: Store, supernet):
    runs = {"no_blocks": Path(args.params_run), "blocks": args.out / "search_blocks"}
    if not (runs["no_blocks"] / "front.json").is_file():
        raise SystemExit(f"{runs['no_blocks']}: no front.json (run bench/bench_deploy.py first).")
    search(SearchArgs(**COMMON, objectives=("accuracy", "params"), space="full", out=str(runs["blocks"])))
    fronts = st.d.setdefault("fronts", {})
    for name, run in runs.items():
        view = load_run(run)
        f = fronts.setdefault(name, {"members": []})
        done = {json.dumps(m["config"]) for m in f["members"]}
        for m in view.front:
            if json.dumps(m.config.to_dict()) in done:
                continue
            print(f"timing the {name} front member #{m.id} at 2048 tokens ...", flush=True)
            t = timings(supernet, m.config, args.threads)
            f["members"].append(
                {
                    "id": m.id,
                    "config": m.config.to_dict(),
                    "accuracy": m.values["accuracy"],
                    "params": m.config.num_params(supernet.arch),
                    "kv_bytes_per_token": m.config.kv_bytes(supernet.arch),
                    "skipped_attention": sum(g == 0 for g in m.config.kv_groups),
                    "skipped_mlp": sum(x == 0 for x in m.config.mlp),
                    "llamacpp": t,
                }
            )
            st.save()
    pts = {}
    for name, f in fronts.items():
        ok = [m for m in f["members"] if "2048" in m["llamacpp"]]
        pts[name] = {  # (accuracy, -cost, member): both maximised
            "params": [(m["accuracy"], -m["params"], m) for m in f["members"]],
            "decode_ms_2048": [
                (m["accuracy"], -1000.0 / m["llamacpp"]["2048"]["decode_tok_s"], m) for m in ok
            ],
        }
    summary = {}
    for axis in ("params", "decode_ms_2048"):
        every = [p for v in pts.values() for p in v[axis]]
        ref = (min(a for a, _, _ in every) - 0.01, min(c for _, c, _ in every) * 1.05)  # cost x 1.05
        summary[axis] = {
            name: {
                "n": len(v[axis]),
                "hypervolume": hypervolume(v[axis], ref),
                "dominated_by_other": sum(
                    dominated(p, pts["blocks" if name == "no_blocks" else "no_blocks"][axis]) for p in v[axis]
                ),
            }
            for name, v in pts.items()
        }
        summary[axis]["reference"] = ref
    st.d["front_comparison"] = summary
    st.save()
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_blocks"))
    ap.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8, 12])
    ap.add_argument("--limit", type=int, default=None, help="ARC-Easy questions (default all 570)")
    ap.add_argument("--piqa-limit", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-search", action="store_true", help="part A only")
    ap.add_argument("--no-timing", action="store_true", help="accuracy only (a smoke test)")
    ap.add_argument("--params-run", default="runs/bench_deploy/search_params")
    ap.add_argument(
        "--supernet",
        default="default",
        help="A fine-tuned super-network of the default model (llamanas finetune): part A on its weights.",
    )
    ap.add_argument(
        "--influence-from",
        type=Path,
        default=None,
        help="Another run's results.json: drop the same attention blocks (its Block Influence), so a "
        "fine-tuned super-network is compared on the configs of the untuned one.",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    st = Store(args.out / "results.json")
    if args.influence_from and "influence" not in st.d:
        st.d["influence"] = json.loads(args.influence_from.read_text())["influence"]
        st.d["influence_from"] = str(args.influence_from)
        st.save()
    supernet, tok = load_supernet(args.supernet)
    part_a(args, st, supernet, tok)
    print(table_a(st), flush=True)
    if not args.no_search:
        print(json.dumps(part_b(args, st, supernet), indent=1), flush=True)


if __name__ == "__main__":
    main()
