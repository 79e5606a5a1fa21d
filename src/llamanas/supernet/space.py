"""The search space: which sub-networks (``supernet.subnet.SubnetConfig``) a search allows.

A ``SearchSpace`` holds the allowed choices, checks, samples and counts its sub-networks, and encodes them
as integer vectors for search algorithms through its ``genes`` (``supernet.genes``); it is built with
defaults (``from_arch``) or from a user's file (``from_file``, read by ``supernet.space_file``). It is a
plain dataclass that round-trips through JSON.

Two modes:
- ``per_layer`` (default): every layer can be kept or skipped (non-contiguous depth, at least
  ``min_depth`` kept, ``always_keep`` layers never skipped).
- ``first_n`` (the LLaMA-NAS paper): the depth is one of ``depth_choices`` and the first N layers are kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.supernet.genes import Genes
from llamanas.supernet.space_file import depth_options, layer_choices, read_space_file, round_size
from llamanas.supernet.subnet import BITS, SubnetConfig

MODES = ("per_layer", "first_n")
# The width-only space as fractions of the model's own sizes: every layer kept, MLPs at 50/75/100%, 2 or 3 of 3
# KV groups (bench/instatune_space.yaml on the default model). Dropping layers or attention/MLP blocks made
# every measured front worse on the default model (docs/benchmarks.md, "Two LINAS fronts" and "Warm-started
# fronts against every baseline"), so ``search`` and ``compress`` start from this space.
WIDTH_FRACTIONS = {"mlp": (0.5, 0.75, 1.0), "kv": (2 / 3, 1.0)}


def width_only(arch: Arch, fractions: dict = WIDTH_FRACTIONS) -> dict:
    """A space file's keys for a width-only space: every layer kept, no block skipped."""
    kv = sorted({max(1, round(f * arch.num_kv_heads)) for f in fractions["kv"]})
    return {
        "mode": "per_layer",
        "min_depth": arch.num_layers,
        "mlp_choices": list(fractions["mlp"]),
        "kv_groups": kv,
        "skip_attention": False,
        "skip_mlp": False,
    }


# ``--space NAME`` instead of a file: spaces derived from the model (as space-file keys).
NAMED_SPACES = {
    "width": width_only,
    "full": lambda arch: {},  # ``from_arch``: layer drops and attention/MLP block skips as well
}
DEFAULT_SEARCH_SPACE = "width"  # what ``search`` and ``space`` use without --space (see WIDTH_FRACTIONS)

# Why a search space keeps attention in the first kept layer: llama.cpp takes the head size from the first
# layer of a GGUF file, so a sub-network without it there could not be deployed (deploy/gguf.py); it also
# guarantees the one attention block every sub-network needs.
FIRST_ATTENTION = "llama.cpp takes the head size from the first layer"


@dataclass(frozen=True)
class SearchSpace:
    """Which sub-networks are allowed. Build it with ``from_arch`` (defaults) or ``from_file``."""

    arch: Arch
    mode: str = "per_layer"
    min_depth: int = 1
    depth_choices: tuple[int, ...] = ()  # first_n mode only
    always_keep: tuple[int, ...] = ()  # per_layer mode only
    mlp_choices: tuple[tuple[int, ...], ...] = ()  # one tuple of sizes per layer, ascending
    kv_choices: tuple[tuple[int, ...], ...] = ()  # one tuple of KV-group counts per layer, ascending
    bits_choices: tuple[tuple[int, ...], ...] = ()  # per layer, ascending; () = no precision search
    hidden_choices: tuple[
        int, ...
    ] = ()  # residual-stream widths, ascending, the full one last; () = full only

    def __post_init__(self):
        a = self.arch
        if self.hidden_choices:
            hs = self.hidden_choices
            if list(hs) != sorted(set(hs)) or hs[-1] != a.hidden_size or hs[0] < 1:
                raise LlamanasError(
                    f"hidden_choices {list(hs)} must be distinct sizes in 1..{a.hidden_size}, ascending, ending "
                    f"with the model's hidden size {a.hidden_size}."
                )
        if self.mode not in MODES:
            raise LlamanasError(f"Unknown search-space mode {self.mode!r}. Available: {', '.join(MODES)}.")
        if len(self.mlp_choices) != a.num_layers or len(self.kv_choices) != a.num_layers:
            raise LlamanasError(f"mlp_choices and kv_choices need one entry per layer ({a.num_layers}).")
        for i, (ms, ks) in enumerate(zip(self.mlp_choices, self.kv_choices, strict=True)):
            if not ms or not ks:
                raise LlamanasError(f"Layer {i} has no MLP or KV-group choice left.")
            if max(ms) > a.intermediate_size or min(ms) < 0:
                raise LlamanasError(
                    f"Layer {i}: MLP sizes {list(ms)} must lie in 0..{a.intermediate_size} (0 skips the MLP)."
                )
            if max(ks) > a.num_kv_heads or min(ks) < 0:
                raise LlamanasError(
                    f"Layer {i}: KV-group choices {list(ks)} must lie in 0..{a.num_kv_heads} (0 skips attention)."
                )
            if max(ms) == 0 and max(ks) == 0:
                raise LlamanasError(f"Layer {i} can only skip both blocks: forbid it with min_depth instead.")
        for i, ks in enumerate(self.kv_choices):  # a layer that must skip attention is never the first kept
            guarded = any(j in self.always_keep and max(self.kv_choices[j]) > 0 for j in range(i))
            if max(ks) == 0 and not guarded:
                raise LlamanasError(
                    f"Layer {i} always skips its attention block, so it must not be the first kept layer "
                    f"({FIRST_ATTENTION}): add an earlier layer that keeps attention to always_keep."
                )
        if self.bits_choices:
            if len(self.bits_choices) != a.num_layers:
                raise LlamanasError(f"bits_choices needs one entry per layer ({a.num_layers}).")
            for i, bs in enumerate(self.bits_choices):
                if not bs or set(bs) - set(BITS):
                    raise LlamanasError(
                        f"Layer {i}: bits choices {list(bs)} must be a non-empty subset of {list(BITS)}."
                    )
        if not 1 <= self.min_depth <= a.num_layers:
            raise LlamanasError(f"min_depth {self.min_depth} must lie in 1..{a.num_layers}.")
        bad = [i for i in self.always_keep if not 0 <= i < a.num_layers]
        if bad:
            raise LlamanasError(f"always_keep layers {bad} do not exist (0..{a.num_layers - 1}).")
        if self.mode == "first_n":
            if not self.depth_choices:
                raise LlamanasError("first_n mode needs depth_choices, e.g. [24, 26, 28, 30].")
            bad = [d for d in self.depth_choices if not self.min_depth <= d <= a.num_layers]
            if bad:
                raise LlamanasError(f"depth_choices {bad} must lie in {self.min_depth}..{a.num_layers}.")

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def from_arch(
        cls,
        arch: Arch,
        mode: str = "per_layer",
        mlp_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
        kv_groups: tuple[int, ...] | None = None,
        min_depth: int | None = None,
        depth_choices: tuple[int, ...] | None = None,
        always_keep: tuple[int, ...] = (),
        skip_attention: bool = True,
        skip_mlp: bool = True,
    ) -> SearchSpace:
        """The default space: 25/50/75/100% MLP, any number of KV groups, depth >= half the layers, and
        each kept layer's attention and MLP blocks kept or skipped (``skip_attention``, ``skip_mlp``)."""
        n = arch.num_layers
        sizes = {round_size(f, arch.intermediate_size) for f in mlp_fractions} | ({0} if skip_mlp else set())
        groups = set(kv_groups or range(1, arch.num_kv_heads + 1)) | ({0} if skip_attention else set())
        sizes, groups = tuple(sorted(sizes)), tuple(sorted(groups))
        if min_depth is None:
            min_depth = max(1, math.ceil(n / 2))
        if mode == "first_n" and not depth_choices:
            depth_choices = tuple(sorted({max(min_depth, round(n * f)) for f in (0.7, 0.8, 0.9, 1.0)}))
        return cls(
            arch=arch,
            mode=mode,
            min_depth=min_depth,
            depth_choices=tuple(depth_choices or ()),
            always_keep=tuple(always_keep),
            mlp_choices=(sizes,) * n,
            kv_choices=(groups,) * n,
        )

    @classmethod
    def from_dict(cls, d: dict, arch: Arch) -> SearchSpace:
        """Narrow the default space with a user file's keys (see docs/search_space.md)."""
        base = cls.from_arch(arch, **depth_options(d))
        return replace(base, **layer_choices(d, arch))

    @classmethod
    def from_file(cls, path: str | Path, arch: Arch) -> SearchSpace:
        """A space file, or a name of ``NAMED_SPACES`` (width, full)."""
        if str(path) in NAMED_SPACES:
            return cls.from_dict(NAMED_SPACES[str(path)](arch), arch)
        d = read_space_file(path)
        try:
            return cls.from_dict(d, arch)
        except LlamanasError as e:
            raise LlamanasError(f"Search-space file {path}: {e}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        if (
            not self.hidden_choices
        ):  # spaces saved before the hidden gene existed keep their form (store keys)
            d.pop("hidden_choices")
        return d

    @classmethod
    def from_saved(cls, d: dict) -> SearchSpace:
        """Inverse of ``to_dict`` (exact round trip, used by saved super-networks and search runs)."""
        d = dict(d)
        arch = Arch(**d.pop("arch"))
        tup = {
            k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
            for k, v in d.items()
            if isinstance(v, list)
        }
        d.update(tup)
        return cls(arch=arch, **d)

    # --- membership, sampling ------------------------------------------------------------------
    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Raise a clear error if ``cfg`` is not in this space."""
        cfg.check(self.arch)
        if cfg.width(self.arch) not in (self.hidden_choices or (self.arch.hidden_size,)):
            raise LlamanasError(
                f"hidden {cfg.hidden} is not a choice of this space; allowed: "
                f"{list(self.hidden_choices or (self.arch.hidden_size,))} (hidden_choices in a space file)."
            )
        if cfg.depth < self.min_depth:
            raise LlamanasError(
                f"Sub-network keeps {cfg.depth} layers; this space needs at least {self.min_depth}."
            )
        first_n_ok = cfg.layers == tuple(range(cfg.depth)) and cfg.depth in self.depth_choices
        if self.mode == "first_n" and not first_n_ok:
            raise LlamanasError(
                f"In first_n mode the kept layers must be 0..N-1 with N in {list(self.depth_choices)}; "
                f"got {list(cfg.layers)}."
            )
        missing = sorted(set(self.always_keep) - set(cfg.layers))
        if missing:
            raise LlamanasError(f"Layers {missing} must always be kept in this space.")
        if cfg.kv_groups[0] == 0:
            raise LlamanasError(
                f"The first kept layer ({cfg.layers[0]}) skips its attention block; in a search space the first "
                f"kept layer keeps attention ({FIRST_ATTENTION})."
            )
        for i, m, g in zip(cfg.layers, cfg.mlp, cfg.kv_groups, strict=True):
            if m not in self.mlp_choices[i]:
                raise LlamanasError(
                    f"Layer {i}: mlp size {m} is not a choice; allowed: {list(self.mlp_choices[i])}."
                )
            if g not in self.kv_choices[i]:
                raise LlamanasError(
                    f"Layer {i}: kv_groups {g} is not a choice; allowed: {list(self.kv_choices[i])}."
                )
        if cfg.bits is not None or self.bits_choices:
            allowed = self.bits_choices or ((16,),) * self.arch.num_layers
            for i, b in zip(cfg.layers, cfg.bits or (16,) * cfg.depth, strict=True):
                if b not in allowed[i]:
                    raise LlamanasError(f"Layer {i}: {b} bits is not a choice; allowed: {list(allowed[i])}.")
        return cfg

    def _bits_of(self, layers: tuple[int, ...], pick) -> tuple[int, ...] | None:
        return tuple(int(pick(self.bits_choices[i])) for i in layers) if self.bits_choices else None

    def largest(self) -> SubnetConfig:
        n = self.arch.num_layers
        depth = max(self.depth_choices) if self.mode == "first_n" else n
        layers = tuple(range(depth))
        return SubnetConfig(
            layers,
            tuple(max(self.mlp_choices[i]) for i in layers),
            tuple(max(self.kv_choices[i]) for i in layers),
            self._bits_of(layers, max),
        )

    def smallest(self) -> SubnetConfig:
        """The sub-network with the fewest parameters: shallowest, narrowest, dropping the largest layers;
        each kept layer at its cheapest pair of blocks, the first one with attention."""
        cheap = {i: self._cheapest(i) for i in range(self.arch.num_layers)}
        if self.mode == "first_n":
            layers = tuple(range(min(self.depth_choices)))
        else:
            keep = set(self.always_keep)
            rest = [i for i in range(self.arch.num_layers) if i not in keep]
            rest.sort(key=lambda i: (self._layer_params(i, *cheap[i]), i))
            need = max(0, self.min_depth - len(keep))
            layers = tuple(sorted(keep | set(rest[:need])))
        pairs = {i: cheap[i] for i in layers}
        if pairs[layers[0]][1] == 0:  # the first kept layer keeps attention (FIRST_ATTENTION)
            pairs[layers[0]] = min(
                (p for p in self._pairs(layers[0]) if p[1] > 0),
                key=lambda p: (self._layer_params(layers[0], *p), p),
            )
        return SubnetConfig(
            layers,
            tuple(pairs[i][0] for i in layers),
            tuple(pairs[i][1] for i in layers),
            self._bits_of(layers, min),
            self._hidden(self.hidden_choices[0] if self.hidden_choices else None),
        )

    def _hidden(self, h: int | None) -> int | None:
        """``SubnetConfig.hidden`` of a width: None for the full stream."""
        return None if h is None or h == self.arch.hidden_size else int(h)

    def _pairs(self, i: int) -> list[tuple[int, int]]:
        """Layer ``i``'s allowed (MLP size, KV groups) pairs when it is kept (not both blocks skipped)."""
        return [(m, g) for m in self.mlp_choices[i] for g in self.kv_choices[i] if m or g]

    def _cheapest(self, i: int) -> tuple[int, int]:
        return min(self._pairs(i), key=lambda p: (self._layer_params(i, *p), p))

    def _layer_params(self, i: int, m: int, g: int) -> int:
        return self.arch.layer_params(m, g)

    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        """A uniformly random config: depth first, then which layers, then widths."""
        n = self.arch.num_layers
        if self.mode == "first_n":
            layers = tuple(range(int(rng.choice(self.depth_choices))))
        else:
            keep = set(self.always_keep)
            rest = [i for i in range(n) if i not in keep]
            lo = max(0, self.min_depth - len(keep))
            k = int(rng.integers(lo, len(rest) + 1))
            layers = tuple(sorted(keep | {int(i) for i in rng.choice(rest, size=k, replace=False)}))
        mlp = [int(rng.choice(self.mlp_choices[i])) for i in layers]
        kv = [int(rng.choice(self.kv_choices[i])) for i in layers]
        for k, i in enumerate(layers):  # uniform over the layer's pairs: both skipped is drawn again
            while mlp[k] == 0 and kv[k] == 0:
                mlp[k], kv[k] = int(rng.choice(self.mlp_choices[i])), int(rng.choice(self.kv_choices[i]))
        pairs = {i: (m, g) for i, m, g in zip(layers, mlp, kv, strict=True)}
        first = layers[0]
        if pairs[first][1] == 0:  # the first kept layer keeps attention (FIRST_ATTENTION; never empty)
            allowed = [p for p in self._pairs(first) if p[1] > 0]
            pairs[first] = allowed[int(rng.integers(len(allowed)))]
        return SubnetConfig(
            layers,
            tuple(int(pairs[i][0]) for i in layers),
            tuple(int(pairs[i][1]) for i in layers),
            self._bits_of(layers, rng.choice),
            self._hidden(int(rng.choice(self.hidden_choices)) if self.hidden_choices else None),
        )

    def size(self) -> int:
        """The number of distinct sub-networks (exact, may be huge): kept layers never skip both blocks,
        and the first kept layer keeps its attention (``FIRST_ATTENTION``)."""
        n = self.arch.num_layers
        nb = [len(b) for b in self.bits_choices] or [1] * n
        every = [len(self._pairs(i)) * nb[i] for i in range(n)]
        attn = [sum(1 for _, g in self._pairs(i) if g > 0) * nb[i] for i in range(n)]
        widths = len(self.hidden_choices) or 1
        if self.mode == "first_n":
            return widths * sum(attn[0] * math.prod(every[1:d]) for d in self.depth_choices)
        # by[k] = ways with k kept layers, before any layer is kept and after the first; always_keep
        # layers are forced on.
        before, after = [1], [0]
        for i in range(n):
            new_before, new_after = [0] * (len(before) + 1), [0] * (len(after) + 1)
            for k in range(len(before)):
                if i not in self.always_keep:
                    new_before[k] += before[k]
                    new_after[k] += after[k]
                new_after[k + 1] += before[k] * attn[i] + after[k] * every[i]
            before, after = new_before, new_after
        return widths * sum(after[self.min_depth :])

    # --- integer-vector encoding (for search algorithms): each method is the same-named ``Genes`` one ---
    @cached_property
    def genes(self) -> Genes:
        """The gene encoding of this space (``supernet.genes``); the methods below go through it."""
        return Genes(
            num_layers=self.arch.num_layers,
            mode=self.mode,
            depth_choices=tuple(sorted(self.depth_choices)),
            always_keep=self.always_keep,
            min_depth=self.min_depth,
            mlp_choices=self.mlp_choices,
            kv_choices=self.kv_choices,
            bits_choices=self.bits_choices,
            hidden_choices=self.hidden_choices,
        )

    @property
    def variable_names(self) -> tuple[str, ...]:
        return self.genes.names

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds (xl, xu) of each variable."""
        return self.genes.bounds()

    def gene_slices(self) -> dict[str, slice]:
        return self.genes.slices()

    def split_genes(self, X: np.ndarray) -> dict[str, np.ndarray]:
        return self.genes.split(X)

    def join_genes(self, genes: dict[str, list[int] | np.ndarray]) -> np.ndarray:
        return self.genes.join(genes)

    def skipped_blocks(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.genes.skipped_blocks(X)

    def kept(self, X: np.ndarray) -> np.ndarray:
        return self.genes.kept(X)

    def canonical(self, X: np.ndarray) -> np.ndarray:
        return self.genes.canonical(X)

    def encode(self, cfg: SubnetConfig) -> np.ndarray:
        """Config -> integer vector (checked against the space first)."""
        return self.genes.encode(self.validate(cfg))

    def decode(self, x) -> SubnetConfig:
        """Integer vector -> config (repairing it deterministically first)."""
        return self.genes.decode(x)

    def repair(self, X: np.ndarray) -> np.ndarray:
        """A vector, or each row of X, repaired (``Genes.repair``): every vector decodes to a config here."""
        return self.genes.repair(X)
