"""Smaller *and faster* where users deploy: front members in llama.cpp (GGUF) against the base.

    python bench/bench_deploy.py --out runs/bench_deploy

1. A LINAS search of accuracy vs parameters on the ordered default model (ARC-Easy validation, a seeded
   100-question subset, 30 evaluations), unless ``--run`` names an existing run.
2. The base and the most accurate front member within 90/80/70% of the parameters, each exported to GGUF
   F16, Q8_0 and Q4_0: file bytes, llama.cpp prefill and decode tokens/s (batch 1, 128-token prompt,
   32 decoded tokens, median of 5 after a warm-up, fresh process), ARC-Easy accuracy on all 570
   validation questions through llama.cpp's logits (``evaluate_gguf``); and the HF eager float32 speed
   of the same sub-network (``measure``) as the peer.
3. Realized speedup per parameter reduction: (decode tok/s / base's) / (base params / params).
Each finished row is kept in ``OUT/rows.json``; a re-run continues with the missing ones.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from llamanas.deploy.gguf import export_subnet_gguf  # noqa: E402
from llamanas.deploy.llamacpp import evaluate_gguf, time_gguf  # noqa: E402
from llamanas.evaluation.measure import measure  # noqa: E402
from llamanas.evaluation.questions import Questions
from llamanas.search.args import SearchArgs  # noqa: E402
from llamanas.search.run import load_run, search  # noqa: E402
from llamanas.supernet.elastic import load_supernet  # noqa: E402
from llamanas.supernet.subnet import SubnetConfig  # noqa: E402

TYPES = ("f16", "q8_0", "q4_0")


def members(run_dir: Path, supernet, sizes) -> dict[str, SubnetConfig]:
    view = load_run(run_dir)
    full = supernet.num_params()
    out = {"base": SubnetConfig.full(supernet.arch)}
    for s in sizes:
        fit = [m for m in view.front if m.config.num_params(supernet.arch) <= s * full]
        if fit:
            out[f"{round(s * 100)}%"] = max(fit, key=lambda m: m.values["accuracy"]).config
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_deploy"))
    ap.add_argument("--run", type=Path, default=None, help="an existing accuracy-vs-params run")
    ap.add_argument("--sizes", default="0.9,0.8,0.7")
    ap.add_argument("--limit", type=int, default=None, help="ARC-Easy questions for GGUF accuracy (all 570)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run or args.out / "search_params"
    if args.run is None:
        search(
            SearchArgs(
                model="default", tasks=("arc_easy",), objectives=("accuracy", "params"), algorithm="linas",
                evaluations=30, population=8, limit=100, inner_generations=300, out=str(run_dir),
                warm_start=(), space="full",  # measured cold in the full space, before those defaults
            )
        )  # fmt: skip
    supernet, tok = load_supernet("default")
    rows_path = args.out / "rows.json"
    rows = json.loads(rows_path.read_text()) if rows_path.is_file() else {}
    base_params = supernet.num_params()
    chosen = members(run_dir, supernet, [float(s) for s in args.sizes.split(",")])
    # Timings first, all in a row on a quiet machine; the accuracies (long, not timed) afterwards.
    for name, cfg in chosen.items():
        params = cfg.num_params(supernet.arch)
        key = f"{name} hf"
        if key not in rows:
            m = measure(supernet, cfg, prefill_tokens=128, gen_tokens=32, repeats=5)
            rows[key] = {"member": name, "runtime": "hf fp32", "params": params, "config": cfg.to_dict(),
                         "prefill_tok_s": 128 / (m.latency_ms / 1000), "decode_tok_s": m.throughput_tok_s}  # fmt: skip
            rows_path.write_text(json.dumps(rows, indent=2))
        for type_ in TYPES:
            key = f"{name} {type_}"
            if key in rows:
                continue
            path = args.out / f"{name.rstrip('%')}-{type_}.gguf"
            if not path.is_file():
                export_subnet_gguf(supernet, cfg, "default", path, type=type_)
            t = time_gguf(path, prompt_tokens=128, decode_tokens=32, repeats=5, threads=args.threads)
            rows[key] = {"member": name, "runtime": f"llama.cpp {type_}", "params": params, "config": cfg.to_dict(),
                         "file_bytes": t.file_bytes, "prefill_tok_s": t.prefill_tokens_per_s,
                         "decode_tok_s": t.decode_tokens_per_s, "peak_rss_bytes": t.peak_rss_bytes}  # fmt: skip
            rows_path.write_text(json.dumps(rows, indent=2))
            print(key, f"decode {t.decode_tokens_per_s:.1f} tok/s", flush=True)
    for name in chosen:
        for type_ in TYPES:
            r = rows[f"{name} {type_}"]
            if "acc" in r:
                continue
            path = args.out / f"{name.rstrip('%')}-{type_}.gguf"
            res = evaluate_gguf(
                path,
                ["arc_easy"],
                questions=Questions(split="validation", limit=args.limit),
                n_threads=args.threads,
                progress=False,
            )["arc_easy"]
            r.update(acc=res.metrics["acc"], acc_stderr=res.stderr["acc"], n=res.n)
            rows_path.write_text(json.dumps(rows, indent=2))
            print(name, type_, f"ARC-Easy {res.metrics['acc']:.3f}", flush=True)
    print("| member | runtime | params | file MiB | ARC-Easy acc (570) | prefill tok/s | decode tok/s | "
          "decode speedup | params ratio | speedup / params ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        base = rows[f"base {r['runtime'].split()[-1]}" if r["runtime"] != "hf fp32" else "base hf"]
        speedup = r["decode_tok_s"] / base["decode_tok_s"]
        ratio = base_params / r["params"]
        acc = f"{r['acc']:.3f} ± {r['acc_stderr']:.3f}" if "acc" in r else ""
        mib = f"{r['file_bytes'] / 2**20:.0f}" if "file_bytes" in r else ""
        print(f"| {r['member']} | {r['runtime']} | {r['params'] / 1e6:.1f}M | {mib} | {acc} | "
              f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | {speedup:.2f}x | {ratio:.2f}x | {speedup / ratio:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
