"""The sub-network config: what one sub-network of the super-network is.

A ``SubnetConfig`` names which decoder layers are kept and, for each kept layer, its MLP intermediate
size and how many KV groups of attention it keeps (whole groups, so GQA stays valid). A size of 0 skips
that block: ``kv_groups`` 0 is a layer without attention, ``mlp`` 0 one without MLP (the residual passes
through); a layer with both skipped is a skipped layer and is left out of ``layers``. It is a plain
dataclass that round-trips through JSON. Which configs a search allows is ``supernet.space``'s concern.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch

BITS = (4, 8, 16)  # weight precisions of the joint architecture + precision search (16 = not quantized)


@dataclass(frozen=True)
class SubnetConfig:
    """One sub-network: kept layer indices (ascending) and, per kept layer, MLP size and KV groups.

    ``bits`` (optional, one per kept layer: 16, 8 or 4) is the weight precision of the layer's linears in
    a joint architecture + precision search; ``None`` means not quantized. ``hidden`` (optional) is the
    width of the residual stream every layer reads and writes, the embeddings and the LM head included: the
    first ``hidden`` channels in importance order (``importance.order_residual``); ``None`` keeps all.
    """

    layers: tuple[int, ...]
    mlp: tuple[int, ...]
    kv_groups: tuple[int, ...]
    bits: tuple[int, ...] | None = None
    hidden: int | None = None

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
        if self.hidden is not None:
            object.__setattr__(self, "hidden", int(self.hidden))
            if self.hidden < 1:
                raise LlamanasError(f"'hidden' must be a positive number of channels; got {self.hidden}.")
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
        if self.hidden is not None and self.hidden > arch.hidden_size:
            raise LlamanasError(f"hidden {self.hidden} exceeds the model's hidden size {arch.hidden_size}.")
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
        h = self.hidden
        layers = sum(arch.layer_params(m, g, h) for m, g in zip(self.mlp, self.kv_groups, strict=True))
        return layers + arch.fixed_params(embeddings, h)

    def width(self, arch: Arch) -> int:
        """The residual stream's channels (``hidden``, or the model's)."""
        return self.hidden or arch.hidden_size

    def kv_bytes(self, arch: Arch, dtype_bytes: int = 2) -> int:
        """KV-cache bytes per token of context (16-bit cache by default): what long context costs."""
        return sum(arch.kv_bytes_per_token(g, dtype_bytes) for g in self.kv_groups)

    def macs_per_token(self, arch: Arch, seq_len: int = 128) -> int:
        """Multiply-accumulates per token when processing ``seq_len`` tokens with causal attention.

        Linear layers (decoder and LM head) plus attention scores and weighted sums; a token attends on
        average to (seq_len + 1) / 2 positions.
        """
        h = self.width(arch)
        macs = arch.vocab_size * h  # LM head
        macs += sum(layer_macs(arch, m, g, seq_len, h) for m, g in zip(self.mlp, self.kv_groups, strict=True))
        return int(round(macs))

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"layers": list(self.layers), "mlp": list(self.mlp), "kv_groups": list(self.kv_groups)}
        if self.bits is not None:
            d["bits"] = list(self.bits)
        if self.hidden is not None:
            d["hidden"] = self.hidden
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SubnetConfig:
        if not isinstance(d, dict):
            raise LlamanasError(f"A sub-network config must be a JSON object; got {type(d).__name__}.")
        required = {"layers", "mlp", "kv_groups"}
        optional = {"bits", "hidden"}
        extra = set(d) - required - optional
        if extra:
            raise LlamanasError(
                f"Unknown sub-network config keys {sorted(extra)}; allowed: {sorted(required | optional)}."
            )
        missing = required - set(d)
        if missing:
            raise LlamanasError(f"Sub-network config is missing {sorted(missing)}.")
        bits = d.get("bits")
        return cls(
            tuple(d["layers"]),
            tuple(d["mlp"]),
            tuple(d["kv_groups"]),
            None if bits is None else tuple(bits),
            d.get("hidden"),
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


def layer_macs(arch: Arch, mlp: int, kv_groups: int, seq_len: int = 128, hidden: int | None = None) -> float:
    """Multiply-accumulates per token of one decoder layer (``SubnetConfig.macs_per_token``)."""
    h, hd, rep = hidden or arch.hidden_size, arch.head_dim, arch.heads_per_group
    q, kv = kv_groups * rep * hd, kv_groups * hd
    ctx = (seq_len + 1) / 2
    return h * q + 2 * h * kv + q * h + 3 * h * mlp + 2 * ctx * q  # QK^T and AV for every query head
