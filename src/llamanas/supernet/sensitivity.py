"""Sensitivity-driven width allocation (in the spirit of Sensi-BERT, Kundu et al. 2023).

The sensitivity of layer ``i`` to a width choice is the increase of the calibration LM loss when only that
layer is sliced to it (its MLP to ``m`` channels, or its attention to ``g`` KV groups) and every other
layer stays full. ``allocate`` then cuts greedily from the full network: each step takes the cut
(any layer, to any smaller choice) with the smallest loss increase per parameter saved, assuming the
layers' increases add up, until the size is within the target fraction. The result is a ``SubnetConfig``
of the search space: a matched-size baseline (``evidence.baselines``, method ``sensitivity``) and a warm
start for the search (``sensitivity_configs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.supernet.subnet import SubnetConfig


@dataclass
class Sensitivity:
    """Calibration loss of the full network and, per layer, the loss increase of each width choice
    (``mlp[i][m]``, ``kv[i][g]``; the full width is 0)."""

    base_loss: float
    mlp: list[dict[int, float]]
    kv: list[dict[int, float]]

    def to_dict(self) -> dict:
        """JSON-ready (widths as string keys); ``from_dict`` reads it back."""
        conv = lambda rows: [{str(k): v for k, v in r.items()} for r in rows]  # noqa: E731
        return {"base_loss": self.base_loss, "mlp": conv(self.mlp), "kv": conv(self.kv)}

    @classmethod
    def from_dict(cls, d: dict) -> Sensitivity:
        conv = lambda rows: [{int(k): float(v) for k, v in r.items()} for r in rows]  # noqa: E731
        return cls(float(d["base_loss"]), conv(d["mlp"]), conv(d["kv"]))


@torch.inference_mode()
def calibration_loss(model, batches: Sequence[torch.Tensor]) -> float:
    """Mean next-token cross-entropy of ``model`` over the calibration batches."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for ids in batches:
        ids = ids.to(device)
        n = ids.shape[0] * (ids.shape[1] - 1)  # predicted tokens
        total += float(model(input_ids=ids, labels=ids, use_cache=False).loss) * n
        tokens += n
    if tokens == 0:
        raise LlamanasError("Sensitivity needs calibration text; got none.")
    return total / tokens


def measure_sensitivity(supernet, batches: Sequence[torch.Tensor], progress: bool = True) -> Sensitivity:
    """The loss increase of every (layer, width choice) of ``supernet.space``, one layer sliced at a time
    (``sum over layers of (choices - 1)`` evaluations of the calibration loss). A width allocation: the
    0 choices (skipped blocks) are left out. ``progress`` shows a bar with an ETA (minutes on a CPU)."""
    arch, space = supernet.arch, supernet.space
    full = SubnetConfig.full(arch)
    mlp_widths = [
        [m for m in space.mlp_choices[i] if m and m != arch.intermediate_size] for i in range(arch.num_layers)
    ]
    kv_widths = [
        [g for g in space.kv_choices[i] if g and g != arch.num_kv_heads] for i in range(arch.num_layers)
    ]
    bar = tqdm(
        total=1 + sum(map(len, mlp_widths)) + sum(map(len, kv_widths)),
        desc="sensitivity (calibration passes)",
        disable=not progress,
    )
    previous = supernet.active
    try:
        supernet.activate(full)
        base = calibration_loss(supernet.model, batches)
        bar.update()
        mlp: list[dict[int, float]] = []
        kv: list[dict[int, float]] = []
        for i in range(arch.num_layers):
            row: dict[int, float] = (
                {arch.intermediate_size: 0.0} if arch.intermediate_size in space.mlp_choices[i] else {}
            )
            for m in mlp_widths[i]:
                supernet.activate(_with(full, i, mlp=m))
                row[m] = calibration_loss(supernet.model, batches) - base
                bar.update()
            mlp.append(dict(sorted(row.items())))
            row = {arch.num_kv_heads: 0.0} if arch.num_kv_heads in space.kv_choices[i] else {}
            for g in kv_widths[i]:
                supernet.activate(_with(full, i, kv=g))
                row[g] = calibration_loss(supernet.model, batches) - base
                bar.update()
            kv.append(dict(sorted(row.items())))
    finally:
        bar.close()
        supernet.activate(previous)
    return Sensitivity(base, mlp, kv)


def _with(cfg: SubnetConfig, i: int, mlp: int | None = None, kv: int | None = None) -> SubnetConfig:
    ms, gs = list(cfg.mlp), list(cfg.kv_groups)
    pos = cfg.layers.index(i)
    ms[pos] = mlp if mlp is not None else ms[pos]
    gs[pos] = kv if kv is not None else gs[pos]
    return SubnetConfig(cfg.layers, tuple(ms), tuple(gs))


def allocate(arch: Arch, sens: Sensitivity, target: float) -> SubnetConfig:
    """Greedy: from the full network, cut the (layer, width) with the least loss increase per parameter
    saved until ``num_params`` is within ``target`` (a fraction of the full model's parameters).

    The choices are the keys of ``sens`` (a search space's widths); it starts from the largest of each
    layer, and all layers are kept."""
    if not 0 < target <= 1:
        raise LlamanasError(f"Target size fraction must lie in (0, 1]; got {target}.")
    n = arch.num_layers
    if len(sens.mlp) != n or len(sens.kv) != n:
        raise LlamanasError(f"Sensitivity has {len(sens.mlp)} layers; the model has {n}.")
    budget = int(target * SubnetConfig.full(arch).num_params(arch))
    mlp = [max(row) for row in sens.mlp]
    kv = [max(row) for row in sens.kv]
    size = lambda: SubnetConfig(tuple(range(n)), tuple(mlp), tuple(kv)).num_params(arch)  # noqa: E731
    while size() > budget:
        # (loss change per parameter saved, loss change, layer, kind, -new width): a cut that lowers the
        # loss comes first; ties go to the smaller change, the earlier layer, then the smaller cut.
        moves = []
        for i in range(n):
            here = arch.layer_params(mlp[i], kv[i])
            for m, loss in sens.mlp[i].items():
                if m < mlp[i]:
                    d = loss - sens.mlp[i][mlp[i]]
                    moves.append((d / (here - arch.layer_params(m, kv[i])), d, i, "mlp", -m))
            for g, loss in sens.kv[i].items():
                if g < kv[i]:
                    d = loss - sens.kv[i][kv[i]]
                    moves.append((d / (here - arch.layer_params(mlp[i], g)), d, i, "kv", -g))
        if not moves:
            smallest = size() / SubnetConfig.full(arch).num_params(arch)
            raise LlamanasError(
                f"sensitivity: no sub-network fits {target:.0%} of the parameters; "
                f"the smallest it can make has {smallest:.1%}."
            )
        *_, i, kind, value = min(moves)
        (mlp if kind == "mlp" else kv)[i] = -value
    return SubnetConfig(tuple(range(n)), tuple(mlp), tuple(kv))


def sensitivity_configs(
    supernet, batches: Sequence[torch.Tensor], targets: Sequence[float] = (0.9, 0.8, 0.7, 0.6, 0.5)
) -> list[SubnetConfig]:
    """Sensitivity-allocated configs of ``supernet.space`` at each target size fraction, for a warm start
    of the search (targets the space cannot reach are left out; duplicates once)."""
    sens = measure_sensitivity(supernet, batches)
    out: list[SubnetConfig] = []
    for t in targets:
        try:
            cfg = supernet.space.validate(allocate(supernet.arch, sens, t))
        except LlamanasError:
            continue
        if cfg not in out:
            out.append(cfg)
    return out
