"""The ``llamanas_<family>`` model types: a family's own model with per-layer sizes.

When every kept layer of a sub-network has the same MLP size and KV groups, its checkpoint is a plain
checkpoint of the source family (``llama``, ``mistral``, ``qwen2``) that needs nothing of ours. Otherwise
it is saved under the model type ``llamanas_<family>``: the family's own config plus two per-layer lists
(``layer_intermediate_sizes``, ``layer_num_key_value_heads``), and a model class that sizes each layer
from them. Importing ``llamanas`` registers these types with ``AutoConfig``/``AutoModelForCausalLM``.
A third key, ``layer_output_bias`` (true), gives every layer's ``down_proj`` and ``o_proj`` an output bias
(bias compensation of a sliced sub-network; the families' own classes have none there, or, for LLaMA,
only together with biases on every other linear). A size of 0 in the per-layer lists is a skipped block:
the layer has no attention (no KV cache) or no MLP, and no RMSNorm before it; the residual passes through.
"""

from __future__ import annotations

import functools

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.families import ELASTIC_PREFIX, FAMILIES, Family, family_of

LAYER_MLP = "layer_intermediate_sizes"
LAYER_KV = "layer_num_key_value_heads"
LAYER_OUTPUT_BIAS = "layer_output_bias"


@functools.cache
def elastic_classes(family: Family):
    """(config class, model class) of the per-layer-size variant of ``family``."""
    base_config, base_model = family.classes()
    config_cls = type(
        f"Llamanas{base_config.__name__}", (base_config,), {"model_type": ELASTIC_PREFIX + family.model_type}
    )

    class ElasticForCausalLM(base_model):
        config_class = config_cls

        def __init__(self, config):
            super().__init__(config)
            resize_layers(
                self,
                getattr(config, LAYER_MLP),
                getattr(config, LAYER_KV),
                bool(getattr(config, LAYER_OUTPUT_BIAS, False)),
            )

    ElasticForCausalLM.__name__ = f"Llamanas{base_model.__name__}"
    return config_cls, ElasticForCausalLM


class NoAttention(nn.Module):
    """A skipped attention block: adds nothing to the residual and keeps no KV cache."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states.new_zeros(hidden_states.shape), None


class NoMLP(nn.Module):
    """A skipped MLP block: adds nothing to the residual."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states.new_zeros(hidden_states.shape)


def check_attention_skippable(layer_types, kv_groups) -> None:
    """Skipping attention renumbers the KV cache by the attention blocks that run, while the decoder
    indexes ``layer_types`` by layer: the two agree only when every layer has the same attention type."""
    if layer_types and len(set(layer_types)) > 1 and 0 in kv_groups:
        raise LlamanasError(
            f"This model mixes attention types ({sorted(set(layer_types))}); skipping attention blocks is "
            "supported only where every layer has the same type."
        )


def resize_layers(model, mlp_sizes: list[int], kv_heads: list[int], output_bias: bool = False) -> None:
    """Replace each layer's linears by ones of the per-layer sizes (weights are loaded afterwards);
    ``output_bias`` gives the column-sliced ones (``down_proj``, ``o_proj``) a bias. A size of 0 replaces
    the block and its norm by parameter-free pass-throughs; attention blocks are then numbered among
    those that remain, which is how the KV cache indexes them."""
    arch = Arch.from_hf(model.config)
    family = family_of(model.config)
    h, hd, rep = arch.hidden_size, arch.head_dim, arch.heads_per_group
    layers = model.get_decoder().layers
    if len(mlp_sizes) != len(layers) or len(kv_heads) != len(layers):
        raise LlamanasError(f"{LAYER_MLP}/{LAYER_KV} need one value per layer ({len(layers)}).")
    check_attention_skippable(getattr(model.config, "layer_types", None), kv_heads)
    attn_pos = 0
    for layer, m, g in zip(layers, mlp_sizes, kv_heads, strict=True):
        if g == 0:
            setattr(layer, family.attention, NoAttention())
            setattr(layer, family.attention_norm, nn.Identity())
        else:
            getattr(layer, family.attention).layer_idx = attn_pos
            attn_pos += 1
        if m == 0:
            setattr(layer, family.mlp, NoMLP())
            setattr(layer, family.mlp_norm, nn.Identity())
        rows, cols = family.rows_and_cols(g * rep * hd, g * hd, m)
        for site in family.sites(layer):
            # Each linear keeps the bias HF gave it from the config (and the family's q/k/v bias rule).
            in_f, out_f = (h, rows[site.name]) if site.name in rows else (cols[site.name], h)
            bias = site.module.bias is not None or (output_bias and site.name in cols)
            site.replace(nn.Linear(in_f, out_f, bias=bias))


def register() -> None:
    for family in FAMILIES.values():
        config_cls, model_cls = elastic_classes(family)
        try:
            AutoConfig.register(config_cls.model_type, config_cls)
            AutoModelForCausalLM.register(config_cls, model_cls)
        except ValueError:  # already registered (module re-imported)
            pass


register()
