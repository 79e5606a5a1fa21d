"""How well the cheap proxy (``evaluation.proxy``: KL from the full network on a few calibration windows)
ranks sub-networks by real accuracy, and what it costs next to a real evaluation (a benchmark, not a test).

    python bench/bench_proxy.py --configs 150 --limit 200 --out runs/bench_proxy

Setup: the default model, rms-ordered, in compress's width-only space (bench/instatune_space.yaml: every
layer kept, MLP 50/75/100%, 2-3 of 3 KV groups). Sub-networks are drawn across sizes (per config a bias
q ~ U(0, 1); each gene takes its larger choices with probability rising with q), each scored for real on
``--limit`` seeded ARC-Easy validation questions (acc, acc_norm, gold NLL) and by the proxy on 2 and 8
windows of 128 tokens. Reported: Kendall tau of each proxy (and of the parameter count, the free proxy)
against accuracy over all configs and within a narrow size band (75-85% of the parameters, where the
ranking matters); the predictors' out-of-fold tau with and without the proxy as an input feature; seconds
per real evaluation and per proxy. Rows go to OUT/rows.jsonl as they finish: re-running resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold

from llamanas.evaluation.evaluate import model_max_length, prepare, score
from llamanas.evaluation.proxy import KLProxy
from llamanas.evaluation.questions import Questions
from llamanas.search.counts import Counts
from llamanas.search.predictors import Encoder, Predictor, kendall_tau
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.slicing import subnet_model
from llamanas.supernet.space import SearchSpace

WINDOWS = (2, 8)
BAND = (0.75, 0.85)


def sample_configs(space: SearchSpace, n: int, seed: int) -> list:
    """n distinct configs spread over sizes: per config a bias q; each gene picks choice j of k with
    binomial(k - 1, q) probability (q near 1: the largest choices)."""
    lo, hi = space.bounds()
    rng = np.random.default_rng(seed)
    out, keys = [], set()
    while len(out) < n:
        q = rng.uniform()
        x = np.array([rng.binomial(int(b - a), q) + a for a, b in zip(lo, hi, strict=True)])
        cfg = space.decode(space.repair(x[None])[0])
        if cfg.key() not in keys:
            keys.add(cfg.key())
            out.append(cfg)
    return out


def oof_tau(space: SearchSpace, rows: list[dict], extra: str | None, target: str = "acc") -> float:
    """Out-of-fold Kendall tau of the LINAS predictor (ridge/SVR/GBR, auto) on these rows, 5 folds."""
    enc = Encoder(space)
    X = enc(np.array([r["x"] for r in rows]))
    if extra:
        X = np.column_stack([X, [r[extra] for r in rows]])
    y = np.array([r[target] for r in rows])
    pred = np.zeros(len(y))
    for tr, te in KFold(5, shuffle=True, random_state=0).split(X):
        pred[te] = Predictor("auto", seed=0).fit(X[tr], y[tr]).predict(X[te])
    return kendall_tau(list(y), list(pred))


def summarise(space: SearchSpace, rows: list[dict]) -> dict:
    full = max(r["params"] for r in rows)
    band = [r for r in rows if BAND[0] <= r["params_frac"] <= BAND[1]]
    out: dict = {"n": len(rows), "n_band": len(band), "band": BAND, "tau": {}, "tau_band": {}}
    for name, rs in (("tau", rows), ("tau_band", band)):
        for target in ("acc", "gold_nll"):
            sign = 1 if target == "acc" else -1  # higher proxy = worse: tau against -acc, +nll
            for key in [f"kl@{w}" for w in WINDOWS] + [f"calib_nll@{w}" for w in WINDOWS] + ["params"]:
                s = -sign if key != "params" else sign
                out[name][f"{key} vs {target}"] = kendall_tau(
                    [r[target] for r in rs], [s * r[key] for r in rs]
                )
    out["oof_tau_acc"] = {
        "features": oof_tau(space, rows, None),
        f"features + kl@{WINDOWS[0]}": oof_tau(space, rows, f"kl@{WINDOWS[0]}"),
        f"features + kl@{WINDOWS[-1]}": oof_tau(space, rows, f"kl@{WINDOWS[-1]}"),
    }
    out["seconds"] = {
        "real": float(np.median([r["seconds_real"] for r in rows])),
        **{f"proxy@{w}": float(np.median([r[f"seconds_proxy@{w}"] for r in rows])) for w in WINDOWS},
    }
    out["acc_range"] = [min(r["acc"] for r in rows), max(r["acc"] for r in rows)]
    out["params_range"] = [min(r["params"] for r in rows) / full, 1.0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--space", default="bench/instatune_space.yaml")
    ap.add_argument("--configs", type=int, default=150)
    ap.add_argument(
        "--limit", type=int, default=200, help="ARC-Easy validation questions per real evaluation"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_proxy"))
    a = ap.parse_args()
    torch.manual_seed(0)
    a.out.mkdir(parents=True, exist_ok=True)
    supernet, tok = load_supernet(a.model, dtype="float32", device="cpu")
    space = SearchSpace.from_file(a.space, supernet.arch)
    supernet.space = space
    counts = Counts(space)
    prepared = prepare(
        tok,
        ["arc_easy"],
        Questions(split="validation", limit=a.limit, seed=0),
        max_length=model_max_length(supernet.model, tok),
    )
    proxies = {w: KLProxy.from_text(supernet, tok, w) for w in WINDOWS}
    path = a.out / "rows.jsonl"
    done = {json.loads(line)["key"]: json.loads(line) for line in path.open()} if path.exists() else {}
    cfgs = sample_configs(space, a.configs, a.seed)
    full_params = counts.of(space.largest())["params"]
    t0, computed = time.time(), 0
    todo = sum(1 for c in cfgs if c.key() not in done)
    with path.open("a") as f:
        for cfg in cfgs:
            if cfg.key() in done:
                continue
            row: dict = {"key": cfg.key(), "x": space.encode(cfg).tolist(), **counts.of(cfg)}
            row["params_frac"] = row["params"] / full_params
            t = time.perf_counter()
            with subnet_model(supernet, cfg) as model:
                r = score(model, prepared)["arc_easy"]
            row["seconds_real"] = time.perf_counter() - t
            row.update({k: float(v) for k, v in r.metrics.items()})
            for w, p in proxies.items():
                t = time.perf_counter()
                v = p(cfg)
                row[f"seconds_proxy@{w}"] = time.perf_counter() - t
                row.update({f"{k}@{w}": float(x) for k, x in v.items()})
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[cfg.key()] = row
            computed += 1
            eta = (time.time() - t0) / computed * (todo - computed)
            print(
                f"{len(done)}/{len(cfgs)} params {row['params_frac']:.3f} acc {row['acc']:.3f} "
                f"kl@2 {row['kl@2']:.4f} kl@8 {row['kl@8']:.4f} real {row['seconds_real']:.1f}s "
                f"proxy@2 {row['seconds_proxy@2']:.2f}s ETA {eta / 60:.0f} min",
                flush=True,
            )
    rows = [done[c.key()] for c in cfgs]
    summary = summarise(space, rows)
    summary["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    summary["date"] = time.strftime("%Y-%m-%d")
    summary["command"] = "python bench/bench_proxy.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
    )
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
