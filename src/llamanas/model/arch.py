"""The base model's dimensions that every size, count and slice depends on, read from its HF config."""

from __future__ import annotations

from dataclasses import dataclass

from llamanas.model.families import FAMILIES, base_model_type


@dataclass(frozen=True)
class Arch:
    """The dimensions of the base model that sizes depend on (read from the HF config)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf(cls, config) -> Arch:
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        family = FAMILIES.get(base_model_type(config))
        bias = bool(getattr(config, "attention_bias", False)) or bool(family and family.qkv_bias)
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            attention_bias=bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
        )

    def layer_params(self, mlp: int, kv_groups: int, hidden: int | None = None) -> int:
        """Parameters of one decoder layer with ``mlp`` MLP channels and ``kv_groups`` KV groups on a
        residual stream of ``hidden`` channels (None: the model's); 0 of either is a skipped block, which has
        no weights and no RMSNorm of its own."""
        h, hd, rep = hidden or self.hidden_size, self.head_dim, self.heads_per_group
        q, kv = kv_groups * rep * hd, kv_groups * hd
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.attention_bias else 0)
        mlp_params = 3 * h * mlp + (2 * mlp + h if self.mlp_bias and mlp else 0)
        return attn + mlp_params + h * ((kv_groups > 0) + (mlp > 0))  # each kept block's RMSNorm

    def kv_bytes_per_token(self, kv_groups: int, dtype_bytes: int = 2) -> int:
        """KV-cache bytes one layer with ``kv_groups`` KV groups stores per token (keys and values)."""
        return 2 * kv_groups * self.head_dim * dtype_bytes

    def fixed_params(self, embeddings: bool = True, hidden: int | None = None) -> int:
        """Parameters outside the decoder layers: the final norm, and the embeddings (with an untied head),
        on a residual stream of ``hidden`` channels (None: the model's)."""
        h = hidden or self.hidden_size
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return h + (emb if embeddings else 0)

    def num_params(self) -> int:
        """Parameters of the whole model, from its config alone (nothing loaded)."""
        per_layer = self.layer_params(self.intermediate_size, self.num_kv_heads)
        return self.num_layers * per_layer + self.fixed_params()
