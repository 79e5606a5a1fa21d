"""A narrower residual stream on the default model: how it compares with MLP/KV width at the same size, and
whether the kept RMSNorm weights should be rescaled.

    OMP_NUM_THREADS=2 python bench/bench_hidden.py --out runs/bench_hidden.json

The model is ordered as every command orders it (rms channel importance) and its residual stream by
``importance.order_residual`` (the mean magnitude of every RMSNorm's output). Rows, at about 90% and 80% of
the parameters:

* ``hidden``: every layer at full MLP and KV width, the residual stream cut to the first H channels (rounded
  to a multiple of 64), each RMSNorm normalising over the channels it keeps;
* ``hidden, rescaled``: the same with the kept norm weights times sqrt(full / H), i.e. the normalisation the
  full width would give if the cut channels were zero;
* ``uniform width``: every MLP cut to the same size, as ``llamanas baselines --methods width`` (the nearest
  multiple of 64 not above the size), for a size-matched comparison.

The rescaling is chosen on ``--val-limit`` ARC-Easy validation questions; every row is reported on
``--test-limit`` seeded ARC-Easy test questions (paired differences against ``uniform width``). Scores are
cached in ``--out``. With ``--timing-rounds N`` the first size's hidden and uniform-width sub-networks are also
exported as F16 GGUF (Q8_0 would keep odd MLP widths in F16) and timed in llama.cpp alternately, N rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from llamanas.deploy.gguf import export_subnet_gguf
from llamanas.evaluation.evaluate import model_max_length, prepare
from llamanas.evaluation.questions import Questions
from llamanas.evidence.baselines import uniform_width
from llamanas.pipeline.timing import time_abab
from llamanas.supernet import elastic
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.space_file import round_size
from llamanas.supernet.subnet import SubnetConfig

sys.path.insert(0, str(Path(__file__).parent))
from bench_instatune import paired  # noqa: E402
from bench_recovery import evaluate_model  # noqa: E402

PLAIN = elastic._narrow_norm_forward


def rescaled_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The narrow RMSNorm with its kept weights times sqrt(full / kept): as if the cut channels were zero."""
    return PLAIN(self, x) * (self.weight.shape[0] / x.shape[-1]) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", default="0.9,0.8")
    ap.add_argument("--val-limit", type=int, default=300)
    ap.add_argument("--test-limit", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-rounds", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_hidden.json"))
    a = ap.parse_args()
    scores = json.loads(a.out.read_text()) if a.out.is_file() else {}
    supernet, tok = load_supernet("default", dtype="float32", device="cpu", residual=True)
    arch = supernet.arch
    full = SubnetConfig.full(arch)
    n = model_max_length(supernet.model, tok)
    sets = {
        "val": {"arc_easy": prepare(tok, ["arc_easy"], Questions(split="validation", limit=a.val_limit, seed=a.seed), max_length=n)},
        "test": {"arc_easy": prepare(tok, ["arc_easy"], Questions(split="test", limit=a.test_limit, seed=a.seed), max_length=n)},
    }  # fmt: skip
    plain = PLAIN

    def score(label: str, cfg: SubnetConfig, rescale: bool) -> dict:
        for split, prepared in sets.items():
            key = f"{split}/{label}"
            if key in scores:
                continue
            elastic._narrow_norm_forward = rescaled_forward if rescale else plain
            elastic._switched_class.cache_clear()
            try:
                with torch.no_grad(), supernet.subnet(cfg):
                    scores[key] = evaluate_model(supernet.model, prepared)["arc_easy"]
            finally:
                elastic._narrow_norm_forward = plain
                elastic._switched_class.cache_clear()
            scores[key]["params"] = cfg.num_params(arch)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(scores))
            print(
                f"{key}: {scores[key]['acc']:.3f} ({scores[key]['params'] / full.num_params(arch):.1%})",
                flush=True,
            )
        return {s: scores[f"{s}/{label}"] for s in sets}

    rows = {"base": score("base", full, False)}
    for f in (float(x) for x in a.fractions.split(",")):
        h = round_size(f, arch.hidden_size)
        narrow = SubnetConfig(full.layers, full.mlp, full.kv_groups, hidden=h)
        target = narrow.num_params(arch) / full.num_params(arch)
        rows[f"{f}/hidden"] = score(f"hidden{h}", narrow, False)
        rows[f"{f}/hidden, rescaled"] = score(f"hidden{h}-rescaled", narrow, True)
        rows[f"{f}/uniform width"] = score(f"width{target:.3f}", uniform_width(arch, target), False)

    if a.timing_rounds:
        f = float(a.fractions.split(",")[0])
        h = round_size(f, arch.hidden_size)
        narrow = SubnetConfig(full.layers, full.mlp, full.kv_groups, hidden=h)
        width = uniform_width(arch, narrow.num_params(arch) / full.num_params(arch))
        with tempfile.TemporaryDirectory() as tmp:
            paths = {k: Path(tmp) / f"{k}.gguf" for k in ("width", "hidden")}
            for k, cfg in (("width", width), ("hidden", narrow)):
                export_subnet_gguf(supernet, cfg, "default", paths[k], type="f16")
            t = time_abab(paths["width"], paths["hidden"], a.timing_rounds, print)
        scores[f"timing/{f}"] = t
        a.out.write_text(json.dumps(scores))
        d, p = t["decode_tokens_per_s"], t["prefill_tokens_per_s"]
        print(f"llama.cpp F16, hidden {h} vs uniform width: decode {d['compressed']:.1f} vs {d['base']:.1f} tok/s "
              f"({d['ratio']:.2f}x, rounds {d['ratio_range'][0]:.2f}-{d['ratio_range'][1]:.2f}); prefill "
              f"{p['ratio']:.2f}x; load {t['load_average']}")  # fmt: skip

    print("\n| size | row | params | ARC-Easy val | ARC-Easy test | Δ test vs uniform width |")
    print("|---|---|---|---|---|---|")
    total = full.num_params(arch)
    for label, r in rows.items():
        size, _, name = label.partition("/")
        peer = rows.get(f"{size}/uniform width")
        d = (
            ""
            if peer is None or name == "uniform width"
            else "{:+.1f} ± {:.1f}".format(*paired(peer["test"]["correct"], r["test"]["correct"]))
        )
        print(f"| {size} | {name or 'base'} | {r['test']['params'] / total:.1%} | {r['val']['acc']:.3f} | "
              f"{r['test']['acc']:.3f} ± {r['test']['stderr']:.3f} | {d} |")  # fmt: skip


if __name__ == "__main__":
    main()
