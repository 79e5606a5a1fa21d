"""Extraction: a sub-network becomes a standalone, smaller HF checkpoint.

When every kept layer has the same MLP size and KV groups, the checkpoint is a plain checkpoint of the
source family (``llama``, ``mistral``, ``qwen2``) that needs nothing of ours. Otherwise it is saved under
the model type ``llamanas_<family>``: the family's own config plus two per-layer lists
(``layer_intermediate_sizes``, ``layer_num_key_value_heads``), and a model class that sizes each layer
from them. Importing ``llamanas`` registers these types with ``AutoConfig``/``AutoModelForCausalLM``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from torch import nn

from llamanas.errors import LlamanasError
from llamanas.families import ELASTIC_PREFIX, FAMILIES, Family, family_of
from llamanas.space import Arch, SubnetConfig

LAYER_MLP = "layer_intermediate_sizes"
LAYER_KV = "layer_num_key_value_heads"
SUBNET_FILE = "llamanas_subnet.json"


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
            resize_layers(self, getattr(config, LAYER_MLP), getattr(config, LAYER_KV))

    ElasticForCausalLM.__name__ = f"Llamanas{base_model.__name__}"
    return config_cls, ElasticForCausalLM


def resize_layers(model, mlp_sizes: list[int], kv_heads: list[int]) -> None:
    """Replace each layer's linears by ones of the per-layer sizes (weights are loaded afterwards)."""
    arch = Arch.from_hf(model.config)
    h, hd, rep = arch.hidden_size, arch.head_dim, arch.heads_per_group
    layers = model.get_decoder().layers
    if len(mlp_sizes) != len(layers) or len(kv_heads) != len(layers):
        raise LlamanasError(f"{LAYER_MLP}/{LAYER_KV} need one value per layer ({len(layers)}).")
    for layer, m, g in zip(layers, mlp_sizes, kv_heads, strict=True):
        attn, mlp = layer.self_attn, layer.mlp
        ab, mb = arch.attention_bias, arch.mlp_bias
        attn.q_proj = nn.Linear(h, g * rep * hd, bias=attn.q_proj.bias is not None)
        attn.k_proj = nn.Linear(h, g * hd, bias=attn.k_proj.bias is not None or ab)
        attn.v_proj = nn.Linear(h, g * hd, bias=attn.v_proj.bias is not None or ab)
        attn.o_proj = nn.Linear(g * rep * hd, h, bias=attn.o_proj.bias is not None)
        mlp.gate_proj = nn.Linear(h, m, bias=mb)
        mlp.up_proj = nn.Linear(h, m, bias=mb)
        mlp.down_proj = nn.Linear(m, h, bias=mb)


def register() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    for family in FAMILIES.values():
        config_cls, model_cls = elastic_classes(family)
        try:
            AutoConfig.register(config_cls.model_type, config_cls)
            AutoModelForCausalLM.register(config_cls, model_cls)
        except ValueError:  # already registered (module re-imported)
            pass


register()


def sliced_state_dict(model, cfg: SubnetConfig) -> dict[str, torch.Tensor]:
    """The kept weights of ``cfg``, renamed to consecutive layer indices (copies, contiguous)."""
    arch = Arch.from_hf(model.config)
    hd, rep = arch.head_dim, arch.heads_per_group
    prefix = "model.layers."
    out = {}
    sd = model.state_dict()
    for name, t in sd.items():
        if not name.startswith(prefix):
            out[name] = t.detach().clone()
    for pos, (i, m, g) in enumerate(zip(cfg.layers, cfg.mlp, cfg.kv_groups, strict=True)):
        q, kv = g * rep * hd, g * hd
        rows = {"q_proj": q, "k_proj": kv, "v_proj": kv, "gate_proj": m, "up_proj": m}
        cols = {"o_proj": q, "down_proj": m}
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
            out[f"{prefix}{pos}.{rest}"] = t.detach().clone().contiguous()
    return out


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
    family = family_of(model.config)
    d, plain = subnet_config_dict(model.config, cfg)
    model_type = d.pop("model_type")
    if plain:
        config_cls, model_cls = family.classes()
    else:
        config_cls, model_cls = elastic_classes(family)
    new_config = config_cls(**d)
    assert new_config.model_type == model_type
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
        from llamanas.quantize import DEFAULT_GROUP_SIZE, apply_precision

        apply_precision(new, cfg.bits, group_size or DEFAULT_GROUP_SIZE)
    return new


def extract(
    supernet,
    cfg: SubnetConfig,
    out_dir: str | Path,
    tokenizer=None,
    metadata: dict | None = None,
    quantize: str | None = None,
    group_size: int | None = None,
) -> Path:
    """Write the sub-network ``cfg`` of ``supernet`` as a standalone checkpoint in ``out_dir``.

    ``quantize`` (``int8`` | ``int4``), or per-layer ``cfg.bits`` below 16 from a joint precision search,
    writes it weight-only quantized instead (``quantize.save_quantized`` format; reload with
    ``quantize.load_quantized``), in one step and without a 16-bit copy on disk.
    """
    supernet.space.validate(cfg) if supernet.space.mode == "first_n" else cfg.check(supernet.arch)
    from llamanas.quantize import DEFAULT_GROUP_SIZE, check_method, quantize_model, save_quantized

    if quantize is not None:
        check_method(quantize)  # fail before the work
        if cfg.quantized:
            raise LlamanasError("The sub-network has its own per-layer 'bits'; do not also pass quantize.")
    new = standalone(supernet, cfg, group_size)  # quantized already if cfg has per-layer bits
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {"subnet": cfg.to_dict(), "params": cfg.num_params(supernet.arch), **(metadata or {})}
    if quantize is not None or cfg.quantized:
        if quantize is not None:
            quantize_model(new, quantize, group_size or DEFAULT_GROUP_SIZE, backend="cpu")
        save_quantized(new, out, tokenizer, metadata=info)
    else:
        new.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    (out / SUBNET_FILE).write_text(json.dumps(info, indent=2))
    return out
