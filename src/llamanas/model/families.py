"""Model families: what llamanas needs to know about an HF architecture, as data.

Every fact about a family lives in its row: HF class names, where the attention and MLP blocks sit in a
decoder layer, the names of their linears, and bias rules the HF config does not state (Qwen2's q/k/v
biases). All supported families share LLaMA's layout, so the rows differ only in names and biases. To add
a family, add one ``Family`` row and a parity test on a tiny random model (tests/conftest.py FAMILY_KW).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import transformers
from torch import nn
from transformers import PretrainedConfig

from llamanas.errors import LlamanasError


@dataclass(frozen=True)
class LinearSite:
    """One linear of a decoder layer and where it sits: enough to read it, name it to peft, or replace
    it (the parent and name peft's ``_replace_module`` takes)."""

    layer: int  # position of its decoder layer in ``model.get_decoder().layers``
    block: str  # attribute of the decoder layer holding it (the family's ``attention`` or ``mlp``)
    name: str  # attribute of the block
    module: nn.Module
    parent: nn.Module  # the block
    path: str  # module path (from the model for ``decoder_linears``, from the layer for ``Family.sites``)

    def replace(self, new: nn.Module) -> nn.Module:
        """Put ``new`` in this linear's place (the site keeps the old module); returns ``new``."""
        setattr(self.parent, self.name, new)
        return new


@dataclass(frozen=True)
class Family:
    model_type: str  # HF ``config.model_type``
    config_class: str  # name in ``transformers``
    model_class: str  # name in ``transformers``
    qkv_bias: bool = False  # q/k/v projections carry biases whatever the config says (Qwen2)
    attention: str = "self_attn"  # attribute of a decoder layer holding the attention block
    mlp: str = "mlp"  # attribute of a decoder layer holding the MLP block
    attention_norm: str = "input_layernorm"  # the RMSNorm before the attention block
    mlp_norm: str = "post_attention_layernorm"  # the RMSNorm before the MLP block
    # Linears of each block. Rows: sliced on their output; cols: sliced on their input. The attention's
    # rows are the query's first, then the keys' and values' (sliced by whole KV groups).
    attention_rows: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    attention_cols: tuple[str, ...] = ("o_proj",)
    mlp_rows: tuple[str, ...] = ("gate_proj", "up_proj")
    mlp_cols: tuple[str, ...] = ("down_proj",)

    @property
    def linears(self) -> tuple[str, ...]:
        """The seven linear names of a decoder layer, attention first."""
        return self.attention_rows + self.attention_cols + self.mlp_rows + self.mlp_cols

    def sites(self, layer, index: int = 0, prefix: str = "") -> Iterator[LinearSite]:
        """The linears of decoder ``layer`` and where they sit, attention first (of an extracted model,
        those of the blocks it keeps). Every walk over a layer's linears goes through here, so a family
        with other names is walked by its row, never by LLaMA's. ``index`` and ``prefix`` (the layer's
        module path with a trailing dot) only label the sites."""
        for name in self.linears:
            block = self.attention if name in self.attention_rows + self.attention_cols else self.mlp
            parent = getattr(layer, block)
            module = getattr(parent, name, None)
            if module is not None:
                yield LinearSite(index, block, name, module, parent, f"{prefix}{block}.{name}")

    def linears_of(self, layer) -> dict:
        """The linears of decoder ``layer`` by name, attention first (of an extracted model, those of the
        blocks it keeps)."""
        return {site.name: site.module for site in self.sites(layer)}

    def rows_and_cols(self, q, kv, mlp) -> tuple[dict, dict]:
        """What each linear is cut by, by name: (on its output rows, on its input columns).

        ``q``, ``kv`` and ``mlp`` describe the query, key/value and MLP channels: sizes when slicing,
        index tensors when permuting. The attention output takes the query's channels as input.
        """
        query, *key_value = self.attention_rows
        rows = {query: q, **dict.fromkeys(key_value, kv), **dict.fromkeys(self.mlp_rows, mlp)}
        cols = {**dict.fromkeys(self.attention_cols, q), **dict.fromkeys(self.mlp_cols, mlp)}
        return rows, cols

    def classes(self):
        return getattr(transformers, self.config_class), getattr(transformers, self.model_class)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in [
        Family("llama", "LlamaConfig", "LlamaForCausalLM"),
        Family("mistral", "MistralConfig", "MistralForCausalLM"),
        Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM", qkv_bias=True),
    ]
}

# Extracted sub-networks with per-layer sizes are saved under these model types (see extract.py).
ELASTIC_PREFIX = "llamanas_"


def base_model_type(config: PretrainedConfig) -> str | None:
    """The family model type of a config, also for our ``llamanas_<family>`` types."""
    model_type = getattr(config, "model_type", None)
    if model_type and model_type.startswith(ELASTIC_PREFIX):
        model_type = model_type[len(ELASTIC_PREFIX) :]
    return model_type


def family_of(config: PretrainedConfig, source: str = "model") -> Family:
    """The family of an HF config, or a clear error that lists the supported ones."""
    model_type = base_model_type(config)
    if model_type not in FAMILIES:
        raise LlamanasError(
            f"Model type {model_type!r} of {source} is not supported. "
            f"Supported model types: {', '.join(sorted(FAMILIES))}."
        )
    return FAMILIES[model_type]


def decoder_linears(model) -> Iterator[LinearSite]:
    """Every linear of ``model``'s decoder layers, layer by layer, found by the family row of its config.

    Generated lazily, so a caller may ``replace`` each site as it comes (peft's ``inject_adapter``
    walks the same way).
    """
    family = family_of(model.config)
    layers = model.get_decoder().layers
    prefix = next(name for name, module in model.named_modules() if module is layers)
    for i, layer in enumerate(layers):
        yield from family.sites(layer, i, f"{prefix}.{i}.")
