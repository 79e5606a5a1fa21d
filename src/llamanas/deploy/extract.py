"""Extraction: a sub-network becomes a standalone, smaller checkpoint on disk.

The weights come from ``supernet.slicing``; uniform configs are saved as plain family checkpoints, others
as ``llamanas_<family>`` (``model/hf_types.py``), both loading with ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamanas.errors import LlamanasError
from llamanas.supernet.slicing import standalone
from llamanas.supernet.space import SubnetConfig

SUBNET_FILE = "llamanas_subnet.json"


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
    from llamanas.deploy.quantize import save_quantized
    from llamanas.supernet.precision import DEFAULT_GROUP_SIZE, check_method, quantize_model

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
