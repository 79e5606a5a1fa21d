"""Quantized checkpoints: save and reload weight-only INT8/INT4 models, compare before and after, and
re-score a search front after quantization. The quantized layers and byte counts are in
``supernet/precision.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import llamanas.model.hf_types  # noqa: F401 - registers the per-layer model types
from llamanas.errors import LlamanasError
from llamanas.evaluation.evaluate import evaluate
from llamanas.evaluation.measure import time_model
from llamanas.evaluation.questions import Questions
from llamanas.model.device import DTYPES, dtype_name
from llamanas.model.families import decoder_linears
from llamanas.model.load import fingerprint, load_model
from llamanas.search.files import RunFiles
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.precision import (
    DEFAULT_GROUP_SIZE,
    FORMAT_VERSION,
    QuantLinear,
    _check_bits,
    check_method,
    model_bytes,
    quantize_model,
)
from llamanas.supernet.slicing import standalone
from llamanas.supernet.subnet import SubnetConfig

QUANT_FILE = "llamanas_quant.json"
WEIGHTS_FILE = "quantized.safetensors"  # not model.safetensors: plain from_pretrained must fail loudly

# --- save and load ------------------------------------------------------------------------------


def _state_for_saving(model) -> dict[str, torch.Tensor]:
    """The state dict with float tensors in float16 and the tied head left out (safetensors refuses
    shared tensors)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out = {}
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        t = t.detach().cpu()
        if t.is_floating_point() and t.dtype != torch.float16:
            t = t.half()
        out[name] = t.contiguous()
    return out


def save_quantized(model, out_dir: str | Path, tokenizer=None, metadata: dict | None = None) -> Path:
    """Write a model quantized by ``apply_precision``/``quantize_model`` to ``out_dir``.

    Files: ``config.json`` (the plain HF config), ``quantized.safetensors``, ``llamanas_quant.json`` (the
    policy, byte counts and ``metadata``), and the tokenizer when given. Reload with ``load_quantized``.
    """
    info = getattr(model.config, "llamanas_quant", None)
    if not info:
        raise LlamanasError("The model is not quantized; call quantize_model or apply_precision first.")
    if info.get("backend") == "bnb":
        raise LlamanasError("bitsandbytes models are not saved by llamanas; use backend 'cpu' to save.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    saved = config.llamanas_quant
    del config.llamanas_quant  # keep config.json a plain HF config
    try:
        config.save_pretrained(out)
    finally:
        config.llamanas_quant = saved
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    save_file(_state_for_saving(model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    info = dict(saved, bytes=model_bytes(model), **(metadata or {}))
    (out / QUANT_FILE).write_text(json.dumps(info, indent=2))
    return out


def is_quantized_dir(path: str | Path) -> bool:
    return (Path(path) / QUANT_FILE).is_file()


def read_quant_meta(path: str | Path) -> dict:
    """``QUANT_FILE`` of a folder written by ``save_quantized``: the policy (``format``, ``method``,
    ``layer_bits``, ``group_size``, ``backend``), ``bytes`` (the model's) and the caller's ``metadata``."""
    if not is_quantized_dir(path):
        raise LlamanasError(f"{str(path)!r} is not a quantized checkpoint (no {QUANT_FILE} in it).")
    info = json.loads((Path(path) / QUANT_FILE).read_text())
    if info.get("format") != FORMAT_VERSION:
        raise LlamanasError(
            f"{path}: quantized format {info.get('format')!r} unsupported; this reads {FORMAT_VERSION}."
        )
    return info


def load_quantized(path: str | Path, dtype: str | torch.dtype = "float32"):
    """(model, tokenizer or None) from a folder written by ``save_quantized``.

    ``dtype`` is the compute dtype of the unquantized tensors and activations: float32 (default, the
    CPU reference) or bfloat16 (uses PyTorch's packed INT8/INT4 CPU kernels).
    """
    p = Path(path)
    info = read_quant_meta(p)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise LlamanasError(f"Unknown dtype {dtype!r}. Available: {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    config = AutoConfig.from_pretrained(p)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    bits = _check_bits(info["layer_bits"], len(model.get_decoder().layers))
    group_size = int(info.get("group_size", DEFAULT_GROUP_SIZE))
    for site in decoder_linears(model):
        b, lin = bits[site.layer], site.module
        if b != 16:
            site.replace(
                QuantLinear(
                    lin.in_features, lin.out_features, b, group_size, bias=lin.bias is not None, device="meta"
                )
            )
    state = load_file(str(p / WEIGHTS_FILE))
    # Quantized codes and their scales keep their stored dtypes; every other float tensor becomes ``dtype``.
    quant_keys = {
        f"{n}.{b}"
        for n, m in model.named_modules()
        if isinstance(m, QuantLinear)
        for b in ("scale", "zero", "bias")
    }
    state = {
        k: (v.to(dtype) if v.is_floating_point() and k not in quant_keys else v) for k, v in state.items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise LlamanasError(
            f"{path}: checkpoint mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    _rebuild_rotary(model)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise LlamanasError(f"{path}: tensors not in the checkpoint: {leftover[:5]}.")
    model.config.llamanas_quant = {
        k: info[k] for k in ("format", "method", "layer_bits", "group_size") if k in info
    }
    model.eval()
    tokenizer = None
    if (p / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(p)
    return model, tokenizer


def _rebuild_rotary(model) -> None:
    """Rotary ``inv_freq`` buffers are not saved; recreate them on the CPU after a meta-device build."""
    for module in model.modules():
        inv = getattr(module, "inv_freq", None)
        if isinstance(inv, torch.Tensor) and inv.is_meta:
            fresh = type(module)(config=model.config)
            module.register_buffer("inv_freq", fresh.inv_freq, persistent=False)
            if hasattr(module, "original_inv_freq"):
                module.original_inv_freq = fresh.inv_freq
            if hasattr(fresh, "attention_scaling"):
                module.attention_scaling = fresh.attention_scaling


# --- before/after comparison ---------------------------------------------------------------------


@dataclass
class QuantPoint:
    """One model's size, speed and accuracy (``results``: task -> TaskResult.to_dict()).

    ``bytes`` counts every unquantized tensor at 16 bits (``model_bytes``), so "before" is the float16
    model the paper compares with, whatever dtype the model was loaded in.
    """

    label: str
    bits: str
    params: int
    bytes: int
    file_bytes: int | None = None
    latency_ms: float | None = None
    throughput_tok_s: float | None = None
    results: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuantComparison:
    """Before and after quantization of the same model, on the same evaluator and machine."""

    method: str
    group_size: int
    before: QuantPoint
    after: QuantPoint
    dtype: str = "float32"
    threads: int | None = None

    @property
    def size_ratio(self) -> float:
        return self.after.bytes / self.before.bytes

    def accuracy_delta(self) -> dict[str, float]:
        """after - before, per "task/metric"."""
        out = {}
        for task, r in self.after.results.items():
            for metric, v in r.get("metrics", {}).items():
                b = self.before.results.get(task, {}).get("metrics", {}).get(metric)
                if b is not None:
                    out[f"{task}/{metric}"] = v - b
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size_ratio"] = self.size_ratio
        d["accuracy_delta"] = self.accuracy_delta()
        return d


def _num_params(model) -> int:
    """Parameters as the unquantized model had them (quantized linears count in_features * out_features)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, QuantLinear):
            total += module.in_features * module.out_features + (
                module.out_features if module.bias is not None else 0
            )
            continue
        for t in module.parameters(recurse=False):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel()
    return total


def _point(model, tokenizer, label, bits, tasks, questions, timing, timing_kwargs) -> QuantPoint:
    point = QuantPoint(label=label, bits=bits, params=_num_params(model), bytes=model_bytes(model))
    if tasks:
        results = evaluate(model, tokenizer, list(tasks), questions)
        point.results = {k: r.to_dict() for k, r in results.items()}
    if timing:
        model.generation_config.pad_token_id = 0
        point.latency_ms, _, point.throughput_tok_s = time_model(model, **timing_kwargs)
    return point


def compare_quantization(
    model,
    tokenizer,
    method: str = "int8",
    tasks: Sequence[str] = (),
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    questions: Questions = Questions(),
    timing: bool = True,
    timing_kwargs: dict | None = None,
    out_dir: str | Path | None = None,
) -> tuple[QuantComparison, nn.Module]:
    """Evaluate and time ``model``, quantize it (in place), evaluate and time again.

    Returns the comparison and the quantized model; with ``out_dir`` the quantized model is also saved
    (with ``comparison.json``) and ``after.file_bytes`` is its weights file's size.
    """
    check_method(method)
    timing_kwargs = timing_kwargs or {}
    before = _point(model, tokenizer, "before", "16", tasks, questions, timing, timing_kwargs)
    quantize_model(model, method, group_size, backend="cpu")
    after = _point(model, tokenizer, "after", method, tasks, questions, timing, timing_kwargs)
    comparison = QuantComparison(
        method,
        group_size,
        before,
        after,
        dtype=dtype_name(next(model.parameters()).dtype),
        threads=torch.get_num_threads() if timing else None,
    )
    if out_dir is not None:
        path = save_quantized(model, out_dir, tokenizer, metadata={"comparison": comparison.to_dict()})
        comparison.after.file_bytes = (path / WEIGHTS_FILE).stat().st_size
        (path / "comparison.json").write_text(json.dumps(comparison.to_dict(), indent=2))
    return comparison, model


def quantize_checkpoint(
    model_dir: str | Path,
    method: str,
    out_dir: str | Path,
    dtype: str = "auto",
    device: str = "auto",
    **kwargs,
) -> QuantComparison:
    """Quantize an extracted checkpoint folder (CLI ``llamanas quantize``): load on ``device`` in ``dtype``
    (``load_model``'s rules), compare, save."""
    check_method(method)
    model, tokenizer = load_model(str(model_dir), dtype=dtype, device=device)
    comparison, model = compare_quantization(model, tokenizer, method, out_dir=out_dir, **kwargs)
    src = Path(model_dir)
    extracted_info = src / "llamanas_subnet.json"
    if extracted_info.is_file():
        shutil.copy(extracted_info, Path(out_dir) / extracted_info.name)
    return comparison


# --- the front after quantization ---------------------------------------------------------------


def quantize_front(
    run_dir: str | Path,
    method: str = "int8",
    *,
    model: str | None = None,
    tasks: Sequence[str] | None = None,
    questions: Questions | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    timing: bool = False,
    supernet=None,
    tokenizer=None,
    progress: bool = False,
    device: str = "auto",
) -> Path:
    """Re-evaluate every sub-network of a search's front after quantization; writes
    ``front_<method>.json`` in the run folder beside ``front.json`` (the paper's "front moves left").

    The model, tasks and questions default to those recorded in the run's ``run.json`` (its evaluation
    settings: ``seed`` is the seed of the run's --limit subset, its data seed); pass a loaded
    ``supernet``/``tokenizer`` to skip loading. The run folder is read and written through
    ``search.files.RunFiles``.
    """
    check_method(method)
    run = Path(run_dir)
    files = RunFiles(run)
    points = files.front()
    args = files.args() if files.has_info() else None
    saved = files.eval_settings().questions() if args else Questions()
    tasks = list(tasks or (args.tasks if args else ()))
    if not tasks:
        raise LlamanasError(f"{run}: no tasks recorded in run.json; pass tasks=[...] (--tasks).")
    questions = questions or saved
    fingerprint_ok = None
    if supernet is None:
        name = model or (args.model if args else None)
        if not name:
            raise LlamanasError(f"{run}: no model recorded in run.json; pass model=... (--model).")
        supernet, tokenizer = load_supernet(
            name, order=args.order if args else True, dtype=args.dtype if args else "auto", device=device
        )
        run_fingerprint = files.info().get("fingerprint") if args else None
        if run_fingerprint:
            # The search's weights (after ordering) must be the ones we quantize, or the points differ.
            fingerprint_ok = fingerprint(supernet.model) == run_fingerprint
    out_points = []
    iterator = points
    if progress:
        iterator = tqdm(points, desc=f"front -> {method}")
    for p in iterator:
        cfg = SubnetConfig.from_dict(p["config"])
        small = standalone(supernet, cfg)
        bytes_16 = model_bytes(small)
        quantize_model(small, method, group_size, backend="cpu")
        results = evaluate(small, tokenizer, tasks, questions)
        entry = {
            "config": cfg.to_dict(),
            "params": cfg.num_params(supernet.arch),
            "bytes_fp16": bytes_16,
            "bytes": model_bytes(small),
            "results": {k: r.to_dict() for k, r in results.items()},
            "original": {k: v for k, v in p.items() if k != "config"},
        }
        if timing:
            small.generation_config.pad_token_id = 0
            entry["latency_ms"], _, entry["throughput_tok_s"] = time_model(small)
        out_points.append(entry)
        del small
    payload = {
        "method": method,
        "group_size": group_size,
        "tasks": tasks,
        **questions.to_dict(),
        "fingerprint_matches_run": fingerprint_ok,
        "points": out_points,
    }
    return files.write_front_after(method, payload)
