"""Bias compensation (FLAP) and least-squares repair of sliced layers, from calibration activations.

Slicing an MLP to its first ``m`` channels drops ``down_proj[:, m:] @ act[m:]`` from the layer's output.
FLAP (An et al. 2024) adds back its expectation over calibration tokens as an output bias of
``down_proj``, ``down_proj[:, m:] @ mean(act[m:])``; likewise for the removed KV groups' ``o_proj``
contribution. A ``Compensation`` holds the mean inputs of ``down_proj`` and ``o_proj`` of every layer
(measured once, on the full network) and the bias of every width choice of the search space, computed
once; ``SuperNet.activate`` switches them with the slice (``ElasticLinear.active_bias``), and extraction
writes them as real biases. The full width needs no bias (None), so the full network is unchanged.

``repair_weights`` goes further at extraction: per sliced layer, a ridge-regularised least-squares refit
of the kept ``down_proj`` (and ``o_proj``) columns, and of the bias when compensating, so the layer's output
reproduces the full layer's output on calibration activations (closed form from the Gram matrix of the
full inputs; the kept channels' activations are the full network's, as heads and channels are independent).
With a narrower residual stream (``SubnetConfig.hidden``) both keep the first ``hidden`` output rows: the
removed stream channels have nothing downstream to compensate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.families import family_of
from llamanas.supernet.importance import calibration_progress, output_inputs
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

COMPENSATION_FILE = "llamanas_compensation.safetensors"
DEFAULT_RIDGE = 1e-3  # ridge, relative to the mean diagonal of the kept channels' Gram matrix


@dataclass
class Compensation:
    """Mean inputs of each layer's ``down_proj`` / ``o_proj`` over calibration tokens, and the output
    biases made from them, per (layer, width choice): ``mlp[i][m]``, ``kv[i][g]`` (groups)."""

    mlp_mean: list[torch.Tensor]  # per layer, (intermediate,) float64 on the CPU
    attn_mean: list[torch.Tensor]  # per layer, (heads * head_dim,)
    group_width: int  # o_proj input columns per KV group (heads per group x head_dim)
    mlp: list[dict[int, torch.Tensor]] = field(default_factory=list)
    kv: list[dict[int, torch.Tensor]] = field(default_factory=list)

    def __post_init__(self):
        self.mlp = self.mlp or [{} for _ in self.mlp_mean]
        self.kv = self.kv or [{} for _ in self.attn_mean]

    def mlp_bias(self, layer: int, size: int, weight: torch.Tensor) -> torch.Tensor | None:
        """The bias of ``down_proj`` (``weight``) of ``layer`` sliced to ``size`` channels; None at full."""
        return self._bias(self.mlp[layer], self.mlp_mean[layer], size, weight)

    def kv_bias(self, layer: int, groups: int, weight: torch.Tensor) -> torch.Tensor | None:
        """The bias of ``o_proj`` (``weight``) of ``layer`` sliced to ``groups`` KV groups; None at full."""
        return self._bias(self.kv[layer], self.attn_mean[layer], groups * self.group_width, weight, groups)

    @staticmethod
    def _bias(table: dict, mean: torch.Tensor, cols: int, weight: torch.Tensor, key: int | None = None):
        if cols >= mean.numel():
            return None
        key = cols if key is None else key
        b = table.get(key)
        if b is None or b.dtype != weight.dtype or b.device != weight.device:
            w = weight.detach()[:, cols:].double().cpu()
            b = table[key] = (w @ mean[cols:]).to(weight.dtype).to(weight.device)
        return b

    def fill(self, model, space: SearchSpace) -> Compensation:
        """Compute the bias of every width choice of ``space`` now (switching then costs nothing)."""
        family = family_of(model.config)
        (attn_out,), (mlp_out,) = family.attention_cols, family.mlp_cols
        for i, layer in enumerate(model.get_decoder().layers):
            linears = family.linears_of(layer)
            for m in space.mlp_choices[i]:
                self.mlp_bias(i, m, linears[mlp_out].weight)
            for g in space.kv_choices[i]:
                self.kv_bias(i, g, linears[attn_out].weight)
        return self

    def save(self, folder: str | Path) -> Path:
        """Write the mean inputs to ``folder/llamanas_compensation.safetensors`` (the biases follow from
        them and the folder's weights)."""
        tensors = {f"mlp_mean.{i}": t.double().contiguous() for i, t in enumerate(self.mlp_mean)}
        tensors |= {f"attn_mean.{i}": t.double().contiguous() for i, t in enumerate(self.attn_mean)}
        path = Path(folder) / COMPENSATION_FILE
        save_file(tensors, str(path), metadata={"group_width": str(self.group_width)})
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Compensation | None:
        """The compensation saved in ``folder``; None when it has none."""
        path = Path(folder) / COMPENSATION_FILE
        if not path.is_file():
            return None
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
            n = sum(k.startswith("mlp_mean.") for k in keys)
            mlp = [f.get_tensor(f"mlp_mean.{i}").double() for i in range(n)]
            attn = [f.get_tensor(f"attn_mean.{i}").double() for i in range(n)]
            group_width = int(f.metadata()["group_width"])
        return cls(mlp, attn, group_width)


@torch.inference_mode()
def compute_compensation(model, batches: Sequence[torch.Tensor], space: SearchSpace | None = None):
    """The ``Compensation`` of ``model`` (run at full width) from calibration batches; with ``space``,
    the biases of all its width choices are computed at once."""
    arch = Arch.from_hf(model.config)
    layers = model.get_decoder().layers
    sums = {(i, k): None for i in range(len(layers)) for k in ("mlp", "attn")}

    def add(key, x):
        x = x.double().sum(0).cpu()
        sums[key] = x if sums[key] is None else sums[key] + x

    count = [
        output_inputs(
            model,
            batches,
            lambda i, x: add((i, "mlp"), x),
            lambda i, x: add((i, "attn"), x),
            "Bias compensation",
        )
    ]
    n = count[0]
    comp = Compensation(
        [sums[i, "mlp"] / n for i in range(len(layers))],
        [sums[i, "attn"] / n for i in range(len(layers))],
        arch.heads_per_group * arch.head_dim,
    )
    return comp.fill(model, space) if space is not None else comp


# --- least-squares repair ---------------------------------------------------------------------------


@torch.inference_mode()
def input_grams(model, batches: Sequence[torch.Tensor], wanted: set[tuple[int, str]]) -> dict:
    """Gram matrices ``Z^T Z`` of the inputs ``Z = [x, 1]`` of ``down_proj`` (``"mlp"``) / ``o_proj``
    (``"attn"``) of the wanted (layer, kind) pairs, over calibration tokens (float64, on the CPU)."""
    family = family_of(model.config)
    (attn_out,), (mlp_out,) = family.attention_cols, family.mlp_cols
    grams: dict[tuple[int, str], torch.Tensor] = {}

    def hook(key):
        def fn(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            z = torch.cat([x, torch.ones_like(x[:, :1])], 1)
            g = (z.T @ z).cpu()
            grams[key] = g if key not in grams else grams[key] + g

        return fn

    handles = []
    for i, layer in enumerate(model.get_decoder().layers):
        linears = family.linears_of(layer)
        for kind, name in (("mlp", mlp_out), ("attn", attn_out)):
            if (i, kind) in wanted:
                handles.append(linears[name].register_forward_pre_hook(hook((i, kind))))
    try:
        device = next(model.parameters()).device
        for ids in calibration_progress(batches, "least-squares repair statistics"):
            model(input_ids=ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if wanted and not grams:
        raise LlamanasError("Least-squares repair needs calibration text; got none.")
    return grams


def least_squares(
    gram: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    keep: int,
    fit_bias: bool,
    ridge: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight of the first ``keep`` input columns, bias or None) minimising, over the tokens of ``gram``
    (``[x, 1]^T [x, 1]``), ``|W' x[:keep] + b' - (W x + b)|^2 + ridge * mean diag * |W'|^2``.

    Without ``fit_bias`` the bias stays ``bias`` and only ``W'`` is fitted (to ``W x``)."""
    n_in = weight.shape[1]
    w = weight.detach().double().cpu()
    target = torch.cat(
        [w, bias.detach().double().cpu()[:, None] if bias is not None else torch.zeros_like(w[:, :1])], 1
    )
    if not fit_bias:
        target[:, -1] = 0.0  # the bias is kept as it is, so the fit is to W x
    keep_idx = list(range(keep)) + ([n_in] if fit_bias else [])
    g_kk = gram[keep_idx][:, keep_idx].clone()
    reg = ridge * g_kk.diagonal()[:keep].mean().clamp_min(1e-12)
    g_kk.diagonal()[:keep] += reg
    rhs = target @ gram[:, keep_idx]  # (out, |K|)
    theta = torch.linalg.solve(g_kk, rhs.T).T
    new_w = theta[:, :keep].to(weight.dtype)
    new_b = theta[:, keep].to(weight.dtype) if fit_bias else None
    return new_w, new_b


def reconstruction_error(gram: torch.Tensor, weight, bias, new_weight, new_bias, keep: int) -> float:
    """Mean over calibration tokens of ``|W' x[:keep] + b' - (W x + b)|^2``, from the Gram matrix."""
    n_in = weight.shape[1]
    w = weight.detach().double().cpu()
    b = bias.detach().double().cpu() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    d = torch.cat([w, b[:, None]], 1)
    d[:, :keep] -= new_weight.detach().double().cpu()
    nb = new_bias.detach().double().cpu() if new_bias is not None else torch.zeros_like(b)
    d[:, n_in] -= nb
    tokens = gram[n_in, n_in]
    return float(torch.einsum("oi,ij,oj->", d, gram, d) / tokens)


def repair_weights(
    model,
    cfg: SubnetConfig,
    batches: Sequence[torch.Tensor],
    compensation: Compensation | None = None,
    ridge: float = DEFAULT_RIDGE,
) -> dict[str, torch.Tensor]:
    """Least-squares refits of the sliced layers of ``cfg``, as tensors under the extracted model's names
    (``model.layers.<pos>.mlp.down_proj.weight`` ...; ``.bias`` too with ``compensation``, whose bias
    they replace). ``model`` runs at full width."""
    if not batches:
        raise LlamanasError("Least-squares repair needs calibration text; got none.")
    arch = Arch.from_hf(model.config)
    family = family_of(model.config)
    (attn_out,), (mlp_out,) = family.attention_cols, family.mlp_cols
    width = arch.heads_per_group * arch.head_dim
    jobs = {}
    for pos, (i, m, g) in enumerate(zip(cfg.layers, cfg.mlp, cfg.kv_groups, strict=True)):
        if 0 < m < arch.intermediate_size:  # a skipped block (0) has no weights to refit
            jobs[(i, "mlp")] = (pos, f"{family.mlp}.{mlp_out}", m)
        if 0 < g < arch.num_kv_heads:
            jobs[(i, "attn")] = (pos, f"{family.attention}.{attn_out}", g * width)
    grams = input_grams(model, batches, set(jobs))
    out: dict[str, torch.Tensor] = {}
    layers = model.get_decoder().layers
    h = cfg.width(
        arch
    )  # a narrower residual stream keeps the first h output rows (each row's fit is its own)
    for (i, kind), (pos, path, keep) in jobs.items():
        lin = layers[i].get_submodule(path)
        bias = lin.bias[:h] if lin.bias is not None else None
        w, b = least_squares(grams[i, kind], lin.weight[:h], bias, keep, compensation is not None, ridge)
        name = f"model.layers.{pos}.{path}"
        out[f"{name}.weight"] = w.to(lin.weight.device)
        if b is not None:
            out[f"{name}.bias"] = b.to(lin.weight.device)
    return out
