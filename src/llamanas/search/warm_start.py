"""Warm start: importance-guided sub-networks in the search's first population.

A random first population spends most of a small budget far from the front. Two signals the super-network
already has pick better seeds, at the cost of a few calibration passes (seconds to minutes on the CPU):

- ``sensitivity``: per-layer widths allocated by the calibration loss increase of each (layer, width)
  (``supernet.sensitivity``) at 90/80/70/60/50% of the parameters;
- ``attention``: the widest sub-network with the 1/8, 1/4, 3/8, 1/2 least influential attention blocks
  skipped (``supernet.blocks``; needs a space that lets attention be skipped).

The seeds follow the largest and smallest sub-networks in the first population, taking the methods in turn,
and replace random members (the population size is unchanged). They are computed once by the evaluator (it
holds the model) and saved in the run folder, so a resumed run replays the same first population.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llamanas.errors import LlamanasError, unknown
from llamanas.supernet.blocks import attention_configs, skippable_attention
from llamanas.supernet.importance import calibration_batches, calibration_texts
from llamanas.supernet.sensitivity import sensitivity_configs
from llamanas.supernet.subnet import SubnetConfig

# ``--warm-start NAME``: (super-network, calibration batches) -> configs. The names are this table's keys.
MAKERS: dict[str, Callable[..., list[SubnetConfig]]] = {
    "sensitivity": sensitivity_configs,
    "attention": attention_configs,
}
WARM_STARTS = tuple(MAKERS)
# ``search``'s default: on the default model the sensitivity seeds gave the best front per evaluation of every
# variant measured (docs/benchmarks.md, "LINAS with warm starts and multi-fidelity": mean validation
# hypervolume 0.312 against 0.239 cold at 48 evaluations, 3 seeds), for one calibration pass per (layer,
# width choice). ``attention`` needs a space that skips attention blocks; ``--warm-start none`` starts cold.
DEFAULT_WARM_START = ("sensitivity",)
WARM_START_WINDOWS = 16  # calibration windows: seeds need a ranking, not a precise loss
WARM_START_FILE = "warm_start.json"


def check_warm_start(names: Sequence[str]) -> None:
    for n in names:
        if n not in WARM_STARTS:
            raise unknown("warm start", n, WARM_STARTS)
    if len(set(names)) != len(names):
        raise LlamanasError(f"--warm-start names a method twice: {list(names)}.")


def warm_start_configs(
    supernet,
    tokenizer,
    names: Sequence[str],
    calibration: str | None = None,
    num_samples: int = WARM_START_WINDOWS,
) -> dict:
    """``{method: [config dict, ...]}`` for each named method, on ``num_samples`` windows of 128 tokens of the
    calibration text ordering uses (seeds need a ranking, not a precise loss: sensitivity costs one
    calibration pass per (layer, width choice), about 90 passes on the default model's width-only space)."""
    check_warm_start(names)
    if "attention" in names and not skippable_attention(supernet.space):  # before any calibration pass
        raise LlamanasError(
            "--warm-start attention skips attention blocks, and this search space skips none: use --space full "
            "or allow skip_attention in the space file."
        )
    device = next(supernet.model.parameters()).device
    batches = [
        b.to(device) for b in calibration_batches(tokenizer, calibration_texts(calibration), num_samples)
    ]
    return {n: [c.to_dict() for c in MAKERS[n](supernet, batches)] for n in names}


def interleave(seeds: dict[str, list[dict]]) -> list[SubnetConfig]:
    """The methods' configs taken in turn (first of each, then second of each, ...), duplicates once."""
    lists = [[SubnetConfig.from_dict(d) for d in v] for v in seeds.values()]
    out: list[SubnetConfig] = []
    for i in range(max((len(v) for v in lists), default=0)):
        for v in lists:
            if i < len(v) and v[i] not in out:
                out.append(v[i])
    return out
