"""`llamanas compress` on held-out questions, paired against the hand-made recipes of the recovery grid.

    python bench/bench_compress.py --runs runs/compress-0.9 runs/compress-0.8 runs/compress-0.7 \
        --grid runs/recovery_test/results.json --out runs/bench_compress.json

Each compress folder's extracted checkpoint (``OUT/model``, loaded as a user would) is scored on the grid's
questions (``bench_recovery.py --split test``: ARC-Easy test, PIQA validation, seeded subsets; read from the
grid's settings), none of which the search selected on (it selects on ARC-Easy validation). The table gives
accuracy ± standard error and the paired difference, in points, against every grid cell of the target
size (sliced, least-squares repair, sensitivity allocation) and the base model. A second table copies each
run's stage wall times and llama.cpp timings from ``OUT/compress.json``. Scores are kept in ``--out`` (a
re-run skips scored runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from llamanas.evaluation.evaluate import model_max_length, prepare
from llamanas.evaluation.questions import Questions
from llamanas.model.load import load_model
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.subnet import SubnetConfig

sys.path.insert(0, str(Path(__file__).parent))
from bench_instatune import paired  # noqa: E402
from bench_recovery import TASKS, evaluate_model  # noqa: E402


def questions(settings: dict) -> dict[str, Questions]:
    return {
        "arc_easy": Questions(
            split=settings.get("split", "validation"), limit=settings["limit"], seed=settings["seed"]
        ),
        "piqa": Questions(split="validation", limit=settings["piqa_limit"], seed=settings["seed"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", type=Path, required=True, help="compress output folders")
    ap.add_argument("--grid", type=Path, required=True, help="results.json of bench_recovery.py --split test")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_compress.json"))
    ap.add_argument(
        "--sliced",
        action="store_true",
        help="Also score each run's picked sub-network sliced from the rms-ordered super-network (no repair), "
        "as row RUN/sliced.",
    )
    a = ap.parse_args()
    grid = json.loads(a.grid.read_text())
    qs = questions(grid["settings"])
    scores = json.loads(a.out.read_text()) if a.out.is_file() else {}
    prepared = None
    for run in a.runs:
        if str(run) in scores:
            continue
        model, tok = load_model(str(run / "model"), dtype="float32", device="cpu")
        if prepared is None:
            n = model_max_length(model, tok)
            prepared = {t: prepare(tok, [t], q, max_length=n) for t, q in qs.items()}
        with torch.no_grad():
            scores[str(run)] = evaluate_model(model, prepared)
        scores[str(run)]["params"] = sum(p.numel() for p in model.parameters())
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(scores))
        del model
    for run in a.runs if a.sliced else []:
        if f"{run}/sliced" in scores:
            continue
        pick = SubnetConfig.from_dict(
            json.loads((run / "compress.json").read_text())["stages"]["pick"]["config"]
        )
        supernet, tok = load_supernet("default", dtype="float32", device="cpu")
        if prepared is None:
            n = model_max_length(supernet.model, tok)
            prepared = {t: prepare(tok, [t], q, max_length=n) for t, q in qs.items()}
        with torch.no_grad(), supernet.subnet(pick):
            scores[f"{run}/sliced"] = evaluate_model(supernet.model, prepared)
        scores[f"{run}/sliced"]["params"] = pick.num_params(supernet.arch)
        a.out.write_text(json.dumps(scores))
    rows = [Path(k) for k in scores if any(k in (str(r), f"{r}/sliced") for r in a.runs)]
    cells = grid["cells"]
    base = cells["rms/none/1.00"]
    q = grid["settings"]
    print(
        f"\nARC-Easy {q.get('split', 'validation')} ({q['limit']} seeded questions), PIQA validation "
        f"({q['piqa_limit']}): acc ± stderr; Δ = compress minus the row, points ± paired stderr\n"
    )
    print("| compress run | params | vs | row params | ARC-Easy | Δ ARC | PIQA | Δ PIQA |")
    print("|---|---|---|---|---|---|---|---|")
    for run in rows:
        s = scores[str(run)]
        frac = s["params"] / base["params"]
        # Paired against the size the user asked for (compress.json's target fraction), not the size the pick
        # happened to have: a 90% target answered with an 80% model is compared with the 90% recipes.
        folder = run.parent if run.name == "sliced" else run
        target = json.loads((folder / "compress.json").read_text()).get("args", {}).get("target")
        try:
            frac_asked = float(target)
        except (TypeError, ValueError):
            frac_asked = frac
        size = min(
            {float(k.rsplit("/", 1)[1]) for k in cells if not k.endswith("/1.00")},
            key=lambda x: abs(x - frac_asked),
        )
        peers = {k: c for k, c in cells.items() if k.endswith(f"/{size:.2f}")}
        own = " | ".join(f"{s[t]['acc']:.3f} ± {s[t]['stderr']:.3f}" for t in TASKS)
        print(
            f"| {run.parent.name + '/' if run.name == 'sliced' else ''}{run.name} | {s['params'] / 1e6:.1f}M ({frac:.1%}) | (itself) | | {own.replace(' | ', ' | | ')} | |"
        )
        for name, c in {"base": base, **peers}.items():
            d = [("{:+.1f} ± {:.1f}".format(*paired(c[t]["correct"], s[t]["correct"]))) for t in TASKS]
            acc = [f"{c[t]['acc']:.3f}" for t in TASKS]
            print(f"| | | {name} | {c['frac']:.1%} | {acc[0]} | {d[0]} | {acc[1]} | {d[1]} |")
    print(
        "\n| compress run | card: ARC-Easy test (base → compressed) | decode tok/s (ratio, rounds) | stage wall s |"
    )
    print("|---|---|---|---|")
    for run in a.runs:
        st = json.loads((run / "compress.json").read_text())["stages"]
        ev = st["evaluate"]["results"]
        card = f"{ev['base']['arc_easy']['metrics']['acc']:.3f} → {ev['compressed']['arc_easy']['metrics']['acc']:.3f}"
        t = st["time"]
        speed = (
            t.get("skipped")
            or f"{t['decode_tokens_per_s']['base']:.1f} → {t['decode_tokens_per_s']['compressed']:.1f} "
            f"({t['decode_tokens_per_s']['ratio']:.2f}x, {t['decode_tokens_per_s']['ratio_range'][0]:.2f}-"
            f"{t['decode_tokens_per_s']['ratio_range'][1]:.2f}x)"
        )
        walls = ", ".join(f"{k} {v['seconds']:.0f}" for k, v in st.items() if "seconds" in v)
        print(f"| {run.name} | {card} | {speed} | {walls} |")


if __name__ == "__main__":
    main()
