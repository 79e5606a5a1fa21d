"""Extraction: a sub-network becomes a standalone, smaller checkpoint on disk.

The weights come from ``supernet.slicing``; uniform configs are saved as plain family checkpoints, others
as ``llamanas_<family>`` (``model/hf_types.py``), both loading with ``AutoModelForCausalLM``. A
super-network with bias compensation (``supernet.compensation``) passes its biases on, so the checkpoint
computes what the activated sub-network computes; ``repair=True`` refits the kept ``down_proj`` /
``o_proj`` columns by least squares on calibration text (``compensation.repair_weights``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from llamanas.deploy.quantize import save_quantized
from llamanas.errors import LlamanasError
from llamanas.supernet.compensation import DEFAULT_RIDGE, repair_weights
from llamanas.supernet.importance import calibration_batches, calibration_texts, default_calibration
from llamanas.supernet.precision import DEFAULT_GROUP_SIZE, check_method, quantize_model
from llamanas.supernet.slicing import extracted_config, iter_sliced, output_biased, standalone
from llamanas.supernet.subnet import SubnetConfig

SUBNET_FILE = "llamanas_subnet.json"


def read_extracted_meta(folder: str | Path) -> dict:
    """``SUBNET_FILE`` of an extracted checkpoint: ``subnet`` (the config), ``params``, the caller's metadata
    (``source_model``, ``ordered``, ... from ``llamanas extract``) and ``compensation``/``repair`` when
    used; ``{}`` for a folder without one."""
    path = Path(folder) / SUBNET_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def extract(
    supernet,
    cfg: SubnetConfig,
    out_dir: str | Path,
    tokenizer=None,
    metadata: dict | None = None,
    quantize: str | None = None,
    group_size: int | None = None,
    repair: bool = False,
    calibration: str | Path | None = None,
    ridge: float | None = None,
) -> Path:
    """Write the sub-network ``cfg`` of ``supernet`` as a standalone checkpoint in ``out_dir``.

    ``quantize`` (``int8`` | ``int4``), or per-layer ``cfg.bits`` below 16 from a joint precision search,
    writes it weight-only quantized instead (``quantize.save_quantized`` format; reload with
    ``quantize.load_quantized``), in one step and without a 16-bit copy on disk.

    ``repair`` refits each sliced layer's kept ``down_proj`` / ``o_proj`` columns (and, with bias
    compensation, their biases) by ridge least squares so the layer reproduces the full layer's output on
    the ``calibration`` text (a file; default: the one ordering uses, ``importance.default_calibration``); ``ridge`` is relative
    to the mean diagonal of the Gram matrix (``compensation.DEFAULT_RIDGE``).
    """
    supernet.space.validate(cfg) if supernet.space.mode == "first_n" else cfg.check(supernet.arch)
    if quantize is not None:
        check_method(quantize)  # fail before the work
        if cfg.quantized:
            raise LlamanasError("The sub-network has its own per-layer 'bits'; do not also pass quantize.")
    if repair and tokenizer is None:
        raise LlamanasError("Least-squares repair tokenizes calibration text: pass the tokenizer.")
    if repair:
        calibration = calibration or default_calibration()  # the text ordering uses by default
    ridge = DEFAULT_RIDGE if ridge is None else float(ridge)
    if ridge < 0:
        raise LlamanasError(f"ridge must be >= 0; got {ridge}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {"subnet": cfg.to_dict(), "params": cfg.num_params(supernet.arch), **(metadata or {})}
    overrides = _repair(supernet, cfg, tokenizer, calibration, ridge) if repair else None
    if supernet.compensation is not None:
        info["compensation"] = True
    if repair:
        info["repair"] = {"calibration": str(calibration), "ridge": ridge}
    if quantize is not None or cfg.quantized:
        new = standalone(supernet, cfg, group_size, overrides)  # quantized already if cfg has per-layer bits
        if quantize is not None:
            quantize_model(new, quantize, group_size or DEFAULT_GROUP_SIZE, backend="cpu")
        save_quantized(new, out, tokenizer, metadata=info)
    else:
        with supernet.full_weights(cfg) as model:  # slices are taken from the full weights
            write_sliced(model, cfg, out, compensation=supernet.compensation, overrides=overrides)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    (out / SUBNET_FILE).write_text(json.dumps(info, indent=2))
    return out


def _repair(supernet, cfg: SubnetConfig, tokenizer, calibration, ridge: float) -> dict[str, torch.Tensor]:
    """The least-squares refits of ``cfg``'s sliced layers, measured on the full network."""
    batches = calibration_batches(tokenizer, calibration_texts(calibration))
    with supernet.full_weights(cfg) as model:
        return repair_weights(model, cfg, batches, supernet.compensation, ridge)


def write_sliced(
    model,
    cfg: SubnetConfig,
    out: Path,
    shard_bytes: int = 2 * 2**30,
    compensation=None,
    overrides: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``cfg`` of ``model`` as an HF checkpoint, streaming: one safetensors shard of at most
    ``shard_bytes`` is in memory at a time, so a 7B model is extracted without a second copy of it.
    ``compensation`` and ``overrides`` are ``slicing.iter_sliced``'s."""
    config, model_cls = extracted_config(model.config, cfg, output_biased(model, cfg, compensation))
    config.architectures = [model_cls.__name__]
    config.dtype = next(model.parameters()).dtype
    config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    written: list[list[str]] = []  # tensor names of each shard written so far
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        save_file(shard, str(out / f"part-{len(written) + 1}.safetensors.tmp"), metadata={"format": "pt"})
        written.append(list(shard))
        shard.clear()

    for name, t in iter_sliced(model, cfg, compensation, overrides):
        if tied and name == "lm_head.weight":
            continue
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > shard_bytes:
            flush()
            size = 0
        shard[name] = t.to("cpu").contiguous()
        size += nbytes
    flush()
    # Final names only once every shard is on disk: an interrupted extraction leaves no loadable model.
    total, weight_map = len(written), {}
    for i, names in enumerate(written, 1):
        final = "model.safetensors" if total == 1 else f"model-{i:05d}-of-{total:05d}.safetensors"
        (out / f"part-{i}.safetensors.tmp").replace(out / final)
        weight_map.update(dict.fromkeys(names, final))
    if total > 1:
        total_size = sum(p.stat().st_size for p in out.glob("model-*.safetensors"))
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
