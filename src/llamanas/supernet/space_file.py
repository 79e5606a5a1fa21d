"""The search-space file: the YAML or JSON file whose keys narrow the default space (docs/search_space.md).

``read_space_file`` parses it; ``SearchSpace.from_dict`` builds the space from its keys: the depth keys
through ``depth_options``, the per-layer width and precision keys through ``layer_choices``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.supernet.subnet import BITS

SPACE_KEYS = (
    "mode",
    "min_depth",
    "depth_choices",
    "always_keep",
    "mlp_choices",
    "kv_groups",
    "bits",
    "layers",
    "skip_attention",
    "skip_mlp",
    "hidden_choices",
)
LAYER_KEYS = ("mlp_choices", "kv_groups", "bits", "skip_attention", "skip_mlp")  # under layers.<i>


def read_space_file(path: str | Path) -> dict:
    """The file's top-level mapping (YAML for .yaml/.yml, else JSON), or one clear error."""
    p = Path(path)
    if not p.is_file():
        raise LlamanasError(
            f"Search-space file {str(path)!r} does not exist (a space by name is one of: width, full)."
        )
    text = p.read_text()
    try:
        d = (yaml.safe_load(text) or {}) if p.suffix in (".yaml", ".yml") else json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear line
        raise LlamanasError(f"Search-space file {path}: cannot parse ({e}).") from None
    if not isinstance(d, dict):
        raise LlamanasError(f"Search-space file {path}: expected a mapping at the top level.")
    return d


def depth_options(d: dict) -> dict:
    """The depth keys as ``SearchSpace.from_arch`` arguments, after checking every top-level key is known."""
    extra = set(d) - set(SPACE_KEYS)
    if extra:
        raise LlamanasError(f"Unknown search-space keys {sorted(extra)}; allowed: {sorted(SPACE_KEYS)}.")
    return {
        "mode": d.get("mode", "per_layer"),
        "min_depth": d.get("min_depth"),
        "depth_choices": tuple(d["depth_choices"]) if "depth_choices" in d else None,
        "always_keep": tuple(d.get("always_keep", ())),
    }


def layer_choices(d: dict, arch: Arch) -> dict:
    """The width and precision keys, top-level and per layer, as the ``SearchSpace`` fields
    ``mlp_choices``, ``kv_choices`` and ``bits_choices`` (one tuple of choices per layer)."""
    skip_attn, skip_mlp = _flag(d, "skip_attention"), _flag(d, "skip_mlp")
    mlp_default = _sizes(d.get("mlp_choices"), arch.intermediate_size, "mlp_choices")
    kv_default = _groups(d.get("kv_groups"), arch.num_kv_heads, "kv_groups")
    mlp = [_skip(mlp_default, skip_mlp, "mlp_choices" not in d)] * arch.num_layers
    kv = [_skip(kv_default, skip_attn, "kv_groups" not in d)] * arch.num_layers
    bits = [_bits(d["bits"], "bits")] * arch.num_layers if "bits" in d else None
    for key, spec in (d.get("layers") or {}).items():
        i = int(key)
        if not 0 <= i < arch.num_layers:
            raise LlamanasError(
                f"'layers' names layer {i}, but the model has layers 0..{arch.num_layers - 1}."
            )
        unknown_keys = set(spec) - set(LAYER_KEYS)
        if unknown_keys:
            raise LlamanasError(
                f"layers.{i}: unknown keys {sorted(unknown_keys)}; allowed: {', '.join(sorted(LAYER_KEYS))}."
            )
        if "bits" in spec:
            if bits is None:
                raise LlamanasError(f"layers.{i}.bits needs a top-level 'bits' list (e.g. [4, 8, 16]).")
            bits[i] = _bits(spec["bits"], f"layers.{i}.bits")
        if "mlp_choices" in spec:
            mlp[i] = _sizes(spec["mlp_choices"], arch.intermediate_size, f"layers.{i}.mlp_choices")
        if "kv_groups" in spec:
            kv[i] = _groups(spec["kv_groups"], arch.num_kv_heads, f"layers.{i}.kv_groups")
        if "skip_mlp" in spec:
            mlp[i] = _skip(mlp[i], _flag(spec, "skip_mlp", f"layers.{i}."), True)
        if "skip_attention" in spec:
            kv[i] = _skip(kv[i], _flag(spec, "skip_attention", f"layers.{i}."), True)
    return {
        "mlp_choices": tuple(mlp),
        "kv_choices": tuple(kv),
        "bits_choices": tuple(bits) if bits else (),
        "hidden_choices": _hidden(d["hidden_choices"], arch.hidden_size) if "hidden_choices" in d else (),
    }


def _hidden(spec, full: int) -> tuple[int, ...]:
    """Residual-stream widths as fractions (<= 1.0) or sizes, rounded like MLP sizes (multiples of 64 where
    the size allows: llama.cpp's quantized rows need multiples of 32); the full width is always a choice."""
    if not isinstance(spec, list) or not spec:
        raise LlamanasError(f"hidden_choices must be a non-empty list of fractions or sizes; got {spec!r}.")
    out = {full}
    for v in spec:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise LlamanasError(f"hidden_choices: {v!r} is not a fraction in (0, 1] or a size.")
        size = round_size(float(v), full) if isinstance(v, float) and v <= 1.0 else int(v)
        if size > full:
            raise LlamanasError(f"hidden_choices: size {size} exceeds the model's hidden size {full}.")
        out.add(size)
    return tuple(sorted(out))


def round_size(frac: float, full: int) -> int:
    """A fraction of ``full`` rounded to a multiple of 64 where the size allows (else of 8, else 1)."""
    if frac >= 1.0:
        return full
    raw = frac * full
    for mult in (64, 8, 1):
        if full >= 4 * mult:
            return int(max(mult, min(full, mult * round(raw / mult))))
    return max(1, int(round(raw)))


def _flag(d: dict, key: str, where: str = "") -> bool | None:
    """A yes/no key of a space file; None when absent."""
    if key not in d:
        return None
    if not isinstance(d[key], bool):
        raise LlamanasError(f"{where}{key} must be true or false; got {d[key]!r}.")
    return d[key]


def _skip(choices: tuple[int, ...], flag: bool | None, default: bool) -> tuple[int, ...]:
    """Add (true) or remove (false) the 0 choice, a skipped block; when not said, the default list gets
    it and a list the file spells out is taken as it is."""
    if flag is None:
        flag = True if default else None
    if flag is None:
        return choices
    return tuple(sorted(set(choices) | {0})) if flag else tuple(c for c in choices if c != 0)


def _sizes(spec, full: int, where: str) -> tuple[int, ...]:
    """MLP choices as fractions (<= 1.0) or absolute sizes (> 1); 0 skips the MLP."""
    if spec is None:
        spec = [0.25, 0.5, 0.75, 1.0]
    if not isinstance(spec, list) or not spec:
        raise LlamanasError(f"{where} must be a non-empty list of fractions or sizes; got {spec!r}.")
    out = set()
    for v in spec:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise LlamanasError(f"{where}: {v!r} is not a fraction, a size or 0 (MLP skipped).")
        size = round_size(float(v), full) if (isinstance(v, float) and 0 < v <= 1.0) else int(v)
        if size > full:
            raise LlamanasError(f"{where}: size {size} exceeds the model's intermediate size {full}.")
        out.add(size)
    return tuple(sorted(out))


def _bits(spec, where: str) -> tuple[int, ...]:
    """Weight-precision choices: a non-empty list drawn from 4, 8, 16."""
    if not isinstance(spec, list) or not spec or any(b not in BITS for b in spec):
        raise LlamanasError(f"{where} must be a non-empty list drawn from {list(BITS)}; got {spec!r}.")
    return tuple(sorted(set(spec)))


def _groups(spec, full: int, where: str) -> tuple[int, ...]:
    if spec is None:
        return tuple(range(1, full + 1))
    if not isinstance(spec, list) or not spec:
        raise LlamanasError(f"{where} must be a non-empty list of KV-group counts; got {spec!r}.")
    bad = [g for g in spec if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= full]
    if bad:
        raise LlamanasError(f"{where}: {bad} are not KV-group counts in 0..{full} (0 skips attention).")
    return tuple(sorted(set(spec)))
