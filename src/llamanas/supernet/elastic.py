"""The super-network: one loaded HF model whose sub-networks are switched on in place.

Activating a sub-network copies no weights: each linear layer of the decoder becomes an
``ElasticLinear`` that multiplies by a first-k slice (a view) of its weight, skipped layers are left out
of the decoder's ``ModuleList`` for the duration, and a skipped attention or MLP block (size 0) has its
class switched to one whose forward returns zeros, so the residual passes through (``skip_block``).
Because slices are first-k, channels must be ordered by importance first (``importance.py``) so that a
slice keeps the best ones.

    supernet = SuperNet(model)
    with supernet.subnet(cfg):
        logits = model(input_ids).logits
"""

from __future__ import annotations

import functools
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.device import linear
from llamanas.model.families import family_of
from llamanas.model.hf_types import NoAttention, NoMLP, check_attention_skippable
from llamanas.model.load import load_model, resolve
from llamanas.supernet.compensation import Compensation, compute_compensation
from llamanas.supernet.importance import (
    calibration_batches,
    calibration_texts,
    check_importance,
    order_model,
    order_residual,
)
from llamanas.supernet.precision import fake_quantize
from llamanas.supernet.routing import RoutedAdapters
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig


class ElasticLinear(nn.Linear):
    """An ``nn.Linear`` that uses only its first ``active_out`` rows and ``active_in`` columns.

    Made by changing the class of an existing ``nn.Linear`` in place, so parameter names, state dicts
    and checkpoints are untouched. ``active_bias`` (bias compensation of the sliced-off inputs, see
    ``compensation.py``) is added to the output when set.
    """

    active_in: int | None = None
    active_out: int | None = None
    active_bias: torch.Tensor | None = None
    active_bits: int | None = (
        None  # 8 or 4: fake-quantized as extraction will store it (``SuperNet.fake_quant``)
    )
    routed = None  # routing.Experts: low-rank experts mixed per sub-network (a reference, not a submodule)

    @classmethod
    def convert(cls, linear: nn.Linear) -> ElasticLinear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Unsupported layer type {type(linear)}; expected nn.Linear.")
        linear.__class__ = cls
        linear.active_in = linear.active_out = linear.active_bias = None
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if self.active_out is not None:
            w = w[: self.active_out]
            b = b[: self.active_out] if b is not None else None
        if self.active_in is not None:
            w = w[:, : self.active_in]
        if self.active_bias is not None:  # full rows; a narrower residual stream keeps its first ones
            ab = self.active_bias if self.active_out is None else self.active_bias[: self.active_out]
            b = ab if b is None else b + ab
        routed = self.routed is not None and self.routed.mix is not None
        if self.active_bits is not None:  # the merged weight is what gets quantized at extraction
            if routed:  # the full delta sliced, as extraction merges it (bit for bit the same weight)
                w = w + self.routed.delta()[: w.shape[0], : w.shape[1]].to(w.dtype)
            if b is not None:  # a quantized layer keeps its bias in float16 (``QuantLinear``)
                b = b + (b.half().to(b.dtype) - b).detach()
            return linear(x, fake_quantize(w, self.active_bits), b)
        y = linear(x, w, b)  # F.linear; float32 compute for 16-bit weights on the CPU
        if routed:
            y = y + self.routed(x, self.active_in, self.active_out)
        return y


class ElasticEmbedding(nn.Embedding):
    """An ``nn.Embedding`` that returns only the first ``active_dim`` channels (the residual stream's)."""

    active_dim: int | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.active_dim is None else self.weight[:, : self.active_dim]
        return nn.functional.embedding(input_ids, w, self.padding_idx, self.max_norm)


def _narrow_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    # LlamaRMSNorm's forward (Mistral's and Qwen2's are the same) over the first x.shape[-1] channels.
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight[: x.shape[-1]] * x.to(dtype)


@functools.cache
def _switched_class(cls: type, forward, flag: str) -> type:
    prefix = "Narrow" if flag == "llamanas_narrow" else "Skipped"
    return type(f"{prefix}{cls.__name__}", (cls,), {"forward": forward, flag: True})


def _switch_class(module: nn.Module, on: bool, forward, flag: str) -> None:
    """Give ``module`` a subclass with another ``forward`` (marked by ``flag``) or its own class back, in
    place: weights, names and the state dict are untouched."""
    is_on = getattr(type(module), flag, False)
    if on and not is_on:
        module.__class__ = _switched_class(type(module), forward, flag)
    elif not on and is_on:
        module.__class__ = type(module).__bases__[0]


def narrow_norm(module: nn.Module, narrow: bool) -> None:
    """Switch an RMSNorm to normalise over (and scale) only the channels it is given, or back."""
    _switch_class(module, narrow, _narrow_norm_forward, "llamanas_narrow")


def skip_block(module: nn.Module, skipped: bool, attention: bool) -> None:
    """Switch a decoder block (a layer's attention or MLP module) to skipped or back: its forward becomes
    the extracted model's pass-through module's."""
    _switch_class(module, skipped, NoAttention.forward if attention else NoMLP.forward, "llamanas_skipped")


def decoder_layers(model) -> nn.ModuleList:
    return model.get_decoder().layers


class SuperNet:
    """Wraps a loaded LLaMA-family model and switches sub-networks on it."""

    def __init__(self, model, space: SearchSpace | None = None, compensation: Compensation | None = None):
        self.family = family_of(model.config)
        self.model = model
        self.arch = Arch.from_hf(model.config)
        self.space = space or SearchSpace.from_arch(self.arch)
        self._all_layers = decoder_layers(model)
        self._layer_types = getattr(model.config, "layer_types", None)
        for layer in self._all_layers:
            for lin in self.family.linears_of(layer).values():
                if not isinstance(lin, ElasticLinear):
                    ElasticLinear.convert(lin)
        # The residual stream's ends: the input embeddings, the final norm and the LM head.
        self._embed = model.get_input_embeddings()
        if not isinstance(self._embed, ElasticEmbedding):
            self._embed.__class__ = ElasticEmbedding
            self._embed.active_dim = None
        self._head = model.get_output_embeddings()
        if not isinstance(self._head, ElasticLinear):
            ElasticLinear.convert(self._head)
        self._final_norm = model.get_decoder().norm
        self.active: SubnetConfig = SubnetConfig.full(self.arch)
        self.ordered_by: str | None = None  # the importance score the channels were ordered by, if known
        self.compensation: Compensation | None = None
        self.routing = None  # routing.RoutedAdapters, when the sub-networks have their own experts
        # Switch configs with per-layer bits below 16 on in place, their linears fake-quantized (training);
        # off, such a config runs extracted (``slicing.subnet_model``), as every evaluation does.
        self.fake_quant = False
        if compensation is not None:
            self.set_compensation(compensation)

    def set_compensation(self, compensation: Compensation | None) -> None:
        """Switch bias compensation on (a ``Compensation``; its biases for the space's widths are computed
        now) or off (None); the active sub-network is switched again with it."""
        if compensation is not None:
            compensation.fill(self.model, self.space)
        for layer in self._all_layers:
            for lin in self.family.linears_of(layer).values():
                lin.active_bias = None
        self.compensation = compensation
        self.activate(self.active)

    def compensate(self, batches) -> Compensation:
        """Measure bias compensation on calibration batches (at full width) and switch it on."""
        previous = self.active
        self.reset()
        try:
            comp = compute_compensation(self.model, batches)
        finally:
            self.activate(previous)
        self.set_compensation(comp)
        return comp

    @property
    def layers(self) -> nn.ModuleList:
        """All decoder layers, including those the active sub-network skips."""
        return self._all_layers

    def activate(self, cfg: SubnetConfig) -> None:
        """Switch ``cfg`` on (cheap: sets slice sizes and swaps the layer list)."""
        cfg.check(self.arch)
        if cfg.quantized and not self.fake_quant:
            raise LlamanasError(
                "This sub-network has layers below 16 bits, which the super-network cannot switch on in place; "
                "extract it (extract.standalone, or `llamanas extract`)."
            )
        check_attention_skippable(self._layer_types, cfg.kv_groups)
        a, family, comp = self.arch, self.family, self.compensation
        h = None if cfg.width(a) == a.hidden_size else cfg.hidden  # the residual stream's slice
        (attn_out,), (mlp_out,) = family.attention_cols, family.mlp_cols
        full = SubnetConfig(cfg.layers, cfg.mlp, cfg.kv_groups) == SubnetConfig.full(a) and h is None
        full = full and not cfg.quantized
        bits = cfg.bits or (16,) * cfg.depth
        kept, attn_pos = [], 0
        for i, m, g, b in zip(cfg.layers, cfg.mlp, cfg.kv_groups, bits, strict=True):
            layer = self._all_layers[i]
            # Slice sizes; None (no slicing) where the whole dimension is kept.
            q = None if g == a.num_kv_heads else g * a.heads_per_group * a.head_dim
            kv = None if g == a.num_kv_heads else g * a.head_dim
            rows, cols = family.rows_and_cols(q, kv, None if m == a.intermediate_size else m)
            for name, lin in family.linears_of(layer).items():
                if name in rows:  # reads the residual stream
                    lin.active_out, lin.active_in = rows[name], h
                else:  # writes it
                    lin.active_in, lin.active_out = cols[name], h
                lin.active_bits = None if b == 16 else b
            for norm in (family.attention_norm, family.mlp_norm):
                narrow_norm(getattr(layer, norm), h is not None)
            if comp is not None:  # the removed channels' mean contribution, None at full width
                linears = family.linears_of(layer)
                down, o = linears[mlp_out], linears[attn_out]
                down.active_bias = comp.mlp_bias(i, m, down.weight) if m else None
                o.active_bias = comp.kv_bias(i, g, o.weight) if g else None
            attn = getattr(layer, family.attention)
            skip_block(attn, g == 0, attention=True)
            skip_block(getattr(layer, family.mlp), m == 0, attention=False)
            # The KV cache is indexed by position among the attention blocks that run.
            if g:
                attn.layer_idx = attn_pos
                attn_pos += 1
            kept.append(layer)
        for i in set(range(a.num_layers)) - set(cfg.layers):  # layers left out run nothing: unskip them
            layer = self._all_layers[i]
            skip_block(getattr(layer, family.attention), False, attention=True)
            skip_block(getattr(layer, family.mlp), False, attention=False)
            for lin in family.linears_of(layer).values():
                lin.active_bits = None
        self._embed.active_dim = self._head.active_in = h
        narrow_norm(self._final_norm, h is not None)
        decoder = self.model.get_decoder()
        decoder.layers = self._all_layers if full else nn.ModuleList(kept)
        if self._layer_types is not None:
            # Indexed by decoder position (the mask of each layer) and by cache index (the KV cache's
            # layer kinds): the same list when every layer has one type, which skipping attention needs.
            self.model.config.layer_types = [self._layer_types[i] for i in cfg.layers]
        self.active = cfg
        if self.routing is not None:
            self.routing.route(cfg)

    def reset(self) -> None:
        """Back to the full network (required before saving or training the whole model)."""
        self.activate(SubnetConfig.full(self.arch))
        for i, layer in enumerate(self._all_layers):
            getattr(layer, self.family.attention).layer_idx = i
        if self._layer_types is not None:
            self.model.config.layer_types = list(self._layer_types)

    @contextmanager
    def full_weights(self, cfg: SubnetConfig):
        """The full network to slice ``cfg`` out of (extraction, repair, export): switched to full width,
        with ``cfg``'s routed experts folded into the weights; the previous state comes back after."""
        previous = self.active
        self.reset()
        try:
            if self.routing is None:
                yield self.model
            else:
                with self.routing.merged(self, cfg):
                    yield self.model
        finally:
            self.activate(previous)

    @contextmanager
    def subnet(self, cfg: SubnetConfig):
        previous = self.active
        self.activate(cfg)
        try:
            yield self.model
        finally:
            self.activate(previous)

    def num_params(self, cfg: SubnetConfig | None = None, embeddings: bool = True) -> int:
        return (cfg or self.active).num_params(self.arch, embeddings=embeddings)


# --- a super-network folder: an HF checkpoint plus this file -------------------------------------------

SUPERNET_FILE = "llamanas_supernet.json"


def read_supernet_meta(folder: str | Path) -> dict:
    """The super-network metadata in ``folder``; ``{}`` when it has none (a plain model, a hub id).

    Keys, as ``write_supernet_meta`` writes them: ``ordered`` (the weights are importance-ordered),
    ``ordered_by`` (the importance score, ``importance.IMPORTANCES``; absent in folders written before it
    was recorded, which were ordered by ``rms``), ``space`` (the search space, ``SearchSpace.to_dict``)
    and ``training`` (``finetune``'s record). A folder may also hold ``compensation.COMPENSATION_FILE``
    (bias compensation, ``Compensation.save``) and ``routing.ROUTING_FILE`` / ``ROUTING_META`` (routed
    adapters, ``RoutedAdapters.save``; ``load_supernet`` attaches them).
    """
    path = Path(folder) / SUPERNET_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def supernet_source(folder: str | Path) -> str | None:
    """The model a super-network folder was fine-tuned from (its ``training`` record's ``args.model``);
    None for a folder without one."""
    training = read_supernet_meta(folder).get("training")
    args = training.get("args") if isinstance(training, dict) else None
    model = args.get("model") if isinstance(args, dict) else None
    return model if isinstance(model, str) else None


def write_supernet_meta(
    folder: str | Path,
    space: SearchSpace,
    training: dict,
    ordered: bool = True,
    ordered_by: str | None = "rms",
) -> None:
    meta = {"ordered": ordered, "space": space.to_dict(), "training": training}
    if ordered and ordered_by:
        meta["ordered_by"] = ordered_by
    (Path(folder) / SUPERNET_FILE).write_text(json.dumps(meta, indent=2))


def load_supernet(
    name: str,
    space_file: str | None = None,
    order: bool = True,
    calibration: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    work: str = "inference",
    say=None,
    importance: str = "rms",
    compensate: bool = False,
    residual: bool = False,
):
    """(SuperNet, tokenizer) for a model name, ordered by importance unless it already is.

    A folder written by ``llamanas finetune`` carries ``llamanas_supernet.json``: its weights are
    already ordered and its search space is the one it was trained for. ``dtype``, ``device``, ``work``
    and ``say`` are ``load_model``'s (placement and the memory check before loading). ``importance`` is
    the score a model not yet ordered is ordered by (``importance.IMPORTANCES``); ``compensate`` switches
    bias compensation on: the folder's saved one (``Compensation.save``), else measured on the
    calibration text after ordering. ``residual`` also orders the residual stream's channels
    (``importance.order_residual``), which a sub-network with a narrower ``hidden`` needs.
    """
    check_importance(importance)  # fail before loading
    model, tokenizer = load_model(name, dtype=dtype, device=device, work=work, say=say)
    meta = read_supernet_meta(resolve(name))
    arch = Arch.from_hf(model.config)
    if space_file:
        space = SearchSpace.from_file(space_file, arch)
    elif "space" in meta:
        space = SearchSpace.from_saved(meta["space"])
    else:
        space = SearchSpace.from_arch(arch)
    ordered_by = meta.get("ordered_by", "rms") if meta.get("ordered", False) else None
    if order and ordered_by is None:
        order_model(model, tokenizer, calibration, importance=importance)
        ordered_by = importance
    routing = RoutedAdapters.load(resolve(name), model)
    if order and residual:
        if routing is not None:
            raise LlamanasError(
                f"{name} has routed adapters ({routing.spec.router}), trained on its residual stream as it is: "
                "a narrower 'hidden' would need them re-ordered too, which is not supported."
            )
        order_residual(model, calibration_batches(tokenizer, calibration_texts(calibration)))
    supernet = SuperNet(model, space)
    supernet.ordered_by = ordered_by
    if routing is not None:
        routing.attach(supernet)
    if compensate:
        saved = Compensation.load(resolve(name))
        if saved is not None:
            supernet.set_compensation(saved)
        else:
            supernet.compensate(calibration_batches(tokenizer, calibration_texts(calibration)))
    return supernet, tokenizer
