"""Speed in llama.cpp as a search objective: time calibration configs to fit a latency table before a
search, and time the final front for real after it.

- ``build_latency_table``: export a few dozen sub-networks (``search.latency.calibration_configs``: the
  ends of the space, uniform configs at every width, random ones) to a temporary GGUF each, time them in
  llama.cpp (``deploy.llamacpp.time_gguf``), fit ``search.latency.LatencyTable`` on most of them and
  report its error on the held-out rest; ``build_latency_table_for`` does it for a ``SearchArgs`` (the
  builder ``search.run.search`` takes as ``latency_table_builder``).
- ``time_front``: export every member of a finished run's front and time it; writes
  ``front_llamacpp.json`` through ``search.files.RunFiles`` (like ``deploy.quantize.quantize_front``), with
  the table's prediction beside each timing when the run used one.

Only the shapes matter for speed, so the super-network is loaded without importance ordering here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from llamanas.deploy.gguf import export_subnet_gguf
from llamanas.deploy.gguf_tokenizer import tokenizer_source_for
from llamanas.deploy.llamacpp import time_gguf
from llamanas.errors import LlamanasError
from llamanas.search.files import RunFiles
from llamanas.search.latency import (
    VALUES,
    LatencyTable,
    Timed,
    calibration_configs,
    finite_or_none,
    fit_latency_table,
)
from llamanas.search.predictors import kendall_tau, mape
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

RUNTIME = "llamacpp"
DEFAULT_CONFIGS = 32  # fitted
DEFAULT_HOLDOUT = 8  # held out to report the error


def timed_of(cfg: SubnetConfig, timing) -> Timed:
    """A ``deploy.llamacpp.Timing`` as the table's targets: prefill ms of the prompt, ms per decoded token."""
    return Timed(
        cfg,
        prefill_ms=1000.0 * timing.prompt_tokens / timing.prefill_tokens_per_s,
        decode_ms=1000.0 / timing.decode_tokens_per_s,
    )


@contextlib.contextmanager
def _tokenizer_source(tokenizer_source, tokenizer):
    """The tokenizer source for ``export_subnet_gguf``: the given one, else a folder the tokenizer is
    saved to for the duration."""
    if tokenizer_source is not None:
        yield tokenizer_source
        return
    if tokenizer is None:
        raise LlamanasError("GGUF export needs a tokenizer: pass tokenizer_source=... or tokenizer=...")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        yield tmp


def time_configs(
    supernet,
    cfgs: Sequence[SubnetConfig],
    tokenizer_source,
    *,
    type: str = "f16",
    prompt_tokens: int = 128,
    decode_tokens: int = 32,
    repeats: int = 3,
    threads: int | None = None,
    time_fn: Callable | None = None,
    progress: Callable[[int, int, SubnetConfig], None] | None = None,
) -> list[tuple[Timed, object]]:
    """Export each config to a temporary GGUF (``type``, or each layer's ``cfg.bits``) and time it in
    llama.cpp; returns (Timed, Timing) pairs in order. ``time_fn`` defaults to ``llamacpp.time_gguf``."""
    if time_fn is None:
        time_fn = time_gguf
    out = []
    with tempfile.TemporaryDirectory(prefix="llamanas-speed-") as tmp:
        path = Path(tmp) / "subnet.gguf"
        for n, cfg in enumerate(cfgs):
            if progress:
                progress(n, len(cfgs), cfg)
            with warnings.catch_warnings():  # F16 fallbacks of odd widths: the timing includes them
                warnings.simplefilter("ignore")
                export_subnet_gguf(supernet, cfg, tokenizer_source, path, type=type, overwrite=True)
            timing = time_fn(
                path,
                prompt_tokens=prompt_tokens,
                decode_tokens=decode_tokens,
                repeats=repeats,
                threads=threads,
            )
            out.append((timed_of(cfg, timing), timing))
            path.unlink(missing_ok=True)
    return out


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "system": platform.system()}


def build_latency_table(
    supernet,
    space: SearchSpace,
    tokenizer_source=None,
    out_path: str | Path | None = None,
    *,
    tokenizer=None,
    n_configs: int = DEFAULT_CONFIGS,
    holdout: int = DEFAULT_HOLDOUT,
    seed: int = 0,
    type: str = "f16",
    prompt_tokens: int = 128,
    decode_tokens: int = 32,
    repeats: int = 3,
    threads: int | None = None,
    time_fn: Callable | None = None,
    progress: Callable[[int, int, SubnetConfig], None] | None = None,
) -> LatencyTable:
    """Time ``n_configs + holdout`` sub-networks of ``space`` in llama.cpp, fit the latency table on the
    first ``n_configs`` (the ends of the space and uniform configs at every width come first, so every
    cell is timed) and report its error on the last ``holdout`` (random configs); saved to ``out_path``
    when given."""
    if n_configs < 2:
        raise LlamanasError(
            f"A latency table needs at least 2 calibration configs; got n_configs={n_configs}."
        )
    if holdout < 0:
        raise LlamanasError(f"holdout must be >= 0; got {holdout}.")
    cfgs = calibration_configs(space, n_configs + holdout, seed)
    threads = threads or os.cpu_count() or 1
    settings = dict(type=type, prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, repeats=repeats)
    with _tokenizer_source(tokenizer_source, tokenizer) as source:
        timed = time_configs(
            supernet, cfgs, source, **settings, threads=threads, time_fn=time_fn, progress=progress
        )
    timing = {
        "runtime": RUNTIME,
        "type": type,
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "threads": threads,
        "machine": _machine(),
    }
    ts = [t for t, _ in timed]
    table = fit_latency_table(ts[:n_configs], space, ts[n_configs:], timing)
    if out_path is not None:
        table.save(out_path)
    return table


def build_latency_table_for(args, space: SearchSpace, out_path: str | Path, **kw) -> LatencyTable:
    """``build_latency_table`` for a search's ``SearchArgs`` (its model, on the CPU): the
    ``latency_table_builder`` of ``search.run.search``. ``kw`` go to ``build_latency_table``."""
    supernet, tokenizer = load_supernet(args.model, order=False, device="cpu")
    supernet.space = space
    return build_latency_table(
        supernet, space, tokenizer_source_for(args.model), out_path, tokenizer=tokenizer, seed=args.seed, **kw
    )


def time_front(
    run_dir: str | Path,
    *,
    type: str | None = None,
    prompt_tokens: int | None = None,
    decode_tokens: int | None = None,
    repeats: int = 5,
    threads: int | None = None,
    supernet=None,
    tokenizer=None,
    tokenizer_source=None,
    time_fn: Callable | None = None,
    progress: Callable[[int, int, SubnetConfig], None] | None = None,
) -> Path:
    """Time every member of a run's front in llama.cpp (a temporary GGUF each); writes
    ``front_llamacpp.json`` in the run folder. Type, prompt and decode lengths and threads default to
    those of the run's latency table (``--runtime llamacpp``), else F16, 128, 32 and all cores; with a
    table, each point also has the table's prediction and the payload its MAPE and Kendall tau."""
    files = RunFiles(run_dir)
    members = files.front()
    table = files.latency_table() if files.has_latency_table() else None
    t = table.timing if table else {}
    type = type or t.get("type", "f16")
    prompt_tokens = prompt_tokens or t.get("prompt_tokens", 128)
    decode_tokens = decode_tokens or t.get("decode_tokens", 32)
    threads = threads or t.get("threads") or os.cpu_count() or 1
    if supernet is None:
        model = files.args().model
        supernet, tokenizer = load_supernet(model, order=False, device="cpu")
        tokenizer_source = tokenizer_source or tokenizer_source_for(model)
    cfgs = [SubnetConfig.from_dict(m["config"]) for m in members]
    settings = dict(type=type, prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, repeats=repeats)
    with _tokenizer_source(tokenizer_source, tokenizer) as source:
        timed = time_configs(
            supernet, cfgs, source, **settings, threads=threads, time_fn=time_fn, progress=progress
        )
    points = []
    for m, (tm, timing) in zip(members, timed, strict=True):
        p = {
            "id": m.get("id"),
            "config": m["config"],
            "latency": tm.prefill_ms,
            "throughput": 1000.0 / tm.decode_ms,
            "timing": timing.to_dict() if hasattr(timing, "to_dict") else dict(timing.__dict__),
            "original": {k: v for k, v in m.items() if k != "config"},
        }
        if table is not None:
            p["predicted"] = table.values(tm.config)
        points.append(p)
    payload = {
        "method": RUNTIME,
        "runtime": RUNTIME,
        "type": type,
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "threads": threads,
        "units": {"latency": "ms (prefill of the prompt)", "throughput": "tok/s (decode)"},
        "latency_table": table.digest if table else None,
        "points": points,
    }
    if table is not None and points:
        payload["table_error"] = {
            v: {
                "n": len(points),
                "mape": finite_or_none(mape([p[v] for p in points], [p["predicted"][v] for p in points])),
                "kendall_tau": finite_or_none(
                    kendall_tau([p[v] for p in points], [p["predicted"][v] for p in points])
                ),
            }
            for v in VALUES
        }
    return files.write_front_after(RUNTIME, payload)
