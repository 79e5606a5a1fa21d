"""The search space and the sub-network config.

A ``SubnetConfig`` names which decoder layers are kept and, for each kept layer, its MLP intermediate
size and how many KV groups of attention it keeps (whole groups, so GQA stays valid). A ``SearchSpace``
says which configs are allowed, samples them, and maps them to and from integer vectors for search
algorithms. Both are plain dataclasses that round-trip through JSON.

Two modes:
- ``per_layer`` (default): every layer can be kept or skipped (non-contiguous depth, at least
  ``min_depth`` kept, ``always_keep`` layers never skipped).
- ``first_n`` (the LLaMA-NAS paper): the depth is one of ``depth_choices`` and the first N layers are kept.

Over 500 lines, one concern: what a sub-network is and which ones the space allows, including the one
definition of the gene layout (``SearchSpace._layout``) that everything else encodes through.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch

MODES = ("per_layer", "first_n")
BITS = (4, 8, 16)  # weight precisions of the joint architecture + precision search (16 = not quantized)


@dataclass(frozen=True)
class SubnetConfig:
    """One sub-network: kept layer indices (ascending) and, per kept layer, MLP size and KV groups.

    ``bits`` (optional, one per kept layer: 16, 8 or 4) is the weight precision of the layer's linears in
    a joint architecture + precision search; ``None`` means not quantized.
    """

    layers: tuple[int, ...]
    mlp: tuple[int, ...]
    kv_groups: tuple[int, ...]
    bits: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        object.__setattr__(self, "mlp", tuple(int(i) for i in self.mlp))
        object.__setattr__(self, "kv_groups", tuple(int(i) for i in self.kv_groups))
        if not self.layers:
            raise LlamanasError("A sub-network must keep at least one layer; got layers=[].")
        if len(self.mlp) != len(self.layers) or len(self.kv_groups) != len(self.layers):
            raise LlamanasError(
                f"'mlp' ({len(self.mlp)} values) and 'kv_groups' ({len(self.kv_groups)} values) must have "
                f"one value per kept layer ({len(self.layers)} layers)."
            )
        if any(b <= a for a, b in zip(self.layers, self.layers[1:], strict=False)) or self.layers[0] < 0:
            raise LlamanasError(f"'layers' must be distinct, ascending and >= 0; got {list(self.layers)}.")
        if min(self.mlp) < 1 or min(self.kv_groups) < 1:
            raise LlamanasError("'mlp' sizes and 'kv_groups' must be >= 1.")
        if self.bits is not None:
            object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))
            if len(self.bits) != len(self.layers):
                raise LlamanasError(
                    f"'bits' ({len(self.bits)} values) must have one value per kept layer ({len(self.layers)})."
                )
            bad = sorted(set(self.bits) - set(BITS))
            if bad:
                raise LlamanasError(f"'bits' values {bad} are not weight precisions; allowed: {list(BITS)}.")

    @property
    def quantized(self) -> bool:
        """Whether any layer is below 16 bits (the sub-network must then be extracted to run)."""
        return self.bits is not None and min(self.bits) < 16

    @classmethod
    def full(cls, arch: Arch) -> SubnetConfig:
        n = arch.num_layers
        return cls(tuple(range(n)), (arch.intermediate_size,) * n, (arch.num_kv_heads,) * n)

    def check(self, arch: Arch) -> SubnetConfig:
        """Raise a clear error if this config does not fit the model."""
        if self.layers[-1] >= arch.num_layers:
            raise LlamanasError(
                f"Layer {self.layers[-1]} does not exist: the model has {arch.num_layers} layers (0..{arch.num_layers - 1})."
            )
        for i, m, g in zip(self.layers, self.mlp, self.kv_groups, strict=True):
            if m > arch.intermediate_size:
                raise LlamanasError(
                    f"Layer {i}: mlp size {m} exceeds the model's intermediate size {arch.intermediate_size}."
                )
            if g > arch.num_kv_heads:
                raise LlamanasError(
                    f"Layer {i}: kv_groups {g} exceeds the model's {arch.num_kv_heads} KV heads."
                )
        return self

    @property
    def depth(self) -> int:
        return len(self.layers)

    def is_uniform(self) -> bool:
        return len(set(self.mlp)) == 1 and len(set(self.kv_groups)) == 1

    def num_params(self, arch: Arch, embeddings: bool = True) -> int:
        """Parameters of the sub-network (the same count its extracted checkpoint has)."""
        layers = sum(arch.layer_params(m, g) for m, g in zip(self.mlp, self.kv_groups, strict=True))
        return layers + arch.fixed_params(embeddings)

    def macs_per_token(self, arch: Arch, seq_len: int = 128) -> int:
        """Multiply-accumulates per token when processing ``seq_len`` tokens with causal attention.

        Linear layers (decoder and LM head) plus attention scores and weighted sums; a token attends on
        average to (seq_len + 1) / 2 positions.
        """
        h, hd, rep = arch.hidden_size, arch.head_dim, arch.heads_per_group
        ctx = (seq_len + 1) / 2
        macs = arch.vocab_size * h  # LM head
        for m, g in zip(self.mlp, self.kv_groups, strict=True):
            q, kv = g * rep * hd, g * hd
            macs += h * q + 2 * h * kv + q * h + 3 * h * m
            macs += 2 * ctx * q  # QK^T and AV for every query head
        return int(round(macs))

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"layers": list(self.layers), "mlp": list(self.mlp), "kv_groups": list(self.kv_groups)}
        if self.bits is not None:
            d["bits"] = list(self.bits)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SubnetConfig:
        if not isinstance(d, dict):
            raise LlamanasError(f"A sub-network config must be a JSON object; got {type(d).__name__}.")
        required = {"layers", "mlp", "kv_groups"}
        extra = set(d) - required - {"bits"}
        if extra:
            raise LlamanasError(
                f"Unknown sub-network config keys {sorted(extra)}; allowed: {sorted(required | {'bits'})}."
            )
        missing = required - set(d)
        if missing:
            raise LlamanasError(f"Sub-network config is missing {sorted(missing)}.")
        bits = d.get("bits")
        return cls(
            tuple(d["layers"]), tuple(d["mlp"]), tuple(d["kv_groups"]), None if bits is None else tuple(bits)
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise LlamanasError(f"Sub-network config is not valid JSON: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> SubnetConfig:
        p = Path(path)
        if not p.is_file():
            raise LlamanasError(f"Sub-network config file {str(path)!r} does not exist.")
        try:
            return cls.from_json(p.read_text())
        except LlamanasError as e:
            raise LlamanasError(f"{path}: {e}") from None

    def key(self) -> str:
        """A stable identity (for de-duplication and the results store)."""
        return self.to_json()


def _round_size(frac: float, full: int) -> int:
    """A fraction of ``full`` rounded to a multiple of 64 where the size allows (else of 8, else 1)."""
    if frac >= 1.0:
        return full
    raw = frac * full
    for mult in (64, 8, 1):
        if full >= 4 * mult:
            return int(max(mult, min(full, mult * round(raw / mult))))
    return max(1, int(round(raw)))


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
    _names: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self):
        a = self.arch
        if self.mode not in MODES:
            raise LlamanasError(f"Unknown search-space mode {self.mode!r}. Available: {', '.join(MODES)}.")
        if len(self.mlp_choices) != a.num_layers or len(self.kv_choices) != a.num_layers:
            raise LlamanasError(f"mlp_choices and kv_choices need one entry per layer ({a.num_layers}).")
        for i, (ms, ks) in enumerate(zip(self.mlp_choices, self.kv_choices, strict=True)):
            if not ms or not ks:
                raise LlamanasError(f"Layer {i} has no MLP or KV-group choice left.")
            if max(ms) > a.intermediate_size or min(ms) < 1:
                raise LlamanasError(f"Layer {i}: MLP sizes {list(ms)} must lie in 1..{a.intermediate_size}.")
            if max(ks) > a.num_kv_heads or min(ks) < 1:
                raise LlamanasError(
                    f"Layer {i}: KV-group choices {list(ks)} must lie in 1..{a.num_kv_heads}."
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
    ) -> SearchSpace:
        """The default space: 25/50/75/100% MLP, any number of KV groups, depth >= half the layers."""
        n = arch.num_layers
        sizes = tuple(sorted({_round_size(f, arch.intermediate_size) for f in mlp_fractions}))
        groups = tuple(sorted(set(kv_groups or range(1, arch.num_kv_heads + 1))))
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
        allowed = {
            "mode",
            "min_depth",
            "depth_choices",
            "always_keep",
            "mlp_choices",
            "kv_groups",
            "bits",
            "layers",
        }
        extra = set(d) - allowed
        if extra:
            raise LlamanasError(f"Unknown search-space keys {sorted(extra)}; allowed: {sorted(allowed)}.")
        mode = d.get("mode", "per_layer")
        base = cls.from_arch(
            arch,
            mode=mode,
            min_depth=d.get("min_depth"),
            depth_choices=tuple(d["depth_choices"]) if "depth_choices" in d else None,
            always_keep=tuple(d.get("always_keep", ())),
        )
        mlp = [_sizes(d.get("mlp_choices"), arch.intermediate_size, "mlp_choices")] * arch.num_layers
        kv = [_groups(d.get("kv_groups"), arch.num_kv_heads, "kv_groups")] * arch.num_layers
        bits = [_bits(d["bits"], "bits")] * arch.num_layers if "bits" in d else None
        for key, spec in (d.get("layers") or {}).items():
            i = int(key)
            if not 0 <= i < arch.num_layers:
                raise LlamanasError(
                    f"'layers' names layer {i}, but the model has layers 0..{arch.num_layers - 1}."
                )
            unknown_keys = set(spec) - {"mlp_choices", "kv_groups", "bits"}
            if unknown_keys:
                raise LlamanasError(
                    f"layers.{i}: unknown keys {sorted(unknown_keys)}; allowed: mlp_choices, kv_groups, bits."
                )
            if "bits" in spec:
                if bits is None:
                    raise LlamanasError(f"layers.{i}.bits needs a top-level 'bits' list (e.g. [4, 8, 16]).")
                bits[i] = _bits(spec["bits"], f"layers.{i}.bits")
            if "mlp_choices" in spec:
                mlp[i] = _sizes(spec["mlp_choices"], arch.intermediate_size, f"layers.{i}.mlp_choices")
            if "kv_groups" in spec:
                kv[i] = _groups(spec["kv_groups"], arch.num_kv_heads, f"layers.{i}.kv_groups")
        return cls(
            arch=arch,
            mode=base.mode,
            min_depth=base.min_depth,
            depth_choices=base.depth_choices,
            always_keep=base.always_keep,
            mlp_choices=tuple(mlp),
            kv_choices=tuple(kv),
            bits_choices=tuple(bits) if bits else (),
        )

    @classmethod
    def from_file(cls, path: str | Path, arch: Arch) -> SearchSpace:
        p = Path(path)
        if not p.is_file():
            raise LlamanasError(f"Search-space file {str(path)!r} does not exist.")
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                d = yaml.safe_load(text) or {}
            else:
                d = json.loads(text)
        except Exception as e:  # noqa: BLE001 - any parse error becomes one clear line
            raise LlamanasError(f"Search-space file {path}: cannot parse ({e}).") from None
        if not isinstance(d, dict):
            raise LlamanasError(f"Search-space file {path}: expected a mapping at the top level.")
        try:
            return cls.from_dict(d, arch)
        except LlamanasError as e:
            raise LlamanasError(f"Search-space file {path}: {e}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_names")
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
        """The sub-network with the fewest parameters: shallowest, narrowest, dropping the largest layers."""
        if self.mode == "first_n":
            layers = tuple(range(min(self.depth_choices)))
        else:
            keep = set(self.always_keep)
            rest = [i for i in range(self.arch.num_layers) if i not in keep]
            cost = {i: self._layer_params(i, min(self.mlp_choices[i]), min(self.kv_choices[i])) for i in rest}
            rest.sort(key=lambda i: (cost[i], i))
            need = max(0, self.min_depth - len(keep))
            layers = tuple(sorted(keep | set(rest[:need])))
        return SubnetConfig(
            layers,
            tuple(min(self.mlp_choices[i]) for i in layers),
            tuple(min(self.kv_choices[i]) for i in layers),
            self._bits_of(layers, min),
        )

    def _layer_params(self, i: int, m: int, g: int) -> int:
        return SubnetConfig((i,), (m,), (g,)).num_params(self.arch, embeddings=False)

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
        return SubnetConfig(
            layers,
            tuple(int(rng.choice(self.mlp_choices[i])) for i in layers),
            tuple(int(rng.choice(self.kv_choices[i])) for i in layers),
            self._bits_of(layers, rng.choice),
        )

    def size(self) -> int:
        """The number of distinct sub-networks (exact, may be huge)."""
        nb = [len(b) for b in self.bits_choices] or [1] * self.arch.num_layers
        widths = [len(m) * len(k) * b for m, k, b in zip(self.mlp_choices, self.kv_choices, nb, strict=True)]
        if self.mode == "first_n":
            return sum(math.prod(widths[:d]) for d in self.depth_choices)
        # poly[k] = number of ways with k kept layers; always_keep layers are forced on.
        poly = [1]
        for i, w in enumerate(widths):
            new = [0] * (len(poly) + 1)
            for k, c in enumerate(poly):
                if i not in self.always_keep:
                    new[k] += c
                new[k + 1] += c * w
            poly = new
        return sum(poly[self.min_depth :])

    # --- integer-vector encoding (for search algorithms) ---------------------------------------
    def _layout(self) -> list[tuple[str, list[int]]]:
        """The gene vector, group by group: (group, each gene's largest choice index). The one definition of
        the layout: a ``depth`` gene (first_n) or one ``keep`` gene per layer (per_layer), then one ``mlp``
        and one ``kv`` gene per layer, then one ``bits`` gene per layer in a space with precision genes."""
        n = self.arch.num_layers
        head = ("depth", [len(self.depth_choices) - 1]) if self.mode == "first_n" else ("keep", [1] * n)
        groups = [
            head,
            ("mlp", [len(m) - 1 for m in self.mlp_choices]),
            ("kv", [len(k) - 1 for k in self.kv_choices]),
        ]
        if self.bits_choices:
            groups.append(("bits", [len(b) - 1 for b in self.bits_choices]))
        return groups

    @property
    def variable_names(self) -> tuple[str, ...]:
        return tuple(
            group if group == "depth" else f"{group}.{i}"
            for group, top in self._layout()
            for i in range(len(top))
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds (xl, xu) of each variable."""
        xu = [t for _, top in self._layout() for t in top]
        return np.zeros(len(xu), dtype=int), np.array(xu, dtype=int)

    def gene_slices(self) -> dict[str, slice]:
        """Where each group of genes lies in a vector: ``depth`` or ``keep``, ``mlp``, ``kv`` (and ``bits``)."""
        out, start = {}, 0
        for group, top in self._layout():
            out[group] = slice(start, start + len(top))
            start += len(top)
        return out

    def split_genes(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """A vector, or rows of vectors, as named groups of genes (``gene_slices``); each is a view of X
        (writing to it writes X): ``mlp``, ``kv`` and ``bits`` are (..., layers) choice indices."""
        return {group: X[..., s] for group, s in self.gene_slices().items()}

    def join_genes(self, genes: dict[str, list[int] | np.ndarray]) -> np.ndarray:
        """Inverse of ``split_genes`` for one vector: the groups, concatenated in layout order."""
        return np.array([int(v) for group, _ in self._layout() for v in genes[group]], dtype=int)

    def kept(self, X: np.ndarray) -> np.ndarray:
        """(..., layers) bool: which layers a (repaired) vector, or each row of X, keeps."""
        X = np.asarray(X)
        genes = self.split_genes(X)
        if "depth" in genes:
            depth = np.array(sorted(self.depth_choices))[genes["depth"][..., 0]]
            return np.arange(self.arch.num_layers) < depth[..., None]
        return genes["keep"].astype(bool)

    def canonical(self, X: np.ndarray) -> np.ndarray:
        """A copy of X (a vector or rows) where the genes of skipped layers hold their largest choice, the
        filler ``encode`` writes: vectors that decode to the same sub-network become equal."""
        X = np.array(X)
        keep = self.kept(X)
        genes = self.split_genes(X)
        for group, top in self._layout()[1:]:
            genes[group][...] = np.where(keep, genes[group], np.array(top))
        return X

    def encode(self, cfg: SubnetConfig) -> np.ndarray:
        """Config -> integer vector. Skipped layers get their largest choice (the canonical filler)."""
        self.validate(cfg)
        genes = {group: list(top) for group, top in self._layout()}  # widths start at their largest
        for i, m, g in zip(cfg.layers, cfg.mlp, cfg.kv_groups, strict=True):
            genes["mlp"][i] = self.mlp_choices[i].index(m)
            genes["kv"][i] = self.kv_choices[i].index(g)
        if self.bits_choices:
            for i, b in zip(cfg.layers, cfg.bits or (16,) * cfg.depth, strict=True):
                genes["bits"][i] = self.bits_choices[i].index(b)
        if self.mode == "first_n":
            genes["depth"] = [sorted(self.depth_choices).index(cfg.depth)]
        else:
            kept = set(cfg.layers)
            genes["keep"] = [int(i in kept) for i in range(self.arch.num_layers)]
        return self.join_genes(genes)

    def decode(self, x) -> SubnetConfig:
        """Integer vector -> config (repairing too-shallow vectors deterministically first)."""
        x = self.repair(np.asarray(x, dtype=int))
        genes = self.split_genes(x)
        layers = tuple(int(i) for i in np.flatnonzero(self.kept(x)))
        return SubnetConfig(
            layers,
            tuple(self.mlp_choices[i][genes["mlp"][i]] for i in layers),
            tuple(self.kv_choices[i][genes["kv"][i]] for i in layers),
            tuple(self.bits_choices[i][genes["bits"][i]] for i in layers) if self.bits_choices else None,
        )

    def repair(self, x: np.ndarray) -> np.ndarray:
        """Clip to bounds; switch on always-kept layers and, if too shallow, the lowest-index skipped ones."""
        xl, xu = self.bounds()
        x = np.clip(np.asarray(x, dtype=int), xl, xu)
        if self.mode == "per_layer":
            keep = self.split_genes(x)["keep"]  # a view: switching a layer on writes x
            for i in self.always_keep:
                keep[i] = 1
            missing = self.min_depth - int(keep.sum())
            for i in range(len(keep)):
                if missing <= 0:
                    break
                if not keep[i]:
                    keep[i] = 1
                    missing -= 1
        return x

    def describe(self) -> list[tuple[str, str]]:
        """Rows for ``llamanas space``."""
        a = self.arch
        uniq_m = sorted({m for ms in self.mlp_choices for m in ms})
        uniq_k = sorted({k for ks in self.kv_choices for k in ks})
        rows = [
            ("mode", self.mode),
            ("layers", f"{a.num_layers} (min depth {self.min_depth})"),
        ]
        if self.mode == "first_n":
            rows.append(("depth choices", ", ".join(map(str, self.depth_choices))))
        else:
            rows.append(("always kept", ", ".join(map(str, self.always_keep)) or "-"))
        rows += [
            ("MLP sizes", f"{', '.join(map(str, uniq_m))} (of {a.intermediate_size})"),
            (
                "KV groups",
                f"{', '.join(map(str, uniq_k))} (of {a.num_kv_heads}; {a.heads_per_group} query heads each)",
            ),
            *(
                [("weight bits", ", ".join(map(str, sorted({b for bs in self.bits_choices for b in bs}))))]
                if self.bits_choices
                else []
            ),
            ("variables", str(len(self.variable_names))),
            ("sub-networks", f"{self.size():.3e}" if self.size() > 10**6 else str(self.size())),
            ("params (largest)", f"{self.largest().num_params(a):,}"),
            ("params (smallest)", f"{self.smallest().num_params(a):,}"),
        ]
        return rows


def _sizes(spec, full: int, where: str) -> tuple[int, ...]:
    """MLP choices as fractions (<= 1.0) or absolute sizes (> 1)."""
    if spec is None:
        spec = [0.25, 0.5, 0.75, 1.0]
    if not isinstance(spec, list) or not spec:
        raise LlamanasError(f"{where} must be a non-empty list of fractions or sizes; got {spec!r}.")
    out = set()
    for v in spec:
        if not isinstance(v, (int, float)) or v <= 0:
            raise LlamanasError(f"{where}: {v!r} is not a positive fraction or size.")
        size = _round_size(float(v), full) if (isinstance(v, float) and v <= 1.0) else int(v)
        if size > full:
            raise LlamanasError(f"{where}: size {size} exceeds the model's intermediate size {full}.")
        out.add(size)
    return tuple(sorted(out))


def _bits(spec, where: str) -> tuple[int, ...]:
    """Weight-precision choices: a non-empty list drawn from 4, 8, 16."""
    if not isinstance(spec, list) or not spec or any(b not in BITS for b in spec):
        raise LlamanasError(f"{where} must be a non-empty list drawn from {list(BITS)}; got {spec!r}.")
    return tuple(sorted(set(spec)))


def _groups(spec, full: int, where: str) -> tuple[int, ...]:
    if spec is None:
        return tuple(range(1, full + 1))
    if not isinstance(spec, list) or not spec:
        raise LlamanasError(f"{where} must be a non-empty list of KV-group counts; got {spec!r}.")
    bad = [g for g in spec if not isinstance(g, int) or not 1 <= g <= full]
    if bad:
        raise LlamanasError(f"{where}: {bad} are not KV-group counts in 1..{full}.")
    return tuple(sorted(set(spec)))
