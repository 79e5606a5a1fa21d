"""The compression recipe: which measured levers ``llamanas compress`` pulls, decided once, from benchmarks.

Each rule cites the docs/benchmarks.md section it came from. The levers were found on ARC-Easy validation and
kept only where they held out on ARC-Easy test ("Recovery levers on held-out questions": 1,000 seeded test
questions, paired against the same sub-networks sliced).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.supernet.space import WIDTH_FRACTIONS, SearchSpace, width_only

# The width-only space of bench/instatune_space.yaml: every layer kept, MLPs at 50/75/100%, 2 or 3 of 3 KV
# groups (as fractions here, so it applies to any model). Dropping whole layers or attention/MLP blocks made
# every front worse on the default model: 30-evaluation fronts of the block space are dominated by the
# width-only space's (docs/benchmarks.md, "Two LINAS fronts: with and without the block genes"), and its
# most accurate members at 80/70% scored near chance on held-out questions (issue 29's table).
NARROW = WIDTH_FRACTIONS
# Least-squares repair at extraction, measured on held-out ARC-Easy test questions against the same
# sub-networks sliced: +2.7 ± 1.2 points on the uniform-width 80% sub-network, +6.6 ± 1.4 at 70%, but
# -3.7 ± 1.2 on the sensitivity-allocated 80% sub-network that compress picked (-3.0 ± 1.7 on ARC-Easy
# validation, bench/bench_repair_pick.py): the search's picks are allocated, so compress does not repair.
REPAIR = False
# Below the narrow space's smallest member (64% of the default model) the MLPs may shrink to a quarter and
# the KV groups to a third: not measured as a front, so the recipe says the target is outside the measured range.
WIDE = {"mlp": (0.25, 0.5, 0.75, 1.0), "kv": (1 / 3, 2 / 3, 1.0)}
MIN_REACHABLE = 0.05  # the share of random sub-networks that must fit the target in the narrow space


@dataclass(frozen=True)
class Recipe:
    """Every choice of a compression, recorded in ``compress.json`` and on the model card."""

    importance: str
    """Channel importance score that orders the model before slicing."""
    warm_start: tuple[str, ...]
    """Importance-guided sub-networks in the search's first population."""
    space: dict
    """The search space (space-file keys; fractions are of the model's own sizes)."""
    repair: bool
    """Least-squares repair of the kept output projections at extraction."""
    gguf_types: tuple[str, ...]
    """GGUF files written (the first is the one timed and recommended)."""
    finetune: bool
    """InstaTune before the search."""
    why: dict[str, str]
    """One line per choice: the measurement it rests on."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["warm_start"], d["gguf_types"] = list(self.warm_start), list(self.gguf_types)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        return cls(**{**d, "warm_start": tuple(d["warm_start"]), "gguf_types": tuple(d["gguf_types"])})


def smallest_fraction(arch: Arch, fractions: dict) -> float:
    """The parameter fraction of the smallest sub-network of ``width_only(arch, fractions)``."""
    space = SearchSpace.from_dict(width_only(arch, fractions), arch)
    return space.smallest().num_params(arch) / space.largest().num_params(arch)


def reachable_share(arch: Arch, fractions: dict, target: float, n: int = 400) -> float:
    """The share of random sub-networks of ``width_only(arch, fractions)`` within ``target`` of the
    parameters: the search starts from random ones, so a space where almost none fit cannot be searched
    (70% sits in the narrow space's corner on the default model: none of 3,200 random samples fit)."""
    space = SearchSpace.from_dict(width_only(arch, fractions), arch)
    full = space.largest().num_params(arch)
    rng = np.random.default_rng(0)
    return sum(space.sample(rng).num_params(arch) <= target * full for _ in range(n)) / n


def choose_recipe(target: float | None, arch: Arch) -> Recipe:
    """The recipe for a sub-network of ``arch`` with at most ``target`` of its parameters (in (0, 1)); None
    for a target on another objective (bytes, speed), which gets the wider space."""
    if target is not None and not 0 < target < 1:
        raise LlamanasError(f"--target must be a fraction of the parameters in (0, 1); got {target}.")
    floor = smallest_fraction(arch, NARROW)
    narrow = target is not None and reachable_share(arch, NARROW, target) >= MIN_REACHABLE
    return Recipe(
        importance="rms",
        warm_start=("sensitivity",),
        space=width_only(arch, NARROW if narrow else WIDE),
        repair=REPAIR,
        gguf_types=("q8_0", "f16"),
        finetune=False,
        why={
            "importance": "rms (activation RMS): the score the held-out gains of repair and sensitivity were "
            "measured with; wanda's validation lead at 80% (+2.3) is not established on held-out questions "
            "(docs/benchmarks.md, recovery without training)",
            "warm_start": "the sensitivity allocation seeds the first population: +4.4/+5.6/+7.8 ARC-Easy test "
            "points over uniform slicing at 90/80/70% (docs/benchmarks.md, recovery levers on held-out questions)",
            "space": (
                "width only (every layer kept, MLP 50-100%, 2-3 of 3 KV groups): layer and block drops made "
                "the front worse (docs/benchmarks.md, two LINAS fronts with and without block genes)"
                if narrow
                else "width only, MLP down to 25% and a third of the KV groups: "
                + (
                    f"{target:.0%} is too close to the measured space's smallest member ({floor:.0%} of this "
                    f"model) for a search that starts from random sub-networks"
                    if target is not None
                    else "the widest range for a size or speed target"
                )
                + "; not measured as a front"
            ),
            "repair": "off: least-squares repair lifts uniformly sliced sub-networks (+2.7 ± 1.2 ARC-Easy test "
            "points at 80%) but cost the sensitivity-allocated 80% sub-network compress picks 3.7 ± 1.2 points "
            "(docs/benchmarks.md, compress on held-out questions)",
            "gguf_types": "Q8_0 kept F16's ARC-Easy accuracy on the default model (0.525 both; Q4_0 0.460) at "
            "half the size (docs/benchmarks.md, front members as GGUF)",
            "finetune": "no InstaTune: it adds nothing at 80% on the best start and costs hours of CPU "
            "(docs/benchmarks.md, the best combination then the best InstaTune recipe)",
        },
    )
