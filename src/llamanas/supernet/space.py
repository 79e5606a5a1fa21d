"""The search space and the sub-network config.

A ``SubnetConfig`` names which decoder layers are kept and, for each kept layer, its MLP intermediate
size and how many KV groups of attention it keeps (whole groups, so GQA stays valid). A size of 0 skips
that block: ``kv_groups`` 0 is a layer without attention, ``mlp`` 0 one without MLP (the residual passes
through); a layer with both skipped is a skipped layer and is left out of ``layers``. A ``SearchSpace``
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
# Why a search space keeps attention in the first kept layer: llama.cpp takes the head size from the first
# layer of a GGUF file, so a sub-network without it there could not be deployed (deploy/gguf.py); it also
# guarantees the one attention block every sub-network needs.
FIRST_ATTENTION = "llama.cpp takes the head size from the first layer"
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
        if min(self.mlp) < 0 or min(self.kv_groups) < 0:
            raise LlamanasError("'mlp' sizes and 'kv_groups' must be >= 0 (0 skips the block).")
        both = [i for i, m, g in zip(self.layers, self.mlp, self.kv_groups, strict=True) if m == 0 == g]
        if both:
            raise LlamanasError(
                f"Layers {both} skip both attention and MLP: a layer with no block is a skipped layer, "
                "leave it out of 'layers'."
            )
        if max(self.kv_groups) == 0:
            raise LlamanasError(
                "A sub-network must keep at least one attention block (kv_groups > 0 in some layer); "
                "without one no token sees another."
            )
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
        """Every layer the same sizes and no skipped block: a plain checkpoint of the family can hold it."""
        return len(set(self.mlp)) == 1 and len(set(self.kv_groups)) == 1 and not self.skips_blocks

    @property
    def skips_blocks(self) -> bool:
        """Whether some kept layer skips its attention or its MLP."""
        return min(self.mlp) == 0 or min(self.kv_groups) == 0

    def num_params(self, arch: Arch, embeddings: bool = True) -> int:
        """Parameters of the sub-network (the same count its extracted checkpoint has)."""
        layers = sum(arch.layer_params(m, g) for m, g in zip(self.mlp, self.kv_groups, strict=True))
        return layers + arch.fixed_params(embeddings)

    def kv_bytes(self, arch: Arch, dtype_bytes: int = 2) -> int:
        """KV-cache bytes per token of context (16-bit cache by default): what long context costs."""
        return sum(arch.kv_bytes_per_token(g, dtype_bytes) for g in self.kv_groups)

    def macs_per_token(self, arch: Arch, seq_len: int = 128) -> int:
        """Multiply-accumulates per token when processing ``seq_len`` tokens with causal attention.

        Linear layers (decoder and LM head) plus attention scores and weighted sums; a token attends on
        average to (seq_len + 1) / 2 positions.
        """
        macs = arch.vocab_size * arch.hidden_size  # LM head
        macs += sum(layer_macs(arch, m, g, seq_len) for m, g in zip(self.mlp, self.kv_groups, strict=True))
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


def layer_macs(arch: Arch, mlp: int, kv_groups: int, seq_len: int = 128) -> float:
    """Multiply-accumulates per token of one decoder layer (``SubnetConfig.macs_per_token``)."""
    h, hd, rep = arch.hidden_size, arch.head_dim, arch.heads_per_group
    q, kv = kv_groups * rep * hd, kv_groups * hd
    ctx = (seq_len + 1) / 2
    return h * q + 2 * h * kv + q * h + 3 * h * mlp + 2 * ctx * q  # QK^T and AV for every query head


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
        sizes = {_round_size(f, arch.intermediate_size) for f in mlp_fractions} | ({0} if skip_mlp else set())
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
        allowed = {
            "mode",
            "min_depth",
            "depth_choices",
            "always_keep",
            "mlp_choices",
            "kv_groups",
            "bits",
            "layers",
            "skip_attention",
            "skip_mlp",
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
        skip_attn, skip_mlp = _flag(d, "skip_attention"), _flag(d, "skip_mlp")
        mlp_default = _sizes(d.get("mlp_choices"), arch.intermediate_size, "mlp_choices")
        kv_default = _groups(d.get("kv_groups"), arch.num_kv_heads, "kv_groups")
        mlp = [_skip(mlp_default, skip_mlp, "mlp_choices" not in d)] * arch.num_layers
        kv = [_skip(kv_default, skip_attn, "kv_groups" not in d)] * arch.num_layers
        bits = [_bits(d["bits"], "bits")] * arch.num_layers if "bits" in d else None
        for key, spec in (d.get("layers") or {}).items():
            i = int(key)
            if not 0 <= i < arch.num_layers:
                raise LlamanasError(
                    f"'layers' names layer {i}, but the model has layers 0..{arch.num_layers - 1}."
                )
            allowed_keys = {"mlp_choices", "kv_groups", "bits", "skip_attention", "skip_mlp"}
            unknown_keys = set(spec) - allowed_keys
            if unknown_keys:
                raise LlamanasError(
                    f"layers.{i}: unknown keys {sorted(unknown_keys)}; allowed: {', '.join(sorted(allowed_keys))}."
                )
            if "bits" in spec:
                if bits is None:
                    raise LlamanasError(f"layers.{i}.bits needs a top-level 'bits' list (e.g. [4, 8, 16]).")
                bits[i] = _bits(spec["bits"], f"layers.{i}.bits")
            if "mlp_choices" in spec:
                mlp[i] = _sizes(spec["mlp_choices"], arch.intermediate_size, f"layers.{i}.mlp_choices")
            if "kv_groups" in spec:
                kv[i] = _groups(spec["kv_groups"], arch.num_kv_heads, f"layers.{i}.kv_groups")
            if "skip_mlp" in spec:
                mlp[i] = _skip(mlp[i], _flag(spec, "skip_mlp", f"layers.{i}."), True)
            if "skip_attention" in spec:
                kv[i] = _skip(kv[i], _flag(spec, "skip_attention", f"layers.{i}."), True)
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
        )

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
        )

    def size(self) -> int:
        """The number of distinct sub-networks (exact, may be huge): kept layers never skip both blocks,
        and the first kept layer keeps its attention (``FIRST_ATTENTION``)."""
        n = self.arch.num_layers
        nb = [len(b) for b in self.bits_choices] or [1] * n
        every = [len(self._pairs(i)) * nb[i] for i in range(n)]
        attn = [sum(1 for _, g in self._pairs(i) if g > 0) * nb[i] for i in range(n)]
        if self.mode == "first_n":
            return sum(attn[0] * math.prod(every[1:d]) for d in self.depth_choices)
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
        return sum(after[self.min_depth :])

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

    def skipped_blocks(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(attention skipped, MLP skipped), each (..., layers) bool, by the width genes alone (choice 0
        is a skipped block when the layer's smallest choice is 0)."""
        genes = self.split_genes(np.asarray(X))
        kv_zero = np.array([k[0] == 0 for k in self.kv_choices])
        mlp_zero = np.array([m[0] == 0 for m in self.mlp_choices])
        return (genes["kv"] == 0) & kv_zero, (genes["mlp"] == 0) & mlp_zero

    def kept(self, X: np.ndarray) -> np.ndarray:
        """(..., layers) bool: which layers a (repaired) vector, or each row of X, keeps (a layer whose
        genes skip both blocks is not kept)."""
        X = np.asarray(X)
        genes = self.split_genes(X)
        if "depth" in genes:
            depth = np.array(sorted(self.depth_choices))[genes["depth"][..., 0]]
            on = np.arange(self.arch.num_layers) < depth[..., None]
        else:
            on = genes["keep"].astype(bool)
        attn_off, mlp_off = self.skipped_blocks(X)
        return on & ~(attn_off & mlp_off)

    def canonical(self, X: np.ndarray) -> np.ndarray:
        """A copy of X (a vector or rows) where the genes of skipped layers hold their largest choice, the
        filler ``encode`` writes: vectors that decode to the same sub-network become equal."""
        X = np.array(X)
        keep = self.kept(X)
        genes = self.split_genes(X)
        if "keep" in genes:
            genes["keep"][...] = keep
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
        """Clip to bounds; a layer whose genes skip both blocks is a skipped layer; switch on always-kept
        layers and, if too shallow, the lowest-index skipped ones (a layer switched on, or one first_n
        must keep, gets its largest attention if it had no block); the first kept layer gets its largest
        attention if it skipped it (``FIRST_ATTENTION``)."""
        xl, xu = self.bounds()
        x = np.clip(np.asarray(x, dtype=int), xl, xu)
        genes = self.split_genes(x)  # views: writing them writes x
        top_kv = [len(k) - 1 for k in self.kv_choices]

        def give_block(i: int) -> None:  # a kept layer with no block gets attention (else its MLP)
            if self.kv_choices[i][-1] > 0:
                genes["kv"][i] = top_kv[i]
            else:
                genes["mlp"][i] = len(self.mlp_choices[i]) - 1

        attn_off, mlp_off = self.skipped_blocks(x)
        both = attn_off & mlp_off
        if self.mode == "per_layer":
            keep = genes["keep"]
            keep[both] = 0
            for i in self.always_keep:
                if not keep[i]:
                    keep[i] = 1
                    if both[i]:
                        give_block(i)
            missing = self.min_depth - int(keep.sum())
            for i in range(len(keep)):
                if missing <= 0:
                    break
                if not keep[i]:
                    keep[i] = 1
                    if both[i]:
                        give_block(i)
                    missing -= 1
        else:
            depth = sorted(self.depth_choices)[int(genes["depth"][0])]
            for i in np.flatnonzero(both[:depth]):  # first_n keeps layers 0..depth-1
                give_block(int(i))
        kept = np.flatnonzero(self.kept(x))
        if len(kept) and self.skipped_blocks(x)[0][kept[0]]:  # the first kept layer keeps attention
            genes["kv"][kept[0]] = top_kv[kept[0]]
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
            ("MLP sizes", f"{', '.join(map(str, uniq_m))} (of {a.intermediate_size}; 0 = MLP skipped)"),
            (
                "KV groups",
                f"{', '.join(map(str, uniq_k))} (of {a.num_kv_heads}; {a.heads_per_group} query heads each; "
                "0 = attention skipped)",
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


def _flag(d: dict, key: str, where: str = "") -> bool | None:
    """A yes/no key of a space file; None when absent."""
    if key not in d:
        return None
    if not isinstance(d[key], bool):
        raise LlamanasError(f"{where}{key} must be true or false; got {d[key]!r}.")
    return d[key]


def _skip(choices: tuple[int, ...], flag: bool | None, default: bool) -> tuple[int, ...]:
    """Add (true) or remove (false) the 0 choice, a skipped block; when not said, the default list gets
    it and a list the file spells out is taken as it is."""
    if flag is None:
        flag = True if default else None
    if flag is None:
        return choices
    return tuple(sorted(set(choices) | {0})) if flag else tuple(c for c in choices if c != 0)


def _sizes(spec, full: int, where: str) -> tuple[int, ...]:
    """MLP choices as fractions (<= 1.0) or absolute sizes (> 1); 0 skips the MLP."""
    if spec is None:
        spec = [0.25, 0.5, 0.75, 1.0]
    if not isinstance(spec, list) or not spec:
        raise LlamanasError(f"{where} must be a non-empty list of fractions or sizes; got {spec!r}.")
    out = set()
    for v in spec:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise LlamanasError(f"{where}: {v!r} is not a fraction, a size or 0 (MLP skipped).")
        size = _round_size(float(v), full) if (isinstance(v, float) and 0 < v <= 1.0) else int(v)
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
    bad = [g for g in spec if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= full]
    if bad:
        raise LlamanasError(f"{where}: {bad} are not KV-group counts in 0..{full} (0 skips attention).")
    return tuple(sorted(set(spec)))
