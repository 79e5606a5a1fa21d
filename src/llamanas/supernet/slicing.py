"""Slicing: a sub-network of the super-network as an in-memory standalone model.

The weights of ``cfg`` are copied out of the full ones (first-k rows/columns, kept layers renumbered), so
the result is an ordinary family model, or a ``llamanas_<family>`` one when layer sizes differ
(``model/hf_types.py``). ``build_extracted(model, cfg)`` equals ``supernet.subnet(cfg)`` (tested).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.families import ELASTIC_PREFIX, family_of
from llamanas.model.hf_types import LAYER_KV, LAYER_MLP, elastic_classes
from llamanas.supernet.space import SubnetConfig


def iter_sliced(model, cfg: SubnetConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """The kept weights of ``cfg`` under the extracted model's names (consecutive layer indices), one
    tensor at a time, as views into ``model``'s full weights: copying is the caller's choice."""
    arch = Arch.from_hf(model.config)
    family = family_of(model.config)
    hd, rep = arch.head_dim, arch.heads_per_group
    prefix = "model.layers."
    sd = model.state_dict()
    for name, t in sd.items():
        if not name.startswith(prefix):
            yield name, t.detach()
    for pos, (i, m, g) in enumerate(zip(cfg.layers, cfg.mlp, cfg.kv_groups, strict=True)):
        rows, cols = family.rows_and_cols(g * rep * hd, g * hd, m)
        src = f"{prefix}{i}."
        for name, t in sd.items():
            if not name.startswith(src):
                continue
            rest = name[len(src) :]
            module = rest.split(".")[-2] if rest.count(".") >= 1 else ""
            if module in rows:
                t = t[: rows[module]]
            elif module in cols and rest.endswith("weight"):
                t = t[:, : cols[module]]
            yield f"{prefix}{pos}.{rest}", t.detach()


def sliced_state_dict(model, cfg: SubnetConfig) -> dict[str, torch.Tensor]:
    """The kept weights of ``cfg``, renamed to consecutive layer indices (copies, contiguous)."""
    return {name: t.clone().contiguous() for name, t in iter_sliced(model, cfg)}


def extracted_config(hf_config, cfg: SubnetConfig):
    """(HF config object, model class) of ``cfg``'s standalone model: the family's own when uniform."""
    family = family_of(hf_config)
    d, plain = subnet_config_dict(hf_config, cfg)
    model_type = d.pop("model_type")
    config_cls, model_cls = family.classes() if plain else elastic_classes(family)
    new_config = config_cls(**d)
    assert new_config.model_type == model_type
    return new_config, model_cls


def subnet_config_dict(hf_config, cfg: SubnetConfig) -> tuple[dict, bool]:
    """The HF config dict of the extracted model, and whether it is a plain (family) checkpoint."""
    arch = Arch.from_hf(hf_config)
    family = family_of(hf_config)
    d = hf_config.to_dict()
    for key in ("_name_or_path", "architectures", "auto_map", "transformers_version", "quantization_config"):
        d.pop(key, None)
    for key in (LAYER_MLP, LAYER_KV):
        d.pop(key, None)
    d["num_hidden_layers"] = cfg.depth
    if isinstance(d.get("layer_types"), list):
        d["layer_types"] = [d["layer_types"][i] for i in cfg.layers]
    d["head_dim"] = arch.head_dim
    if cfg.is_uniform():
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
    return d, False


def build_extracted(model, cfg: SubnetConfig):
    """An in-memory standalone model of ``cfg`` (same dtype as ``model``)."""
    cfg.check(Arch.from_hf(model.config))
    new_config, model_cls = extracted_config(model.config, cfg)
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        new = model_cls(new_config)
    state = sliced_state_dict(model, cfg)
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


def standalone(supernet, cfg: SubnetConfig, group_size: int | None = None):
    """``cfg`` of ``supernet`` as an in-memory standalone model; the super-network's state is kept.

    A config with per-layer ``bits`` below 16 (joint precision search) comes out quantized at those
    bits: the super-network's elastic slices only run in 16/32 bits, so this is how such a config runs.
    """
    previous = supernet.active
    supernet.reset()  # slices are taken from the full weights
    try:
        new = build_extracted(supernet.model, cfg)
    finally:
        supernet.activate(previous)
    if cfg.quantized:
        from llamanas.supernet.precision import DEFAULT_GROUP_SIZE, apply_precision

        apply_precision(new, cfg.bits, group_size or DEFAULT_GROUP_SIZE)
    return new
