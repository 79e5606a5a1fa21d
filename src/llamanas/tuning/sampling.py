"""Which sub-networks InstaTune trains, and when: the sampling schedules.

Every schedule draws from the search space, but the part of the space it draws from, or how often it
visits each size, changes over training:

- ``uniform``: every step samples the whole space uniformly (``SearchSpace.sample``).
- ``progressive``: progressive shrinking (OFA). Training is cut into ``stages``; in stage s of S only
  the largest (s+1)/S of each dimension's choices (MLP sizes, KV groups, depths) may be sampled, so
  the space of sampled sizes widens from near-full networks to the whole space.
- ``delayed``: delayed shrinking (DεpS). Only the full network trains for the first
  ``delay_fraction`` of the steps (it adapts to the data first), then the whole space is sampled.
- ``complexity``: complexity-aware sampling (ShiftNAS / QuantLLM's non-parametric scheduler). Sizes
  are grouped into buckets of decoder parameters (of decoder bytes in a space with precision genes, as
  LLM-QFA balances its resource); a running loss is kept per bucket and buckets are drawn with
  probability increasing with their loss, so steps go to the sizes that need them.

``min_params`` narrows any schedule to the sizes a user will search (say 0.75: sub-networks with at least
75% of the full network's parameters): sampled sub-networks are drawn by rejection inside that band, and
the sandwich's smallest becomes a small network at the band's floor, so no training goes to sizes that
will never be deployed.

``SizeBuckets`` also labels every sampled sub-network for the loss curves, whatever the schedule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from enum import Enum

import numpy as np

from llamanas.errors import LlamanasError, unknown
from llamanas.supernet.precision import fixed_bytes, policy_bytes
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig


class Schedule(str, Enum):
    """The sampling schedules (module docstring). Members equal their strings, which CLI, JSON and
    checkpoints use."""

    UNIFORM = "uniform"
    PROGRESSIVE = "progressive"
    DELAYED = "delayed"
    COMPLEXITY = "complexity"

    __str__ = str.__str__


SCHEDULES = tuple(s.value for s in Schedule)


class Strategy(str, Enum):
    """Which sub-networks train together (module docstring); members equal their CLI/JSON strings."""

    FULL = "full"
    ALTERNATE = "alternate"
    SANDWICH = "sandwich"

    __str__ = str.__str__


STRATEGIES = tuple(s.value for s in Strategy)


class Role(str, Enum):
    """What a sub-network trained in a step is: ``Sampler.largest``, ``.smallest`` or ``.sample``'s.
    Loss records and curves store the string."""

    LARGEST = "largest"  # the full network (the teacher when distilling)
    SMALLEST = "smallest"
    RANDOM = "random"

    __str__ = str.__str__


class SizeBuckets:
    """Buckets of decoder parameter count (in a space with precision genes: decoder bytes at each layer's
    precision, the resource LLM-QFA's scheduler balances), with edges at quantiles of uniform sampling.

    Quantile edges make every bucket equally likely under uniform sampling, so drawing inside a bucket
    by rejection takes about ``num_buckets`` tries, and no bucket is empty.
    """

    def __init__(
        self,
        space: SearchSpace,
        num_buckets: int = 4,
        seed: int = 0,
        samples: int = 1000,
        draw: Callable[[np.random.Generator], SubnetConfig] | None = None,
        smallest: Callable[[np.random.Generator], SubnetConfig] | None = None,
    ):
        """``draw(rng)`` / ``smallest(rng)``: how sub-networks are sampled and the smallest one trained
        (default: the whole space and its smallest network)."""
        if num_buckets < 1:
            raise LlamanasError(f"The number of size buckets must be >= 1; got {num_buckets}.")
        self.arch = space.arch
        self.unit = "bytes" if space.bits_choices else "params"
        self.full = self.params(space.largest())
        rng = np.random.default_rng(seed)
        draw = draw or space.sample
        sizes = np.array([self.params(draw(rng)) for _ in range(samples)])
        floor = smallest(rng) if smallest else space.smallest()
        sizes = np.concatenate([sizes, [self.params(floor), self.full]])
        inner = np.quantile(sizes, np.linspace(0, 1, num_buckets + 1)[1:-1]) if num_buckets > 1 else []
        # Small spaces can have repeated quantiles; equal edges would make empty buckets.
        self.edges = np.unique(np.asarray(inner, dtype=float))
        self.lo, self.hi = float(sizes.min()), float(sizes.max())

    def __len__(self) -> int:
        return len(self.edges) + 1

    def params(self, cfg: SubnetConfig) -> int:
        """The size a bucket holds: decoder parameters, or decoder bytes in a space with precision genes."""
        if self.unit == "bytes":
            return policy_bytes(self.arch, cfg) - fixed_bytes(self.arch, cfg.hidden)
        return cfg.num_params(self.arch, embeddings=False)

    def index(self, cfg: SubnetConfig) -> int:
        return int(np.searchsorted(self.edges, self.params(cfg), side="right"))

    def label(self, b: int) -> str:
        """E.g. ``"52-64% params"`` (of the full network's decoder parameters)."""
        bounds = [self.lo, *self.edges.tolist(), self.hi]
        return f"{bounds[b] / self.full:.0%}-{bounds[b + 1] / self.full:.0%} {self.unit}"


def restrict(space: SearchSpace, frac: float) -> SearchSpace:
    """The sub-space that keeps the largest ``frac`` of each dimension's choices (at least one)."""

    def top(choices: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(choices)[-max(1, math.ceil(frac * len(choices))) :])

    n = space.arch.num_layers
    changes: dict = {
        "mlp_choices": tuple(top(c) for c in space.mlp_choices),
        "kv_choices": tuple(top(c) for c in space.kv_choices),
    }
    if space.mode == "first_n":
        changes["depth_choices"] = top(space.depth_choices)
        changes["min_depth"] = min(changes["depth_choices"])
    else:
        changes["min_depth"] = n - math.ceil(frac * (n - space.min_depth))
    return dataclasses.replace(space, **changes)


class Sampler:
    """Draws the sub-networks of each training step under a schedule; its state is checkpointed.

    ``step`` arguments are 0-based optimizer steps out of ``total_steps``. ``update`` feeds back the
    training loss of a sampled sub-network (only ``complexity`` uses it). All randomness comes from one
    seeded generator, so the same seed and losses give the same sub-networks.
    """

    def __init__(
        self,
        space: SearchSpace,
        schedule: str = "uniform",
        total_steps: int = 1,
        seed: int = 0,
        num_buckets: int = 4,
        delay_fraction: float = 0.3,
        stages: int = 4,
        complexity_power: float = 2.0,
        complexity_floor: float = 0.1,
        ema: float = 0.9,
        min_params: float = 0.0,
    ):
        if schedule not in SCHEDULES:
            raise unknown("schedule", schedule, SCHEDULES)
        if not 0.0 <= delay_fraction < 1.0:
            raise LlamanasError(f"delay_fraction must lie in [0, 1); got {delay_fraction}.")
        if stages < 1:
            raise LlamanasError(f"progressive stages must be >= 1; got {stages}.")
        if not 0.0 <= complexity_floor <= 1.0:
            raise LlamanasError(f"complexity_floor must lie in [0, 1]; got {complexity_floor}.")
        if not 0.0 <= min_params < 1.0:
            raise LlamanasError(
                f"min_params must lie in [0, 1) (a fraction of the full network's parameters); got {min_params}."
            )
        self.space = space
        self.schedule = Schedule(schedule)
        self.min_params = min_params
        self._full_params = space.largest().num_params(space.arch)
        if min_params > 0:
            self._check_band(space)
        self.total_steps = max(1, total_steps)
        self.delay_fraction = delay_fraction
        self.stages = stages
        self.power = complexity_power
        self.floor = complexity_floor
        self.ema = ema
        banded = min_params > 0
        self.buckets = SizeBuckets(
            space,
            num_buckets,
            seed=seed,
            draw=(lambda r: self._draw(space, r)) if banded else None,
            smallest=(lambda r: self._band_floor(space, r)) if banded else None,
        )
        self.rng = np.random.default_rng(seed)
        self.loss_ema: list[float | None] = [None] * len(self.buckets)
        self.counts = [0] * len(self.buckets)
        self._restricted: dict[int, SearchSpace] = {}

    # --- the schedule --------------------------------------------------------------------------
    def shrinking(self, step: int) -> bool:
        """False while only the full network trains (the delay of ``delayed``)."""
        return not (self.schedule is Schedule.DELAYED and step < self.delay_fraction * self.total_steps)

    def stage(self, step: int) -> int:
        return min(self.stages - 1, step * self.stages // self.total_steps)

    def space_at(self, step: int) -> SearchSpace:
        """The (sub-)space sampled from at ``step``."""
        if self.schedule is not Schedule.PROGRESSIVE:
            return self.space
        s = self.stage(step)
        if s not in self._restricted:
            self._restricted[s] = restrict(self.space, (s + 1) / self.stages)
        return self._restricted[s]

    def largest(self) -> SubnetConfig:
        return self.space.largest()

    def smallest(self, step: int) -> SubnetConfig:
        """The space's smallest network; with ``min_params``, the smallest of 32 draws inside the band."""
        if not self.shrinking(step):
            return self.largest()
        space = self.space_at(step)
        return space.smallest() if self.min_params <= 0 else self._band_floor(space, self.rng)

    # --- the size band (min_params) ---------------------------------------------------------------
    def fraction(self, cfg: SubnetConfig) -> float:
        """Parameters of ``cfg`` as a fraction of the full network's (embeddings included)."""
        return cfg.num_params(self.space.arch) / self._full_params

    _TRIES = 1000

    def _draw(self, space: SearchSpace, rng: np.random.Generator) -> SubnetConfig:
        """A uniform sample of ``space`` with at least ``min_params`` of the parameters (rejection)."""
        if self.min_params <= 0:
            return space.sample(rng)
        for _ in range(self._TRIES):
            cfg = space.sample(rng)
            if self.fraction(cfg) >= self.min_params:
                return cfg
        return space.largest()  # unreachable after _check_band, short of a freak run of draws

    def _band_floor(self, space: SearchSpace, rng: np.random.Generator) -> SubnetConfig:
        """A small network at the band's floor: the smallest of 32 band draws."""
        return min((self._draw(space, rng) for _ in range(32)), key=self.fraction)

    def _check_band(self, space: SearchSpace) -> None:
        """Fail early when uniform samples almost never reach ``min_params`` (rejection would stall)."""
        rng = np.random.default_rng(0)
        fracs = np.array([self.fraction(space.sample(rng)) for _ in range(2000)])
        if (fracs >= self.min_params).mean() < 0.01:
            raise LlamanasError(
                f"min_params={self.min_params} is above the sizes this space samples: under 1% of random "
                f"sub-networks have that many parameters (they span {fracs.min():.0%}-{fracs.max():.0%} "
                f"of the full network); choose at most {np.quantile(fracs, 0.99):.2f}."
            )

    def sample(self, step: int) -> SubnetConfig:
        """A random sub-network for ``step`` (the largest one while not shrinking)."""
        if not self.shrinking(step):
            return self.largest()
        space = self.space_at(step)
        if self.schedule is not Schedule.COMPLEXITY:
            return self._draw(space, self.rng)
        b = int(self.rng.choice(len(self.buckets), p=self.bucket_probs()))
        best, best_gap = None, math.inf
        for _ in range(200):  # ~len(buckets) tries on average; the cap only guards odd spaces
            cfg = self._draw(space, self.rng)
            gap = abs(self.buckets.index(cfg) - b)
            if gap == 0:
                return cfg
            if gap < best_gap:
                best, best_gap = cfg, gap
        return best

    def bucket_probs(self) -> np.ndarray:
        """Bucket probabilities: unvisited buckets first, then ∝ loss^power mixed with a uniform floor."""
        n = len(self.buckets)
        unseen = [b for b in range(n) if self.loss_ema[b] is None]
        if unseen:
            p = np.zeros(n)
            p[unseen] = 1.0 / len(unseen)
            return p
        losses = np.maximum(np.array(self.loss_ema, dtype=float), 1e-8)
        w = (losses / losses.min()) ** self.power  # scale-free: only ratios of losses matter
        return self.floor / n + (1.0 - self.floor) * w / w.sum()

    def update(self, cfg: SubnetConfig, loss: float) -> None:
        """Record the training loss of a sampled sub-network in its size bucket's running mean."""
        if not math.isfinite(loss):
            return
        b = self.buckets.index(cfg)
        old = self.loss_ema[b]
        self.loss_ema[b] = loss if old is None else self.ema * old + (1.0 - self.ema) * loss
        self.counts[b] += 1

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "schedule": self.schedule.value,  # a plain string, as checkpoints have always stored it
            "rng": self.rng.bit_generator.state,
            "loss_ema": list(self.loss_ema),
            "counts": list(self.counts),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("schedule") != self.schedule:
            raise LlamanasError(
                f"Sampler state is for schedule {state.get('schedule')!r}, not {self.schedule.value!r}."
            )
        if len(state["loss_ema"]) != len(self.buckets):
            raise LlamanasError(
                f"Sampler state has {len(state['loss_ema'])} size buckets; this run has {len(self.buckets)}."
            )
        self.rng.bit_generator.state = state["rng"]
        self.loss_ema = list(state["loss_ema"])
        self.counts = list(state["counts"])
