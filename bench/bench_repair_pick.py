"""Repair or not, chosen on validation: compress's picked sub-network sliced against the same sub-network
extracted with least-squares repair (``OUT/model`` of a run made when the recipe repaired), paired, on
ARC-Easy validation (all 570 questions: where recipe choices are made) and PIQA validation (400 seeded).

    python bench/bench_repair_pick.py --run runs/compress-0.8
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
from bench_recovery import evaluate_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a compress folder whose model/ was repaired")
    a = ap.parse_args()
    stages = json.loads((a.run / "compress.json").read_text())["stages"]
    if not stages["plan"]["recipe"]["repair"]:
        raise SystemExit(f"{a.run}/model was not repaired: nothing to compare.")
    pick = SubnetConfig.from_dict(stages["pick"]["config"])
    qs = {"arc_easy": Questions(split="validation"), "piqa": Questions(split="validation", limit=400)}
    repaired, tok = load_model(str(a.run / "model"), dtype="float32", device="cpu")
    n = model_max_length(repaired, tok)
    prepared = {t: prepare(tok, [t], q, max_length=n) for t, q in qs.items()}
    with torch.no_grad():
        rep = evaluate_model(repaired, prepared)
    del repaired
    supernet, _ = load_supernet("default", dtype="float32", device="cpu")
    with torch.no_grad(), supernet.subnet(pick):
        sliced = evaluate_model(supernet.model, prepared)
    print("| task (validation) | n | sliced | repaired | repaired - sliced |")
    print("|---|---|---|---|---|")
    for t in qs:
        d = "{:+.1f} ± {:.1f}".format(*paired(sliced[t]["correct"], rep[t]["correct"]))
        print(f"| {t} | {len(rep[t]['correct'])} | {sliced[t]['acc']:.3f} | {rep[t]['acc']:.3f} | {d} |")


if __name__ == "__main__":
    main()
