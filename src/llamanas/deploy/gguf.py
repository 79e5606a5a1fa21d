"""GGUF export: a (sub-)network as one llama.cpp model file, written directly with ``gguf.GGUFWriter``.

A uniform network (every layer the same MLP size and KV groups) is written under llama.cpp's ``llama``
architecture with scalar sizes. A non-uniform one uses the ``deci`` architecture (NVIDIA's Puzzle /
Nemotron-51B port), whose loader and graph size every layer on its own from the per-layer arrays
``deci.feed_forward_length``, ``deci.attention.head_count`` and ``deci.attention.head_count_kv``.
Skipped layers are simply absent: the kept layers are renumbered, as in the extracted HF model. A skipped
attention block is ``head_count = head_count_kv = 0`` (deci's attention-free layer: the residual passes
through, no KV cache); a skipped MLP block is written as a stand-in of ``NO_MLP_WIDTH`` channels with
zero weights, whose output is exactly zero (see below).
The tokenizer fields come from ``gguf_tokenizer``.

Facts from llama.cpp's source (``src/models/deci.cpp``, ``src/llama-model.cpp`` in the version pinned by
the ``llamacpp`` extra) this module relies on:

- both architectures use "normal" RoPE on pairs of consecutive values, so the query/key rows of each head
  are permuted from HF's half-split order (as ``convert_hf_to_gguf.py`` does), biases included;
- q/k/v, output and MLP biases are optional tensors that both architectures load and add;
- ``deci`` with ``feed_forward_length = 0`` drops the whole layer (the graph ``continue``s before adding
  the attention output to the residual), so a layer without MLP cannot be written that way; it gets the
  zero stand-in MLP instead (silu(0) * 0 = 0, and a zero ``ffn_down``), which costs 3 x hidden x 32
  multiply-adds per token;
- ``head_count = 0`` skips the attention block (``cur = inpL``; no norm, no KV cache for the layer), but
  not in the first layer: the loader takes the head size from layer 0's head count, so a file whose
  first layer has no attention is refused;
- the rope dimension must equal the head size (``key_length``), which is written explicitly.

Types: ``f32``, ``f16``, ``q8_0``, ``q4_0`` with gguf's own numpy quantizers. Q8_0/Q4_0 quantize blocks
of 32 values along each row (the HF input dimension); a tensor whose row length is not a multiple of 32
falls back to F16, and the fallbacks are listed in the returned ``GGUFExport``. Per-layer ``bits``
(16/8/4, from a joint precision search) choose F16/Q8_0/Q4_0 for each layer's seven linears; the
embeddings and LM head then take ``type``. Norm weights and biases are always F32.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llamanas.deploy.gguf_tokenizer import write_tokenizer
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.families import family_of
from llamanas.supernet.slicing import build_extracted

TYPES = ("f32", "f16", "q8_0", "q4_0")
BITS_TO_TYPE = {16: "f16", 8: "q8_0", 4: "q4_0"}
ARCHS = ("auto", "llama", "deci")
NO_MLP_WIDTH = 32  # channels of the zero stand-in for a skipped MLP (one Q8_0/Q4_0 block)
BLOCK = 32  # values per Q8_0 / Q4_0 block
SUBNET_KEY = "llamanas.subnet"  # JSON of the sub-network config, when the caller gives one


@dataclass(frozen=True)
class GGUFExport:
    """What ``export_gguf`` wrote."""

    path: Path
    arch: str  # "llama" or "deci"
    type: str
    n_layers: int
    n_bytes: int
    tensor_types: dict[str, str] = field(repr=False)  # GGUF tensor name -> ggml type name
    fallbacks: tuple[str, ...] = ()  # tensors written as F16 because their rows do not split into blocks

    def summary(self) -> str:
        text = (
            f"{self.path} ({self.arch}, {self.type}, {self.n_layers} layers, {self.n_bytes / 2**20:.1f} MiB)"
        )
        if self.fallbacks:
            text += f"; {len(self.fallbacks)} tensor(s) kept in F16 (rows not a multiple of {BLOCK})"
        return text


def _qtype(name: str):
    import gguf  # lazy: the gguf library is needed only to write or read a GGUF file

    return {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
    }[name]


def _file_type(name: str):
    import gguf  # lazy: the gguf library is needed only to write or read a GGUF file

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[name]


# --- per-layer layout ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
    n_head: int
    n_head_kv: int
    n_ff: int


def _layout(model) -> tuple[Arch, list[_Layer]]:
    """Per-layer sizes read from the model's own linears (plain and ``llamanas_<family>`` models alike)."""
    arch = Arch.from_hf(model.config)
    family = family_of(model.config)
    hd = arch.head_dim
    q_name, k_name, _ = family.attention_rows
    gate_name = family.mlp_rows[0]
    out = []
    for i, layer in enumerate(model.get_decoder().layers):
        linears = family.linears_of(layer)
        no_attn, no_mlp = q_name not in linears, gate_name not in linears  # skipped blocks
        for name, lin in linears.items():
            if not isinstance(lin, torch.nn.Linear):
                raise LlamanasError(
                    f"Layer {i}: {name} is a {type(lin).__name__}, not a float linear. Export the float "
                    "sub-network (supernet.slicing.build_extracted) and pass its per-layer 'bits' to export_gguf."
                )
        q = 0 if no_attn else linears[q_name].out_features
        k = 0 if no_attn else linears[k_name].out_features
        if q % hd or k % hd:
            raise LlamanasError(f"Layer {i}: q/k sizes {q}/{k} are not multiples of the head size {hd}.")
        out.append(_Layer(q // hd, k // hd, 0 if no_mlp else linears[gate_name].out_features))
    return arch, out


def _check_supported(model, arch: Arch) -> dict:
    """Rope settings llama.cpp can reproduce, or a clear error for what it cannot."""
    c = model.config
    act = getattr(c, "hidden_act", "silu")
    if act != "silu":
        raise LlamanasError(f"hidden_act {act!r} cannot be exported to GGUF llama/deci; allowed: 'silu'.")
    if arch.head_dim % 2:
        raise LlamanasError(f"Head size {arch.head_dim} is odd; RoPE in llama.cpp needs an even head size.")
    layer_types = getattr(c, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise LlamanasError(
            f"Layer types {sorted(set(layer_types))}: GGUF llama/deci have full attention only; allowed: 'full_attention'."
        )
    family = family_of(c)
    window = getattr(c, "sliding_window", None)
    if family.model_type == "mistral" and window is not None:
        raise LlamanasError(
            f"sliding_window={window}: GGUF llama/deci have no sliding-window attention; allowed: None."
        )
    if family.model_type == "qwen2" and getattr(c, "use_sliding_window", False):
        raise LlamanasError("use_sliding_window=True: GGUF llama/deci have no sliding-window attention.")
    params = dict(getattr(c, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(c, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(c, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    if params["rope_type"] not in ("default", "linear", "llama3"):
        raise LlamanasError(
            f"RoPE type {params['rope_type']!r} cannot be exported; allowed: 'default', 'linear', 'llama3'."
        )
    return params


def _llama3_rope_factors(params: dict, head_dim: int) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` for Llama-3 RoPE scaling (as in its HF converter)."""
    base = params.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old = params.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF half-split RoPE rows -> llama.cpp's interleaved pairs, per head (weights and biases)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- export ---------------------------------------------------------------------------------------
def export_gguf(
    model,
    tokenizer_source,
    out_path: str | Path,
    type: str = "f16",
    bits: Sequence[int] | None = None,
    arch: str = "auto",
    overwrite: bool = False,
    name: str | None = None,
    subnet: dict | None = None,
    pre: str = "default",
) -> GGUFExport:
    """Write ``model`` (an HF LLaMA-family model, plain or ``llamanas_<family>``) as a GGUF file.

    ``tokenizer_source``: ``"default"`` (the default model's original GGUF), a ``.gguf`` file whose
    ``tokenizer.*`` fields are copied, or an HF folder with a byte-level BPE ``tokenizer.json`` (``pre`` is
    then llama.cpp's pre-tokenizer name, e.g. ``"smollm"``, ``"llama-bpe"``; ``"default"`` is GPT-2's).
    ``bits``: one of 16/8/4 per layer of ``model`` (e.g. ``SubnetConfig.bits``). ``arch``: ``auto`` picks
    ``llama`` for uniform layers and ``deci`` otherwise. ``subnet``: stored as JSON under ``llamanas.subnet``.
    The file is written to a temporary name and renamed, so an error leaves no partial output.
    """
    import gguf  # lazy: the gguf library is needed only to write or read a GGUF file

    if type not in TYPES:
        raise LlamanasError(f"Unknown GGUF type {type!r}. Available: {', '.join(TYPES)}.")
    if arch not in ARCHS:
        raise LlamanasError(f"Unknown GGUF architecture {arch!r}. Available: {', '.join(ARCHS)}.")
    out = Path(out_path).expanduser()
    if out.exists() and not overwrite:
        raise LlamanasError(f"Output {str(out)!r} exists; pass overwrite=True (--overwrite) to replace it.")
    if not out.parent.is_dir():
        raise LlamanasError(f"Output folder {str(out.parent)!r} does not exist.")
    a, layers = _layout(model)
    n = len(layers)
    if bits is not None:
        bits = [int(b) for b in bits]
        if len(bits) != n:
            raise LlamanasError(f"'bits' has {len(bits)} values; the model has {n} layers (one value each).")
        bad = sorted({b for b in bits if b not in BITS_TO_TYPE})
        if bad:
            raise LlamanasError(f"'bits' values {bad} have no GGUF type; allowed: {sorted(BITS_TO_TYPE)}.")
    if layers[0].n_head == 0:
        raise LlamanasError(
            "Layer 0 skips its attention block, but llama.cpp derives the head size from the first layer "
            "(it would load as head size 0): for GGUF the first layer must keep its attention."
        )
    rope = _check_supported(model, a)
    uniform = len(set(layers)) == 1 and layers[0].n_ff > 0  # layer 0 has attention (checked above)
    if arch == "auto":
        arch = "llama" if uniform else "deci"
    if arch == "llama" and not uniform:
        if len(set(layers)) == 1:
            raise LlamanasError(
                "GGUF 'llama' cannot skip attention or MLP blocks; use arch='deci' (or 'auto')."
            )
        i = next(i for i, lay in enumerate(layers) if lay != layers[0])
        raise LlamanasError(
            f"Layer {i} has {layers[i].n_head} heads / {layers[i].n_head_kv} KV heads / MLP {layers[i].n_ff}, "
            f"layer 0 has {layers[0].n_head}/{layers[0].n_head_kv}/{layers[0].n_ff}: GGUF 'llama' needs the "
            "same sizes in every layer; use arch='deci' (or 'auto')."
        )

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tensor_types: dict[str, str] = {}
    fallbacks: list[str] = []
    writer = gguf.GGUFWriter(
        tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DECI if arch == "deci" else gguf.MODEL_ARCH.LLAMA]
    )
    try:
        c = model.config
        writer.add_name(name or str(getattr(c, "_name_or_path", "") or "llamanas-subnet"))
        writer.add_block_count(n)
        writer.add_context_length(int(getattr(c, "max_position_embeddings", 2048)))
        writer.add_embedding_length(a.hidden_size)
        if arch == "deci":
            writer.add_feed_forward_length([int(lay.n_ff or NO_MLP_WIDTH) for lay in layers])
            writer.add_head_count([int(lay.n_head) for lay in layers])
            writer.add_head_count_kv([int(lay.n_head_kv) for lay in layers])
        else:
            writer.add_feed_forward_length(int(layers[0].n_ff))
            writer.add_head_count(int(layers[0].n_head))
            writer.add_head_count_kv(int(layers[0].n_head_kv))
        writer.add_key_length(a.head_dim)
        writer.add_value_length(a.head_dim)
        writer.add_rope_dimension_count(a.head_dim)
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        if rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
        writer.add_vocab_size(a.vocab_size)
        writer.add_file_type(_file_type(type))
        if type in ("q8_0", "q4_0") or (bits and min(bits) < 16):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if subnet is not None:
            writer.add_string(SUBNET_KEY, json.dumps(subnet))

        n_tokens = write_tokenizer(writer, tokenizer_source, pre)
        if n_tokens != a.vocab_size:
            raise LlamanasError(
                f"The tokenizer has {n_tokens} tokens but the model's vocabulary is {a.vocab_size}; "
                "llama.cpp needs them equal (use the base model's tokenizer)."
            )

        def add(tname: str, t: torch.Tensor, ttype: str, n_head: int | None = None) -> None:
            arr = t.detach().to(torch.float32).cpu().numpy()
            if n_head is not None:
                arr = _permute(arr, n_head)
            if arr.ndim == 1:
                ttype = "f32"
            elif ttype in ("q8_0", "q4_0") and arr.shape[-1] % BLOCK:
                fallbacks.append(tname)
                ttype = "f16"
            qt = _qtype(ttype)
            data = gguf.quants.quantize(np.ascontiguousarray(arr), qt)
            writer.add_tensor(tname, data, raw_dtype=qt if ttype in ("q8_0", "q4_0") else None)
            tensor_types[tname] = qt.name

        def tn(kind, bid: int | None = None, suffix: str = "weight") -> str:
            base = gguf.TENSOR_NAMES[kind]
            return (base.format(bid=bid) if bid is not None else base) + "." + suffix

        T = gguf.MODEL_TENSOR
        family = family_of(c)
        decoder = model.get_decoder()
        add(tn(T.TOKEN_EMBD), decoder.embed_tokens.weight, type)
        if rope["rope_type"] == "llama3":
            add(tn(T.ROPE_FREQS), torch.from_numpy(_llama3_rope_factors(rope, a.head_dim)), "f32")
        q_name, k_name, v_name = family.attention_rows
        (o_name,) = family.attention_cols
        gate_name, up_name = family.mlp_rows
        (down_name,) = family.mlp_cols
        kinds = {
            q_name: T.ATTN_Q,
            k_name: T.ATTN_K,
            v_name: T.ATTN_V,
            o_name: T.ATTN_OUT,
            gate_name: T.FFN_GATE,
            up_name: T.FFN_UP,
            down_name: T.FFN_DOWN,
        }
        for bid, (layer, lay) in enumerate(zip(decoder.layers, layers, strict=True)):
            ltype = BITS_TO_TYPE[bits[bid]] if bits is not None else type
            if lay.n_head:
                add(tn(T.ATTN_NORM, bid), getattr(layer, family.attention_norm).weight, "f32")
            if lay.n_ff:
                add(tn(T.FFN_NORM, bid), getattr(layer, family.mlp_norm).weight, "f32")
            else:  # the zero stand-in of a skipped MLP: its output is exactly 0
                h, w = a.hidden_size, NO_MLP_WIDTH
                add(tn(T.FFN_NORM, bid), torch.ones(h), "f32")
                for kind, shape in ((T.FFN_GATE, (w, h)), (T.FFN_UP, (w, h)), (T.FFN_DOWN, (h, w))):
                    add(tn(kind, bid), torch.zeros(shape), ltype)
            for lname, lin in family.linears_of(layer).items():
                heads = {q_name: lay.n_head, k_name: lay.n_head_kv}.get(lname)
                add(tn(kinds[lname], bid), lin.weight, ltype, heads)
                if lin.bias is not None:
                    add(tn(kinds[lname], bid, "bias"), lin.bias, "f32", heads)
        add(tn(T.OUTPUT_NORM), decoder.norm.weight, "f32")
        if not getattr(c, "tie_word_embeddings", False):
            add(tn(T.OUTPUT), model.get_output_embeddings().weight, type)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if fallbacks:
        warnings.warn(
            f"GGUF {type}: {len(fallbacks)} tensor(s) kept in F16, rows not a multiple of {BLOCK}: "
            + ", ".join(fallbacks[:6])
            + (", ..." if len(fallbacks) > 6 else ""),
            stacklevel=2,
        )
    return GGUFExport(out, arch, type, n, out.stat().st_size, tensor_types, tuple(fallbacks))


def export_subnet_gguf(
    supernet_or_model,
    cfg,
    tokenizer_source,
    out_path: str | Path,
    type: str = "f16",
    overwrite: bool = False,
    **kw,
) -> GGUFExport:
    """Export the sub-network ``cfg`` of a super-network (or of a plain HF model) as GGUF.

    The float sub-network is sliced out (``supernet.slicing.build_extracted``) and ``cfg.bits``, when
    present, picks each layer's GGUF type (16 -> F16, 8 -> Q8_0, 4 -> Q4_0) instead of ``type``.
    """
    is_supernet = hasattr(supernet_or_model, "full_weights")
    if not is_supernet:
        sub = build_extracted(supernet_or_model, cfg)
    else:
        with supernet_or_model.full_weights(cfg) as model:  # slices come from the full weights
            sub = build_extracted(model, cfg)
    return export_gguf(
        sub,
        tokenizer_source,
        out_path,
        type=type,
        bits=cfg.bits,
        overwrite=overwrite,
        subnet=cfg.to_dict(),
        **kw,
    )


# --- reading back ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GGUFInfo:
    """What the CLI reports about a GGUF file (read from its header, no weights loaded)."""

    path: Path
    arch: str
    type: str  # f32 / f16 / q8_0 / q4_0 for files written here; the ggml file-type name otherwise
    n_layers: int
    n_params: int  # elements of every weight tensor (tied embeddings once, as ``Arch.num_params``)
    n_params_non_embedding: int  # without token_embd and output
    context_length: int | None
    n_bytes: int  # file size
    n_tensor_bytes: int  # the tensors' data (weights at their GGUF types), without header and tokenizer
    subnet: dict | None  # the ``llamanas.subnet`` config, when export_subnet_gguf wrote the file


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Architecture, type, parameter count and sub-network of a GGUF file, or a clear error."""
    import gguf  # lazy: the gguf library is needed only to write or read a GGUF file

    p = Path(path).expanduser()
    if not p.is_file():
        raise LlamanasError(f"GGUF file {str(path)!r} does not exist.")
    try:
        reader = gguf.GGUFReader(p)
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError/struct errors on a bad file
        raise LlamanasError(f"{str(p)!r} is not a readable GGUF file: {e}") from None

    def get(key, default=None):
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    arch = str(get("general.architecture", "?"))
    ft = get("general.file_type")
    names = {int(_file_type(t)): t for t in TYPES}
    type_name = "?" if ft is None else names.get(int(ft))
    if type_name is None:
        try:
            type_name = gguf.LlamaFileType(int(ft)).name.lower()
        except ValueError:
            type_name = f"file_type {ft}"
    embed = {"token_embd.weight", "output.weight"}
    weights = [t for t in reader.tensors if t.name != "rope_freqs.weight"]
    n_params = sum(int(t.n_elements) for t in weights)
    n_embed = sum(int(t.n_elements) for t in weights if t.name in embed)
    subnet = get(SUBNET_KEY)
    ctx = get(f"{arch}.context_length")
    return GGUFInfo(
        path=p,
        arch=arch,
        type=type_name,
        n_layers=int(get(f"{arch}.block_count", 0)),
        n_params=n_params,
        n_params_non_embedding=n_params - n_embed,
        context_length=int(ctx) if ctx is not None else None,
        n_bytes=p.stat().st_size,
        n_tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        subnet=json.loads(subnet) if subnet else None,
    )
