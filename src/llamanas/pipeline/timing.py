"""Base and compressed model timed in llama.cpp alternately, so that a busy machine slows both alike, with
the spread between rounds that says whether the machine was too busy to trust."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from llamanas.deploy.llamacpp import available as llamacpp_available
from llamanas.deploy.llamacpp import time_gguf


def time_abab(base: Path, small: Path, rounds: int, say) -> dict:
    """Batch-1 llama.cpp speeds of both files, timed alternately so a busy machine slows both alike.

    Each round times base then compressed (3 repeats each, in fresh processes); the speed-up is the median
    of the per-round ratios, and the spread of those ratios says whether the machine was too busy to trust."""
    if rounds == 0 or not llamacpp_available():
        why = "--timing-rounds 0" if rounds == 0 else "the llama.cpp binding is not installed"
        say(f"  timing skipped: {why}")
        return {"skipped": why}
    runs: dict[str, list[dict]] = {"base": [], "compressed": []}
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        for name, path in (("base", base), ("compressed", small)):
            runs[name].append(time_gguf(path, repeats=3).to_dict())
        load.append(os.getloadavg()[0])
        b, c = runs["base"][-1], runs["compressed"][-1]
        say(
            f"  round {r + 1}/{rounds}: decode {b['decode_tokens_per_s']:.1f} -> {c['decode_tokens_per_s']:.1f} tok/s"
        )
    out: dict = {"rounds": rounds, "load_average": [round(x, 2) for x in load], "cpus": os.cpu_count()}
    for key in ("decode_tokens_per_s", "prefill_tokens_per_s"):
        ratios = [c[key] / b[key] for b, c in zip(runs["base"], runs["compressed"], strict=True)]
        med = statistics.median(ratios)
        out[key] = {
            "base": statistics.median(x[key] for x in runs["base"]),
            "compressed": statistics.median(x[key] for x in runs["compressed"]),
            "ratio": med,
            "ratio_range": [min(ratios), max(ratios)],
            "spread": (max(ratios) - min(ratios)) / med,
        }
    out["peak_rss_bytes"] = {k: max(x["peak_rss_bytes"] for x in v) for k, v in runs.items()}
    out["trusted"] = (
        max(out[k]["spread"] for k in ("decode_tokens_per_s", "prefill_tokens_per_s")) <= SPREAD_MAX
    )
    return out


SPREAD_MAX = 0.15  # ratio spread between rounds above which a timing is reported as untrustworthy
