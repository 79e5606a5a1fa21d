"""Cost of switching sub-networks on the default model's super-network (no weight copies).

    python bench/bench_switch.py

Compares activating a sub-network in place with the alternative of building it as a standalone model
(what a copy-based super-network would do per switch).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from llamanas.model.load import load_model
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.slicing import standalone


def main() -> None:
    model, _ = load_model("default")
    supernet = SuperNet(model)
    rng = np.random.default_rng(0)
    configs = [supernet.space.sample(rng) for _ in range(200)]
    times = []
    for cfg in configs:
        t = time.perf_counter()
        supernet.activate(cfg)
        times.append(time.perf_counter() - t)
    supernet.reset()
    copy_times = []
    for cfg in configs[:5]:
        t = time.perf_counter()
        standalone(supernet, cfg)
        copy_times.append(time.perf_counter() - t)
    a, b = statistics.median(times), statistics.median(copy_times)
    print(
        f"activate in place: median {a * 1e6:.0f} us, max {max(times) * 1e6:.0f} us over {len(times)} configs"
    )
    print(f"build a standalone copy: median {b * 1e3:.0f} ms over {len(copy_times)} configs")
    print(f"ratio: {b / a:,.0f}x")


if __name__ == "__main__":
    main()
