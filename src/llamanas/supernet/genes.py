"""The gene encoding: the sub-networks of a search space as integer vectors, for search algorithms.

``Genes.layout`` is the one definition of the gene layout; everything else (bounds, names, encode, decode,
repair, the vectorised objective counts in ``search/objectives.py``) goes through it. Every operation takes
one vector or rows of vectors: a search repairs and counts whole populations at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from llamanas.supernet.subnet import SubnetConfig


@dataclass(frozen=True)
class Genes:
    """The gene vector of a search space (``SearchSpace.genes``; the fields mean what the space's do)."""

    num_layers: int
    mode: str
    depth_choices: tuple[int, ...]  # ascending; first_n mode only
    always_keep: tuple[int, ...]
    min_depth: int
    mlp_choices: tuple[tuple[int, ...], ...]
    kv_choices: tuple[tuple[int, ...], ...]
    bits_choices: tuple[tuple[int, ...], ...]
    hidden_choices: tuple[int, ...] = ()  # ascending, the full width last; () = no hidden gene

    @cached_property
    def layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The gene vector, group by group: (group, each gene's largest choice index). A ``depth`` gene
        (first_n) or one ``keep`` gene per layer (per_layer), then one ``mlp`` and one ``kv`` gene per layer,
        then one ``bits`` gene per layer in a space with precision genes, then one global ``hidden`` gene (the
        residual stream's width) in a space with hidden choices."""
        n = self.num_layers
        head = ("depth", (len(self.depth_choices) - 1,)) if self.mode == "first_n" else ("keep", (1,) * n)
        groups = [
            head,
            ("mlp", tuple(len(m) - 1 for m in self.mlp_choices)),
            ("kv", tuple(len(k) - 1 for k in self.kv_choices)),
        ]
        if self.bits_choices:
            groups.append(("bits", tuple(len(b) - 1 for b in self.bits_choices)))
        if self.hidden_choices:
            groups.append(("hidden", (len(self.hidden_choices) - 1,)))
        return tuple(groups)

    @property
    def names(self) -> tuple[str, ...]:
        """One name a gene: ``depth`` or ``keep.<layer>``, ``mlp.<layer>``, ``kv.<layer>``, ``bits.<layer>``,
        ``hidden``."""
        return tuple(
            group if group in ("depth", "hidden") else f"{group}.{i}"
            for group, top in self.layout
            for i in range(len(top))
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds (xl, xu) of each gene."""
        return np.zeros_like(self._top), self._top.copy()

    def slices(self) -> dict[str, slice]:
        """Where each group of genes lies in a vector: ``depth`` or ``keep``, ``mlp``, ``kv`` (and ``bits``)."""
        return dict(self._slices)

    def split(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """A vector, or rows of vectors, as named groups of genes (``slices``); each is a view of X (writing
        to it writes X): ``mlp``, ``kv`` and ``bits`` are (..., layers) choice indices."""
        return {group: X[..., s] for group, s in self._slices.items()}

    # Computed once: pymoo repairs and counts through these on every mating attempt.
    @cached_property
    def _top(self) -> np.ndarray:
        return np.array([t for _, top in self.layout for t in top], dtype=int)

    @cached_property
    def _slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for group, top in self.layout:
            out[group] = slice(start, start + len(top))
            start += len(top)
        return out

    @cached_property
    def _skippable(self) -> tuple[np.ndarray, np.ndarray]:
        """(attention, MLP), each (layers,) bool: whether choice 0 of the layer skips the block."""
        return np.array([k[0] == 0 for k in self.kv_choices]), np.array([m[0] == 0 for m in self.mlp_choices])

    def join(self, genes: dict[str, list[int] | np.ndarray]) -> np.ndarray:
        """Inverse of ``split`` for one vector: the groups, concatenated in layout order."""
        return np.array([int(v) for group, _ in self.layout for v in genes[group]], dtype=int)

    def skipped_blocks(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(attention skipped, MLP skipped), each (..., layers) bool, by the width genes alone (choice 0
        is a skipped block when the layer's smallest choice is 0)."""
        genes = self.split(np.asarray(X))
        kv_zero, mlp_zero = self._skippable
        return (genes["kv"] == 0) & kv_zero, (genes["mlp"] == 0) & mlp_zero

    def _switched_on(self, genes: dict[str, np.ndarray]) -> np.ndarray:
        """(..., layers) bool: the layers the ``keep`` or ``depth`` genes keep, before any block skip."""
        if "depth" in genes:
            depth = np.array(self.depth_choices)[genes["depth"][..., 0]]
            return np.arange(self.num_layers) < depth[..., None]
        return genes["keep"].astype(bool)

    def kept(self, X: np.ndarray) -> np.ndarray:
        """(..., layers) bool: which layers a (repaired) vector, or each row of X, keeps (a layer whose
        genes skip both blocks is not kept)."""
        X = np.asarray(X)
        attn_off, mlp_off = self.skipped_blocks(X)
        return self._switched_on(self.split(X)) & ~(attn_off & mlp_off)

    def canonical(self, X: np.ndarray) -> np.ndarray:
        """A copy of X (a vector or rows) where the genes of skipped layers hold their largest choice, the
        filler ``encode`` writes: vectors that decode to the same sub-network become equal."""
        X = np.array(X)
        keep = self.kept(X)
        genes = self.split(X)
        if "keep" in genes:
            genes["keep"][...] = keep
        for group, top in self.layout[1:]:
            if group != "hidden":  # global: no layer to skip
                genes[group][...] = np.where(keep, genes[group], np.array(top))
        return X

    def encode(self, cfg: SubnetConfig) -> np.ndarray:
        """Config (of the space: ``SearchSpace.encode`` checks) -> vector. Skipped layers get their largest
        choice (the canonical filler)."""
        genes = {group: list(top) for group, top in self.layout}  # widths start at their largest
        for i, m, g in zip(cfg.layers, cfg.mlp, cfg.kv_groups, strict=True):
            genes["mlp"][i] = self.mlp_choices[i].index(m)
            genes["kv"][i] = self.kv_choices[i].index(g)
        if self.bits_choices:
            for i, b in zip(cfg.layers, cfg.bits or (16,) * cfg.depth, strict=True):
                genes["bits"][i] = self.bits_choices[i].index(b)
        if self.hidden_choices:
            genes["hidden"] = [self.hidden_choices.index(cfg.hidden or self.hidden_choices[-1])]
        if self.mode == "first_n":
            genes["depth"] = [self.depth_choices.index(cfg.depth)]
        else:
            kept = set(cfg.layers)
            genes["keep"] = [int(i in kept) for i in range(self.num_layers)]
        return self.join(genes)

    def decode(self, x) -> SubnetConfig:
        """Vector -> config (repairing it deterministically first)."""
        x = self.repair(np.asarray(x, dtype=int))
        genes = self.split(x)
        layers = tuple(int(i) for i in np.flatnonzero(self.kept(x)))
        return SubnetConfig(
            layers,
            tuple(self.mlp_choices[i][genes["mlp"][i]] for i in layers),
            tuple(self.kv_choices[i][genes["kv"][i]] for i in layers),
            tuple(self.bits_choices[i][genes["bits"][i]] for i in layers) if self.bits_choices else None,
            self.hidden_of(genes),
        )

    def hidden_of(self, genes: dict[str, np.ndarray]) -> int | None:
        """``SubnetConfig.hidden`` of one vector's genes: None for the full width (or no hidden gene)."""
        if not self.hidden_choices:
            return None
        h = self.hidden_choices[int(genes["hidden"][0])]
        return None if h == self.hidden_choices[-1] else int(h)

    def repair(self, X: np.ndarray) -> np.ndarray:
        """A repaired copy of a vector, or of each row of X: clip to bounds; a layer whose genes skip both
        blocks is a skipped layer; switch on always-kept layers and, if too shallow, the lowest-index
        skipped ones (a layer switched on, or one first_n must keep, gets its largest attention if it had
        no block, else its largest MLP); the first kept layer gets its largest attention if it skipped it
        (``supernet.space.FIRST_ATTENTION``). Vectorised: pymoo repairs every mating attempt's offspring."""
        X = np.clip(np.asarray(X, dtype=int), 0, self._top)
        rows = np.atleast_2d(X)  # a view, and so are the groups: writing them writes X
        genes = self.split(rows)
        attn_off, mlp_off = self.skipped_blocks(rows)
        both = attn_off & mlp_off
        if self.mode == "first_n":
            no_block = both & self._switched_on(genes)  # first_n keeps layers 0..depth-1
        else:
            keep = genes["keep"]
            keep[both] = 0
            keep[:, list(self.always_keep)] = 1
            missing = self.min_depth - keep.sum(axis=1, keepdims=True)
            off = keep == 0  # switch on the lowest-index skipped layers: the first `missing` of each row
            keep[off & (np.cumsum(off, axis=1) <= missing)] = 1
            no_block = both & keep.astype(bool)  # every such layer was switched on here
        if not no_block.any() and not attn_off.any():
            return X  # no block to give: the common case of a space without block skips
        top_kv, top_mlp = self._top[self._slices["kv"]], self._top[self._slices["mlp"]]
        has_attn = np.array([k[-1] > 0 for k in self.kv_choices])
        genes["kv"][...] = np.where(no_block & has_attn, top_kv, genes["kv"])
        genes["mlp"][...] = np.where(no_block & ~has_attn, top_mlp, genes["mlp"])
        kept = self.kept(rows)
        first = kept.argmax(axis=1)
        r = np.flatnonzero(kept.any(axis=1) & self.skipped_blocks(rows)[0][np.arange(len(rows)), first])
        genes["kv"][r, first[r]] = top_kv[first[r]]  # the first kept layer keeps attention
        return X
