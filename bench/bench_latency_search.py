"""Does searching on llama.cpp speed find a different front than searching on parameters?

    python bench/bench_latency_search.py --out runs/bench_deploy

1. The accuracy-vs-params LINAS run of ``bench_deploy.py`` (``OUT/search_params``; made here if absent).
2. The same search (ARC-Easy validation, seeded 100-question subset, 30 evaluations, population 8, seed 0,
   the space of step 1: ``space_no_blocks.yaml``) on accuracy vs llama.cpp decode throughput (``--runtime llamacpp``): 40 sub-networks are exported to
   F16 GGUF and timed first (32 fit the per-layer latency table, 8 held out for its MAPE / Kendall tau).
3. Both fronts timed for real in llama.cpp (``time_front``: F16, 128-token prompt, 32 decoded tokens,
   median of 5), so the two are compared on the same measured axis: hypervolume of (accuracy, measured
   decode tok/s) with one reference point, and how many of each front's members the other front dominates.
Steps already done are kept (the runs resume; ``front_llamacpp.json`` is reused) and the summary is
written to ``OUT/latency_search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402

from llamanas.deploy.speed import DEFAULT_CONFIGS, DEFAULT_HOLDOUT, build_latency_table_for, time_front  # noqa: E402
from llamanas.search.args import SearchArgs  # noqa: E402
from llamanas.search.run import search  # noqa: E402

COMMON = dict(
    model="default", tasks=("arc_easy",), algorithm="linas", evaluations=30, population=8, limit=100,
    inner_generations=300, seed=0, warm_start=(),  # measured cold, before warm starts were the default
)  # fmt: skip


SPACE = str(Path(__file__).with_name("space_no_blocks.yaml"))  # the space of the existing params run


def builder(args, space, path):
    print(f"timing {DEFAULT_CONFIGS + DEFAULT_HOLDOUT} sub-networks in llama.cpp ...", flush=True)
    return build_latency_table_for(
        args, space, path, progress=lambda i, n, cfg: print(f"  {i + 1}/{n}", flush=True)
    )


def measured_points(run_dir: Path) -> list[tuple[float, float, dict]]:
    """(accuracy on the search's subset, measured llama.cpp decode tok/s, point) of each front member."""
    d = json.loads((run_dir / "front_llamacpp.json").read_text())
    return [(p["original"]["values"]["accuracy"], p["throughput"], p) for p in d["points"]]


def dominated(p, others) -> bool:
    return any(a >= p[0] and t >= p[1] and (a > p[0] or t > p[1]) for a, t, _ in others)


def hypervolume(points, ref) -> float:
    """Area dominated in (accuracy, tok/s), both maximised, above ``ref``."""
    pts = sorted({(a, t) for a, t, _ in points if a > ref[0] and t > ref[1]}, key=lambda x: -x[1])
    area, best_a = 0.0, ref[0]
    for i, (a, t) in enumerate(pts):  # sweep by decreasing speed
        best_a = max(best_a, a)
        next_t = pts[i + 1][1] if i + 1 < len(pts) else ref[1]
        area += (best_a - ref[0]) * (t - next_t)
    return area


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_deploy"))
    args = ap.parse_args()
    runs = {"params": args.out / "search_params", "llamacpp": args.out / "search_llamacpp"}
    if not (runs["params"] / "front.json").is_file():  # made by bench_deploy.py in the same space
        search(SearchArgs(**COMMON, objectives=("accuracy", "params"), space=SPACE, out=str(runs["params"])))
    search(
        SearchArgs(**COMMON, objectives=("accuracy", "throughput"), runtime="llamacpp", space=SPACE,
                   out=str(runs["llamacpp"])),
        latency_table_builder=builder,
    )  # fmt: skip
    for name, run in runs.items():
        if not (run / "front_llamacpp.json").is_file():
            print(f"timing the {name} front in llama.cpp ...", flush=True)
            time_front(run, type="f16", prompt_tokens=128, decode_tokens=32, repeats=5, threads=2)
    pts = {name: measured_points(run) for name, run in runs.items()}
    every = [p for v in pts.values() for p in v]
    ref = (min(a for a, _, _ in every) - 0.01, min(t for _, t, _ in every) * 0.95)
    table = json.loads((runs["llamacpp"] / "latency_table.json").read_text())
    front_err = json.loads((runs["llamacpp"] / "front_llamacpp.json").read_text()).get("table_error")
    summary = {
        "reference": ref,
        "latency_table_holdout": table.get("holdout"),
        "front_table_error": front_err,
    }
    for name, other in (("params", "llamacpp"), ("llamacpp", "params")):
        mine = pts[name]
        summary[name] = {
            "front_size": len(mine),
            "hypervolume_acc_x_tok_s": hypervolume(mine, ref),
            "dominated_by_other": sum(dominated(p, pts[other]) for p in mine),
            "members": [
                {"accuracy": a, "decode_tok_s": t, "params": p["original"]["measured"].get("params")}
                for a, t, p in sorted(mine, key=lambda x: x[1])
            ],
            "decode_tok_s_range": [float(np.min([t for _, t, _ in mine])), float(np.max([t for _, t, _ in mine]))],
        }  # fmt: skip
    (args.out / "latency_search.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
