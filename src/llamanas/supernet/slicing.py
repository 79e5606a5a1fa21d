"""Slicing: a sub-network of the super-network as an in-memory standalone model.

The weights of ``cfg`` are copied out of the full ones (first-k rows/columns, kept layers renumbered), so
the result is an ordinary family model, or a ``llamanas_<family>`` one when layer sizes differ
(``model/hf_types.py``). ``build_extracted(model, cfg)`` equals ``supernet.subnet(cfg)`` (tested).

With bias compensation (``compensation.py``) the sliced ``down_proj`` / ``o_proj`` get real output
biases: such a model is always a ``llamanas_<family>`` one with ``layer_output_bias`` set (the HF classes of
Mistral and Qwen2 have no MLP or output biases, and LLaMA's ``mlp_bias`` / ``attention_bias`` would add
zero biases to five more linears), and ``build_extracted(model, cfg, supernet.compensation)`` still
equals ``supernet.subnet(cfg)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.families import ELASTIC_PREFIX, family_of
from llamanas.model.hf_types import LAYER_KV, LAYER_MLP, LAYER_OUTPUT_BIAS, elastic_classes
from llamanas.supernet.precision import DEFAULT_GROUP_SIZE, apply_precision
from llamanas.supernet.subnet import SubnetConfig


def output_biased(model, cfg: SubnetConfig, compensation=None) -> bool:
    """Whether ``cfg``'s extracted model carries output biases on ``down_proj`` / ``o_proj``: with bias
    compensation and a sliced layer, or when ``model`` has them already (an extracted model)."""
    if getattr(model.config, LAYER_OUTPUT_BIAS, False):
        return True
    if compensation is None:
        return False
    arch = Arch.from_hf(model.config)  # a skipped block (0) has no output to bias
    return any(0 < m < arch.intermediate_size for m in cfg.mlp) or any(
        0 < g < arch.num_kv_heads for g in cfg.kv_groups
    )


def iter_sliced(
    model, cfg: SubnetConfig, compensation=None, overrides: dict[str, torch.Tensor] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The kept weights of ``cfg`` under the extracted model's names (consecutive layer indices), one
    tensor at a time, as views into ``model``'s full weights: copying is the caller's choice.

    ``compensation`` (a ``compensation.Compensation``) adds output biases to ``down_proj`` / ``o_proj``
    (zero in layers at full width); ``overrides`` replaces tensors by extracted name (least-squares repair).
    A skipped block (size 0) contributes no tensor, nor does the RMSNorm before it.
    """
    arch = Arch.from_hf(model.config)
    family = family_of(model.config)
    hd, rep = arch.head_dim, arch.heads_per_group
    prefix = "model.layers."
    overrides = overrides or {}
    biased = output_biased(model, cfg, compensation)
    h = cfg.width(arch)  # the residual stream: the embeddings' and LM head's columns, every norm's channels
    sd = model.state_dict()
    for name, t in sd.items():
        if not name.startswith(prefix):
            yield name, (t[..., :h] if t.ndim == 2 else t[:h]).detach()
    (attn_out,), (mlp_out,) = family.attention_cols, family.mlp_cols
    for pos, (i, m, g) in enumerate(zip(cfg.layers, cfg.mlp, cfg.kv_groups, strict=True)):
        rows, cols = family.rows_and_cols(g * rep * hd, g * hd, m)
        src = f"{prefix}{i}."
        dropped = tuple(
            [f"{family.attention}.", f"{family.attention_norm}."] * (g == 0)
            + [f"{family.mlp}.", f"{family.mlp_norm}."] * (m == 0)
        )
        # Output biases to add (compensation) or create (zero where the source has none).
        extra: dict[str, torch.Tensor | None] = {}
        if biased:
            down, o = (
                sd[f"{src}{family.mlp}.{mlp_out}.weight"],
                sd[f"{src}{family.attention}.{attn_out}.weight"],
            )
            if m:
                extra[f"{family.mlp}.{mlp_out}.bias"] = (
                    compensation.mlp_bias(i, m, down) if compensation else None
                )
            if g:
                extra[f"{family.attention}.{attn_out}.bias"] = (
                    compensation.kv_bias(i, g, o) if compensation else None
                )
        for name, t in sd.items():
            if not name.startswith(src):
                continue
            rest = name[len(src) :]
            if rest.startswith(dropped):
                continue
            module = rest.split(".")[-2] if rest.count(".") >= 1 else ""
            if module in rows:
                t = t[: rows[module]]
                t = t[:, :h] if t.ndim == 2 else t  # reads the residual stream
            elif module in cols:
                t = t[:h]  # writes the residual stream (weight rows, bias)
                if rest.endswith("weight"):
                    t = t[:, : cols[module]]
                if rest in extra:
                    b = extra.pop(rest)
                    t = t if b is None else t + b[:h]
            elif t.ndim == 1:  # the blocks' RMSNorms
                t = t[:h]
            out = f"{prefix}{pos}.{rest}"
            yield out, overrides.get(out, t).detach()
        for rest, b in extra.items():
            out = f"{prefix}{pos}.{rest}"
            if out not in overrides and b is None:
                weight = sd[src + rest.removesuffix("bias") + "weight"]
                b = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
            yield out, (overrides[out] if out in overrides else b[:h]).detach()


def sliced_state_dict(
    model, cfg: SubnetConfig, compensation=None, overrides: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The kept weights of ``cfg``, renamed to consecutive layer indices (copies, contiguous)."""
    return {name: t.clone().contiguous() for name, t in iter_sliced(model, cfg, compensation, overrides)}


def extracted_config(hf_config, cfg: SubnetConfig, output_bias: bool = False):
    """(HF config object, model class) of ``cfg``'s standalone model: the family's own when uniform
    and without output biases (``output_bias``, see ``output_biased``)."""
    family = family_of(hf_config)
    d, plain = subnet_config_dict(hf_config, cfg, output_bias)
    model_type = d.pop("model_type")
    config_cls, model_cls = family.classes() if plain else elastic_classes(family)
    new_config = config_cls(**d)
    assert new_config.model_type == model_type
    return new_config, model_cls


def subnet_config_dict(hf_config, cfg: SubnetConfig, output_bias: bool = False) -> tuple[dict, bool]:
    """The HF config dict of the extracted model, and whether it is a plain (family) checkpoint."""
    arch = Arch.from_hf(hf_config)
    family = family_of(hf_config)
    d = hf_config.to_dict()
    for key in ("_name_or_path", "architectures", "auto_map", "transformers_version", "quantization_config"):
        d.pop(key, None)
    for key in (LAYER_MLP, LAYER_KV):
        d.pop(key, None)
    output_bias = bool(d.pop(LAYER_OUTPUT_BIAS, False)) or output_bias
    d["num_hidden_layers"] = cfg.depth
    if isinstance(d.get("layer_types"), list):
        d["layer_types"] = [d["layer_types"][i] for i in cfg.layers]
    d["head_dim"] = arch.head_dim
    d["hidden_size"] = cfg.width(arch)
    if cfg.is_uniform() and not output_bias:
        plain = dict(d, intermediate_size=cfg.mlp[0])
        plain["num_key_value_heads"] = cfg.kv_groups[0]
        plain["num_attention_heads"] = cfg.kv_groups[0] * arch.heads_per_group
        plain["model_type"] = family.model_type
        config_cls, _ = family.classes()
        try:
            config_cls(**{k: v for k, v in plain.items() if k != "model_type"}).validate()
            return plain, True
        except Exception:  # noqa: BLE001 - e.g. hidden size not a multiple of the new head count
            pass
    # Per-layer sizes: the base sizes stay those of the source model (they pass HF's validation).
    d["model_type"] = ELASTIC_PREFIX + family.model_type
    d[LAYER_MLP] = list(cfg.mlp)
    d[LAYER_KV] = list(cfg.kv_groups)
    if output_bias:
        d[LAYER_OUTPUT_BIAS] = True
    return d, False


def build_extracted(
    model, cfg: SubnetConfig, compensation=None, overrides: dict[str, torch.Tensor] | None = None
):
    """An in-memory standalone model of ``cfg`` (same dtype as ``model``), with ``compensation``'s
    output biases and ``overrides``' tensors when given (see ``iter_sliced``)."""
    cfg.check(Arch.from_hf(model.config))
    new_config, model_cls = extracted_config(model.config, cfg, output_biased(model, cfg, compensation))
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        new = model_cls(new_config)
    state = sliced_state_dict(model, cfg, compensation, overrides)
    missing, unexpected = new.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and new_config.tie_word_embeddings)]
    if missing or unexpected:
        raise LlamanasError(f"Extraction mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    if new_config.tie_word_embeddings:
        new.tie_weights()
    # Non-persistent buffers (rotary inv_freq) were created on meta; rebuild them on the CPU.
    for name, module in new.named_modules():
        if hasattr(module, "inv_freq") and module.inv_freq.is_meta:
            src = model.get_submodule(name) if name else model
            module.register_buffer("inv_freq", src.inv_freq.detach().clone(), persistent=False)
            if hasattr(module, "original_inv_freq"):
                module.original_inv_freq = module.inv_freq
    return new.to(dtype).eval()


def standalone(
    supernet,
    cfg: SubnetConfig,
    group_size: int | None = None,
    overrides: dict[str, torch.Tensor] | None = None,
):
    """``cfg`` of ``supernet`` as an in-memory standalone model; the super-network's state is kept, and
    its bias compensation, if any, goes with it.

    A config with per-layer ``bits`` below 16 (joint precision search) comes out quantized at those
    bits: the super-network's elastic slices only run in 16/32 bits, so this is how such a config runs.
    """
    with supernet.full_weights(cfg) as model:  # slices are taken from the full weights
        new = build_extracted(model, cfg, supernet.compensation, overrides)
    if cfg.quantized:
        apply_precision(new, cfg.bits, group_size or DEFAULT_GROUP_SIZE)
    return new


@contextmanager
def subnet_model(supernet, cfg: SubnetConfig) -> Iterator[torch.nn.Module]:
    """The model that runs ``cfg``, for scoring or timing: the super-network with ``cfg`` switched on in
    place, or, for per-layer bits below 16 (which no elastic slice runs), its extracted quantized copy.
    The one place that decides how a sub-network runs (``eval``, the search's evaluator)."""
    if cfg.quantized:
        yield standalone(supernet, cfg)
    else:
        with supernet.subnet(cfg) as model:
            yield model
