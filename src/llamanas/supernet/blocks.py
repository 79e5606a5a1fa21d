"""Block importance: how much each decoder layer, and each of its attention and MLP blocks, changes the
residual stream (Block Influence, ``1 - cos``: ShortGPT, Men et al. 2024, for layers; He et al. 2024, "What
Matters in Transformers? Not All Attention is Needed", for blocks).

It orders blocks the way ``importance.py`` orders channels: the least influential attention blocks are the
first to skip. Two users: the ``attention`` baseline (``evidence.baselines``) and the search's warm start
(``attention_configs``: the first population gets sub-networks that skip the least influential ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.families import family_of
from llamanas.supernet.importance import calibration_progress
from llamanas.supernet.subnet import SubnetConfig


def drop_attention_blocks(arch: Arch, attention_influence: Sequence[float], k: int) -> SubnetConfig:
    """Every layer kept at full width, the ``k`` attention blocks of least Block Influence skipped."""
    if not 0 <= k < arch.num_layers:
        raise LlamanasError(f"Can drop 0..{arch.num_layers - 1} attention blocks (one must stay); got {k}.")
    drop = set(sorted(range(arch.num_layers), key=lambda i: (attention_influence[i], -i))[:k])
    n = arch.num_layers
    kv = tuple(0 if i in drop else arch.num_kv_heads for i in range(n))
    return SubnetConfig(tuple(range(n)), (arch.intermediate_size,) * n, kv)


def block_influence(model, batches: Sequence[torch.Tensor]) -> list[float]:
    """ShortGPT's Block Influence of every decoder layer: 1 - mean over tokens of cos(input, output)."""
    return block_influence_per_block(model, batches)["layer"]


@torch.inference_mode()
def block_influence_per_block(model, batches: Sequence[torch.Tensor]) -> dict[str, list[float]]:
    """Block Influence of each decoder layer (``layer``: 1 - mean cos(input, output), ShortGPT) and of its
    attention and MLP block on their own (``attention``, ``mlp``: ``1 - mean cos(h, h + block)``, where h
    is the residual stream entering the block), over calibration tokens."""
    family = family_of(model.config)
    layers = model.get_decoder().layers
    n = len(layers)
    sums = {"layer": [0.0] * n, "attention": [0.0] * n, "mlp": [0.0] * n}
    count = [0] * n
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def cos_sum(h: torch.Tensor, out: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(h.double(), out.double(), dim=-1).sum())

    def pre(i):
        def fn(_module, args, kwargs):
            seen[i] = {"h": args[0] if args else kwargs["hidden_states"]}

        return fn

    def attn_hook(i):
        def fn(_module, _args, output):
            seen[i]["attn"] = output[0] if isinstance(output, tuple) else output

        return fn

    def mlp_hook(i):
        def fn(_module, _args, output):
            seen[i]["mlp"] = output

        return fn

    def post(i):
        def fn(_module, _args, _kwargs, output):
            s = seen.pop(i)
            h, a, m = s["h"], s["attn"], s["mlp"]
            sums["layer"][i] += cos_sum(h, output[0] if isinstance(output, tuple) else output)
            sums["attention"][i] += cos_sum(h, h + a)
            sums["mlp"][i] += cos_sum(h + a, h + a + m)
            count[i] += h.shape[0] * h.shape[1]

        return fn

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(getattr(layer, family.attention).register_forward_hook(attn_hook(i)))
        handles.append(getattr(layer, family.mlp).register_forward_hook(mlp_hook(i)))
        handles.append(layer.register_forward_hook(post(i), with_kwargs=True))
    try:
        for ids in calibration_progress(batches, "block influence"):
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if not count[0]:
        raise LlamanasError("Block influence needs calibration text; got none.")
    return {k: [1.0 - v / c for v, c in zip(vals, count, strict=True)] for k, vals in sums.items()}


def skippable_attention(space) -> list[int]:
    """The layers whose attention ``space`` lets a sub-network skip; never the first layer (a sub-network's
    first kept layer keeps attention)."""
    return [i for i in range(1, space.arch.num_layers) if 0 in space.kv_choices[i]]


def attention_order(space, attention_influence: Sequence[float]) -> list[int]:
    """The layers whose attention ``space`` lets a sub-network skip, least influential first (ties: the later
    layer first). The first layer is never among them: a sub-network's first kept layer keeps attention."""
    n = space.arch.num_layers
    if len(attention_influence) != n:
        raise LlamanasError(
            f"Attention influence has {len(attention_influence)} values; the model has {n} layers."
        )
    return sorted(skippable_attention(space), key=lambda i: (attention_influence[i], -i))


def attention_configs(
    supernet, batches: Sequence[torch.Tensor], fractions: Sequence[float] = (0.125, 0.25, 0.375, 0.5)
) -> list[SubnetConfig]:
    """Warm-start sub-networks of ``supernet.space``: its largest sub-network with the k least influential
    skippable attention blocks skipped, k a fraction of the layers (distinct k >= 1 only). Empty when the
    space skips no attention."""
    space = supernet.space
    if not skippable_attention(space):
        return []  # nothing to rank: no calibration pass
    base = space.largest()
    previous = supernet.active
    try:
        supernet.activate(base)
        influence = block_influence_per_block(supernet.model, batches)["attention"]
    finally:
        supernet.activate(previous)
    order = attention_order(space, influence)
    out: list[SubnetConfig] = []
    for k in sorted({min(len(order), max(1, round(f * space.arch.num_layers))) for f in fractions}):
        drop = set(order[:k])
        kv = tuple(0 if i in drop else g for i, g in zip(base.layers, base.kv_groups, strict=True))
        cfg = SubnetConfig(base.layers, base.mlp, kv, base.bits)
        if cfg not in out:
            out.append(space.validate(cfg))
    return out
