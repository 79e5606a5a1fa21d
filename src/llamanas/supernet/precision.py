"""Weight-only quantization of extracted sub-networks: INT8 / INT4 and per-layer precision policies.

The LLaMA-NAS paper quantizes every linear layer of the decoder to INT8 with bitsandbytes (LLM.int8) and
keeps the embeddings and the LM head in 16 bits. bitsandbytes needs CUDA, so on CPU we use our own
weight-only format, kept deliberately simple so it saves, reloads and is counted exactly:

- INT8: per-output-channel symmetric, ``w ~ q * scale`` with ``q`` in -127..127 (int8) and one float16
  scale per row.
- INT4: group-wise asymmetric, ``w ~ q * scale + min`` with ``q`` in 0..15 packed two per byte (uint8) and a
  float16 scale and minimum per group of ``group_size`` input columns (4.5 bits a weight at group 64,
  like llama.cpp's Q4_1).

Why not torchao: with torch 2.13 on CPU, torchao 0.18's ``Int8WeightOnlyConfig`` works, but
``Int4WeightOnlyConfig`` needs the ``mslk`` kernel package, and its tensor subclasses do not go through our
safetensors checkpoints. PyTorch's own CPU kernels (``aten._weight_int8pack_mm``,
``aten._weight_int4pack_mm_for_cpu``) are used when the activations are bfloat16, the only dtype in which
they beat a plain matmul on CPU; for float32 activations the weight is de-quantized on the fly, which is
as fast as the float32 matmul for prefill but saves memory, not time.

A precision policy gives each decoder layer 16, 8 or 4 bits (``apply_precision``, ``policy_bytes``) for a
joint search of architecture and precision.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.families import decoder_linears
from llamanas.supernet.subnet import BITS, SubnetConfig

METHODS = {"int8": 8, "int4": 4}
DEFAULT_GROUP_SIZE = 64
BACKENDS = ("auto", "cpu", "bnb")
KEEP_BYTES = 2  # the tensors left unquantized (embeddings, norms, head, 16-bit layers) are stored in float16
FORMAT_VERSION = 1
_INT4_KERNEL_GROUPS = (32, 64, 128, 256)  # what aten._weight_int4pack_mm_for_cpu accepts


def effective_group_size(in_features: int, group_size: int) -> int:
    """The INT4 group used for a layer: ``group_size`` if it divides ``in_features``, else the largest
    power of two below it that does, else the whole row (so every layer can be quantized)."""
    if group_size < 1:
        raise LlamanasError(f"group_size must be >= 1; got {group_size}.")
    g = group_size
    while g >= 8:
        if in_features % g == 0:
            return g
        g //= 2
    return in_features


def linear_bytes(in_features: int, out_features: int, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Stored bytes of one linear weight (without bias) at ``bits`` (16, 8 or 4), scales included."""
    if bits == 16:
        return KEEP_BYTES * in_features * out_features
    if bits == 8:
        return out_features * in_features + 2 * out_features  # int8 weights + float16 scale per row
    if bits == 4:
        groups = in_features // effective_group_size(in_features, group_size)
        return out_features * math.ceil(in_features / 2) + 4 * out_features * groups  # + scale, min
    raise LlamanasError(
        f"Unknown weight precision {bits} bits. Allowed: {', '.join(map(str, sorted(BITS, reverse=True)))}."
    )


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored as INT8 or packed INT4 and de-quantized in ``forward``.

    Buffers (all in the state dict): ``qweight`` (int8 [out, in] or uint8 [out, ceil(in/2)]), ``scale``
    (float16 [out] or [out, groups]), ``zero`` (INT4 only: the group minimum), ``bias`` (optional).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int = DEFAULT_GROUP_SIZE,
        bias: bool = False,
        device=None,
    ):
        super().__init__()
        if bits not in METHODS.values():
            raise LlamanasError(f"QuantLinear supports 8 or 4 bits; got {bits}.")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = effective_group_size(in_features, group_size) if bits == 4 else in_features
        groups = in_features // self.group_size
        if bits == 8:
            qshape, sshape = (out_features, in_features), (out_features,)
            self.register_buffer("qweight", torch.zeros(qshape, dtype=torch.int8, device=device))
        else:
            qshape, sshape = (out_features, math.ceil(in_features / 2)), (out_features, groups)
            self.register_buffer("qweight", torch.zeros(qshape, dtype=torch.uint8, device=device))
            self.register_buffer("zero", torch.zeros(sshape, dtype=torch.float16, device=device))
        self.register_buffer("scale", torch.ones(sshape, dtype=torch.float16, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16, device=device))
        else:
            self.bias = None
        self._kernel_cache: dict = {}  # packed weights for the CPU kernels (not saved; rebuilt on demand)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{g}"

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> QuantLinear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Unsupported layer type {type(linear)}; expected nn.Linear.")
        if getattr(linear, "active_in", None) is not None or getattr(linear, "active_out", None) is not None:
            raise LlamanasError(
                "Cannot quantize a super-network layer with an active slice; extract the sub-network first."
            )
        w = linear.weight.detach().float()  # [out, in]
        q = cls(
            linear.in_features,
            linear.out_features,
            bits,
            group_size,
            bias=linear.bias is not None,
            device=w.device,
        )
        codes, scale, lo = quantize_codes(w, bits, q.group_size)
        if bits == 8:
            q.qweight.copy_(codes.to(torch.int8))
        else:
            q.qweight.copy_(_pack4(codes.reshape(w.shape).to(torch.uint8)))
            q.zero.copy_(lo)
        q.scale.copy_(scale)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().half())
        return q

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The de-quantized weight [out, in]."""
        if self.bits == 8:
            return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]
        codes = _unpack4(self.qweight, self.in_features).to(dtype)
        out, g = self.out_features, self.group_size
        codes = codes.reshape(out, -1, g) * self.scale.to(dtype)[..., None] + self.zero.to(dtype)[..., None]
        return codes.reshape(out, self.in_features)

    def storage_bytes(self) -> int:
        b = linear_bytes(self.in_features, self.out_features, self.bits, self.group_size)
        return b + (KEEP_BYTES * self.out_features if self.bias is not None else 0)

    def _use_kernel(self, x: torch.Tensor) -> bool:
        # The aten CPU kernels only pay off with bfloat16 activations (measured: float32 runs a slow path).
        if x.device.type != "cpu" or x.dtype != torch.bfloat16:
            return False
        if self.bits == 8:
            return True
        return (
            self.group_size in _INT4_KERNEL_GROUPS
            and self.out_features % 16 == 0
            and self.in_features % self.group_size == 0
        )

    def _kernel_weights(self, dtype: torch.dtype):
        key = (self.bits, dtype, self.qweight.data_ptr())
        if key not in self._kernel_cache:
            self._kernel_cache.clear()
            if self.bits == 8:
                self._kernel_cache[key] = (self.qweight.contiguous(), self.scale.to(dtype).contiguous())
            else:
                codes = _unpack4(self.qweight, self.in_features).to(torch.int32).contiguous()
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
                # The kernel computes (q - 8) * scale + zero', so zero' = min + 8 * scale; [groups, out, 2].
                s = self.scale.float()
                sz = torch.stack([s.T, (self.zero.float() + 8 * s).T], dim=-1).to(dtype).contiguous()
                self._kernel_cache[key] = (packed, sz)
        return self._kernel_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self._use_kernel(x):
            shape = x.shape
            x2 = x.reshape(-1, self.in_features).contiguous()  # [tokens, in]
            w, s = self._kernel_weights(x.dtype)
            if self.bits == 8:
                y = torch.ops.aten._weight_int8pack_mm(x2, w, s)
            else:
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, w, self.group_size, s)
            y = y.reshape(*shape[:-1], self.out_features)
            return y + bias if bias is not None else y
        return F.linear(x, self.dequantize(x.dtype), bias)


def quantize_codes(w: torch.Tensor, bits: int, group: int):
    """(codes, float16 scale, float16 minimum or None) of a float32 weight [out, in]: INT8 per row
    (codes [out, in]), INT4 per group of ``group`` input columns (codes [out, groups, group])."""
    if bits == 8:
        scale = (w.abs().amax(dim=1) / 127).half()
        scale[scale == 0] = 1  # an all-zero row: any scale reproduces it
        return torch.round(w / scale.float()[:, None]).clamp(-127, 127), scale, None
    out, inn = w.shape
    wg = w.reshape(out, inn // group, group)
    lo = wg.amin(-1).half()
    scale = ((wg.amax(-1) - lo.float()) / 15).half()
    scale[scale == 0] = 1  # a constant group: q = 0 and the minimum reproduce it
    codes = torch.round((wg - lo.float()[..., None]) / scale.float()[..., None]).clamp(0, 15)
    return codes, scale, lo


def fake_quantize(w: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> torch.Tensor:
    """``w`` rounded as ``QuantLinear.from_linear`` stores it at ``bits`` (8 or 4) and de-quantized, with a
    straight-through gradient: how a super-network trains a sub-network at its precision (the weights a
    training step sees are the ones the extracted, quantized model has)."""
    with torch.no_grad():
        wf = w.detach().float()
        codes, scale, lo = quantize_codes(wf, bits, effective_group_size(w.shape[1], group_size))
        if bits == 8:
            deq = codes * scale.float()[:, None]
        else:
            deq = (codes * scale.float()[..., None] + lo.float()[..., None]).reshape(wf.shape)
    return w + (deq.to(w.dtype) - w).detach()


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in] codes in 0..15 -> [out, ceil(in/2)], even column in the low nibble."""
    if codes.shape[1] % 2:
        codes = F.pad(codes, (0, 1))
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _unpack4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)[:, :in_features]


# --- applying a precision to a model -------------------------------------------------------------


def _check_bits(layer_bits: Sequence[int], num_layers: int) -> list[int]:
    bits = [int(b) for b in layer_bits]
    if len(bits) != num_layers:
        raise LlamanasError(
            f"The precision policy has {len(bits)} values; the model has {num_layers} decoder layers."
        )
    bad = sorted({b for b in bits if b not in BITS})
    if bad:
        raise LlamanasError(
            f"Unknown weight precision {bad} bits. Allowed: {', '.join(map(str, sorted(BITS, reverse=True)))}."
        )
    return bits


def _method_name(bits: Sequence[int]) -> str:
    kinds = set(bits)
    if kinds == {8}:
        return "int8"
    if kinds == {4}:
        return "int4"
    if kinds == {16}:
        return "fp16"
    return "mixed"


def check_method(method: str) -> int:
    if method not in METHODS:
        raise LlamanasError(f"Unknown quantization method {method!r}. Allowed: {', '.join(METHODS)}.")
    return METHODS[method]


@torch.no_grad()
def apply_precision(model, layer_bits: Sequence[int], group_size: int = DEFAULT_GROUP_SIZE):
    """Quantize each decoder layer's seven linears to its bits (16 = left as is), in place.

    Embeddings, norms and the LM head are not touched (the paper keeps them in 16 bits). The policy is
    recorded on ``model.config.llamanas_quant`` so ``save_quantized`` and ``model_bytes`` know it.
    """
    bits = _check_bits(layer_bits, len(model.get_decoder().layers))
    for site in decoder_linears(model):
        b = bits[site.layer]
        if b == 16:
            continue
        if isinstance(site.module, QuantLinear):
            raise LlamanasError("The model is already quantized; quantize the unquantized model.")
        site.replace(QuantLinear.from_linear(site.module, b, group_size))
    model.config.llamanas_quant = {
        "format": FORMAT_VERSION,
        "method": _method_name(bits),
        "layer_bits": bits,
        "group_size": group_size,
    }
    return model


def quantize_model(model, method: str = "int8", group_size: int = DEFAULT_GROUP_SIZE, backend: str = "auto"):
    """Quantize every decoder linear of ``model`` to INT8 or INT4 (in place; returns the model).

    ``backend``: ``cpu`` is our weight-only format (saves and reloads); ``bnb`` is bitsandbytes LLM.int8
    (CUDA, INT8 only, as in the paper; not saved by ``save_quantized``); ``auto`` picks ``bnb`` for INT8 on
    a CUDA model when bitsandbytes is installed, else ``cpu``.
    """
    bits = check_method(method)
    if backend not in BACKENDS:
        raise LlamanasError(f"Unknown quantization backend {backend!r}. Allowed: {', '.join(BACKENDS)}.")
    on_cuda = next(model.parameters()).device.type == "cuda"
    if backend == "auto":
        backend = "bnb" if bits == 8 and on_cuda and _has_bnb() else "cpu"
    if backend == "bnb":
        if bits != 8:
            raise LlamanasError(
                "The bnb backend does INT8 (LLM.int8) only; use --method int8 or backend cpu."
            )
        return quantize_bnb_int8(model)
    return apply_precision(model, [bits] * len(model.get_decoder().layers), group_size)


def _has_bnb() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


@torch.no_grad()
def quantize_bnb_int8(model, threshold: float = 6.0):
    """LLM.int8 (bitsandbytes) on every decoder linear, as in the paper; needs CUDA. Untested on CPU CI."""
    if not torch.cuda.is_available():
        raise LlamanasError("bitsandbytes LLM.int8 needs a CUDA GPU; use backend 'cpu' on this machine.")
    try:
        import bitsandbytes as bnb  # lazy: optional extra (CUDA only), not a dependency
    except ImportError:
        raise LlamanasError("The bnb backend needs bitsandbytes: pip install bitsandbytes.") from None
    model.half().cuda()
    for site in decoder_linears(model):
        lin = site.module
        new = bnb.nn.Linear8bitLt(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            has_fp16_weights=False,
            threshold=threshold,
        )
        new.weight = bnb.nn.Int8Params(lin.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
        if lin.bias is not None:
            new.bias = nn.Parameter(lin.bias.data.cpu(), requires_grad=False)
        site.replace(new.cuda())  # .cuda() quantizes the weight
    bits = [8] * len(model.get_decoder().layers)
    model.config.llamanas_quant = {
        "format": FORMAT_VERSION,
        "method": "int8",
        "layer_bits": bits,
        "backend": "bnb",
    }
    return model


# --- sizes --------------------------------------------------------------------------------------


def model_bytes(model) -> int:
    """Stored bytes of a (quantized or not) model: quantized linears at their size, everything else at
    16 bits, tied weights once. For an unquantized model this is its float16 size (the paper's baseline)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, QuantLinear):
            total += module.storage_bytes()
            continue
        for t in list(module.parameters(recurse=False)):
            if id(t) not in seen:
                seen.add(id(t))
                total += KEEP_BYTES * t.numel()
    return total


def layer_bytes(
    arch: Arch,
    mlp: int,
    kv_groups: int,
    bits: int = 16,
    group_size: int = DEFAULT_GROUP_SIZE,
    hidden: int | None = None,
) -> int:
    """Stored bytes of one decoder layer: its seven linears at ``bits``, biases and norms at 16 bits (a
    skipped block, size 0, has none), on a residual stream of ``hidden`` channels (None: the model's)."""
    h, hd, rep = hidden or arch.hidden_size, arch.head_dim, arch.heads_per_group
    q, kv = kv_groups * rep * hd, kv_groups * hd
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, mlp), (h, mlp), (mlp, h)]  # (in, out)
    total = sum(linear_bytes(i, o, bits, group_size) for i, o in shapes)
    if arch.attention_bias:
        total += KEEP_BYTES * (q + 2 * kv)
    if arch.mlp_bias and mlp:
        total += KEEP_BYTES * (2 * mlp + h)
    return total + KEEP_BYTES * h * ((kv_groups > 0) + (mlp > 0))  # each kept block's RMSNorm


def fixed_bytes(arch: Arch, hidden: int | None = None) -> int:
    """Stored bytes outside the decoder layers: embeddings (and an untied head) and the final norm."""
    h = hidden or arch.hidden_size
    return KEEP_BYTES * (h + arch.vocab_size * h * (1 if arch.tie_word_embeddings else 2))


def policy_bytes(
    arch: Arch,
    cfg: SubnetConfig | None = None,
    layer_bits: Sequence[int] | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> int:
    """Bytes of sub-network ``cfg`` (default: the full model) with one precision per kept layer
    (default: ``cfg.bits``, else all 16). Equals ``model_bytes`` of the extracted model after
    ``apply_precision``."""
    cfg = cfg or SubnetConfig.full(arch)
    if layer_bits is None:
        layer_bits = cfg.bits or [16] * cfg.depth
    bits = _check_bits(layer_bits, cfg.depth)
    layers = zip(cfg.mlp, cfg.kv_groups, bits, strict=True)
    h = cfg.hidden
    return fixed_bytes(arch, h) + sum(layer_bytes(arch, m, g, b, group_size, h) for m, g, b in layers)
