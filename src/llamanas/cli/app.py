"""The ``llamanas`` command line: each command is a thin call into the Python API of the same stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llamanas.cli.demo import DemoArgs
from llamanas.cli.options import Flag, dataclass_command
from llamanas.cli.tables import (
    baselines_table,
    front_table,
    key_value_table,
    quantization_table,
    results_table,
)
from llamanas.errors import LlamanasError
from llamanas.model.device import DEVICE_HELP, DTYPE_HELP
from llamanas.search.run import SearchArgs
from llamanas.tuning.tune import TuneArgs

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="""One-shot neural architecture search for LLaMA-family models (LLaMA-NAS).

Typical session on the offline default model (SmolLM2-135M-Instruct):

```
llamanas space --model default --sample 3 --seed 0 > subnets.jsonl
llamanas eval --model default --tasks arc_easy --split validation --limit 200
llamanas finetune --model default --data alpaca.json --out supernet/
llamanas search --model supernet/ --tasks arc_easy --objectives accuracy,params --out run/
llamanas front run/
llamanas extract --model supernet/ --subnet run/:3 --out small-model/ --gguf f16
llamanas export --model supernet/ --subnet run/:3 --out small.gguf --type q8_0
llamanas eval --model small.gguf --tasks arc_easy --split validation --limit 200
llamanas measure --model supernet/ --subnet run/:3 --runtime llamacpp
llamanas report run/
```
""",
)
console = Console(stderr=True)
out = Console()

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="'default' (SmolLM2-135M-Instruct, offline), a local HF model folder, a super-network folder, or a hub id.",
    ),
]
SubnetOpt = Annotated[
    str | None,
    typer.Option(
        "--subnet",
        help='Sub-network config: a JSON file, or inline JSON {"layers": [...], "mlp": [...], "kv_groups": [...]}. '
        "Default: the full network.",
    ),
]
SpaceOpt = Annotated[
    str | None,
    typer.Option("--space", help="YAML/JSON file that narrows the search space (see docs/search_space.md)."),
]
LimitOpt = Annotated[int | None, typer.Option(help="Evaluate a seeded random subset of N items per task.")]
FewshotOpt = Annotated[int | None, typer.Option(help="Few-shot examples (default: the task's, usually 0).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the --limit subset.")]
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP)]
ImportanceOpt = Annotated[
    str,
    typer.Option(
        help="Importance score that orders channels before slicing: rms (activation RMS) | wanda (activation x "
        "output-weight norm) | taylor (first-order |w x grad| of the calibration loss)."
    ),
]
CompensateOpt = Annotated[
    bool,
    typer.Option(
        help="Bias compensation (FLAP): a slice adds the mean contribution of the channels it removes as an "
        "output bias; measured once on calibration text, carried into extracted checkpoints and GGUF."
    ),
]
DtypeOpt = Annotated[str, typer.Option(help=DTYPE_HELP + ". Recorded in every output.")]
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")  # deploy.gguf.TYPES; repeated so --help needs no import
GGUFTypeOpt = Annotated[
    str,
    typer.Option(
        "--type",
        help="GGUF weight type: f16 | f32 | q8_0 | q4_0 (a config with per-layer bits uses them for its layers).",
    ),
]
NoOrderOpt = Annotated[
    bool,
    typer.Option("--no-order", help="Skip importance ordering (slices keep the first channels as they are)."),
]


@app.callback()
def _quiet_libraries() -> None:
    """Per-tensor loading bars of transformers are noise on the command line; ours show progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _subnet(spec: str | None, supernet):
    from llamanas.supernet.space import SubnetConfig

    if spec is None:
        return SubnetConfig.full(supernet.arch)
    cfg = SubnetConfig.from_json(spec) if spec.lstrip().startswith("{") else SubnetConfig.load(spec)
    return cfg.check(supernet.arch)


def _load(
    model: str,
    space: str | None = None,
    order: bool = True,
    dtype: str = "auto",
    device: str = "auto",
    importance: str = "rms",
    compensate: bool = False,
):
    from llamanas.supernet.elastic import load_supernet

    with console.status(f"Loading {model}" + (" and ordering channels by importance" if order else "")):
        return load_supernet(
            model,
            space_file=space,
            order=order,
            dtype=dtype,
            device=device,
            say=console.print,
            importance=importance,
            compensate=compensate,
        )


def _is_gguf(model: str) -> bool:
    return model.lower().endswith(".gguf")


def _check_gguf_type(type_: str, flag: str = "--type") -> None:
    if type_ not in GGUF_TYPES:
        raise LlamanasError(f"{flag} {type_!r} is not a GGUF type; allowed: {', '.join(GGUF_TYPES)}.")


def _check_gguf_out(path: Path, overwrite: bool) -> None:
    """Refuse before loading anything: an existing file without --overwrite, a folder, a wrong suffix."""
    if path.suffix.lower() != ".gguf":
        raise LlamanasError(f"--out {str(path)!r} must end in .gguf.")
    if path.is_dir():
        raise LlamanasError(f"--out {str(path)!r} is a folder; give a .gguf file name.")
    if path.exists() and not overwrite:
        raise LlamanasError(f"Output {str(path)!r} exists; pass --overwrite to replace it.")


def _export_gguf(
    model: str, supernet, tokenizer, cfg, path: Path, type_: str, overwrite: bool, tokenizer_source=None
):
    """Export ``cfg`` of a loaded super-network as GGUF; the tokenizer comes from ``tokenizer_source`` or
    from the model (``deploy.gguf.tokenizer_source_for``; a hub model's loaded tokenizer is saved first)."""
    import tempfile
    import warnings

    from llamanas.deploy.gguf import export_subnet_gguf, tokenizer_source_for

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = tokenizer_source or tokenizer_source_for(model)
        if source is None:
            tokenizer.save_pretrained(tmp)
            source = tmp
        with console.status(f"Writing {path}"):
            res = export_subnet_gguf(supernet, cfg, source, path, type=type_, overwrite=overwrite)
    for w in caught:
        console.print(f"[yellow]warning:[/yellow] {w.message}", highlight=False)
    return res


@app.command()
def space(
    model: ModelOpt = "default",
    space: SpaceOpt = None,
    sample: Annotated[
        int, typer.Option(help="Print N random sub-network configs, one JSON object a line.")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed for --sample.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the space as JSON.")] = False,
):
    """Print the search space of a model (dimensions, choices, number of sub-networks), or sample from it."""
    import numpy as np

    from llamanas.model.arch import Arch
    from llamanas.model.load import load_config
    from llamanas.supernet.space import SearchSpace

    arch = Arch.from_hf(load_config(model))
    sp = SearchSpace.from_file(space, arch) if space else SearchSpace.from_arch(arch)
    if sample < 0:
        raise LlamanasError(f"--sample must be >= 0; got {sample}.")
    if sample:
        rng = np.random.default_rng(seed)
        for _ in range(sample):
            print(sp.sample(rng).to_json())
        return
    if as_json:
        print(json.dumps(sp.to_dict()))
        return
    table = Table(title=f"Search space of {model}", show_header=False)
    for k, v in sp.describe():
        table.add_row(k, v)
    out.print(table)


@app.command("eval")
def eval_(
    tasks: Annotated[
        str, typer.Option(help="Comma-separated tasks, e.g. arc_easy,piqa. See `llamanas tasks`.")
    ],
    model: ModelOpt = "default",
    subnet: SubnetOpt = None,
    split: Annotated[
        str | None,
        typer.Option(help="Data split (e.g. validation, test). Default: each task's lm-eval test split."),
    ] = None,
    limit: LimitOpt = None,
    num_fewshot: FewshotOpt = None,
    seed: SeedOpt = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write results to this JSON file.")
    ] = None,
    no_order: NoOrderOpt = False,
    importance: ImportanceOpt = "rms",
    compensate: CompensateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
):
    """Evaluate a model or one of its sub-networks on multiple-choice tasks, scored exactly as lm-eval 0.4 does.

    `--model FILE.gguf` scores a GGUF file (from `llamanas export`) through llama.cpp's logits instead:
    the same requests (built with the file's own tokenizer), metrics, table and --json.
    """
    from llamanas.evaluation.evaluate import evaluate

    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    if not task_list:
        raise LlamanasError(f"--tasks needs at least one task name; got {tasks!r}.")
    if limit is not None and limit < 1:
        raise LlamanasError(f"--limit must be >= 1; got {limit}.")
    if _is_gguf(model):
        return _eval_gguf(model, subnet, task_list, split, limit, num_fewshot, seed, json_path, device, dtype)
    from llamanas.deploy.quantize import is_quantized_dir, load_quantized

    kwargs = dict(split=split, limit=limit, num_fewshot=num_fewshot, seed=seed)
    title = model
    if is_quantized_dir(model):  # written by `quantize` or `extract --quantize`: evaluate it as it is
        if subnet is not None:
            raise LlamanasError("--subnet does not apply to a quantized checkpoint; extract first.")
        qmodel, tokenizer = load_quantized(model, dtype="bfloat16" if dtype == "bfloat16" else "float32")
        results = evaluate(qmodel, tokenizer, task_list, **kwargs)
        used_dtype = str(next(qmodel.parameters()).dtype).removeprefix("torch.")
        title += f" ({qmodel.config.llamanas_quant['method']})"
    else:
        supernet, tokenizer = _load(
            model,
            order=subnet is not None and not no_order,
            dtype=dtype,
            device=device,
            importance=importance,
            compensate=compensate and subnet is not None,
        )
        used_dtype = str(next(supernet.model.parameters()).dtype).removeprefix("torch.")
        cfg = _subnet(subnet, supernet)
        if cfg.quantized:  # per-layer bits from a joint precision search: run the extracted sub-network
            from llamanas.supernet.slicing import standalone

            results = evaluate(standalone(supernet, cfg), tokenizer, task_list, **kwargs)
        else:
            with supernet.subnet(cfg):
                results = evaluate(supernet.model, tokenizer, task_list, **kwargs)
        if subnet is not None:
            title += f" sub-network ({cfg.num_params(supernet.arch):,} params)"
    out.print(results_table(f"{title} [{used_dtype}]", results))
    if json_path:
        payload = {
            "model": model,
            "subnet": cfg.to_dict(),
            "params": cfg.num_params(supernet.arch),
            "dtype": used_dtype,
            "results": {k: r.to_dict() for k, r in results.items()},
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {json_path}")


def _eval_gguf(model, subnet, task_list, split, limit, num_fewshot, seed, json_path, device, dtype):
    from llamanas.deploy.gguf import read_gguf_info
    from llamanas.deploy.llamacpp import evaluate_gguf

    if subnet is not None:
        raise LlamanasError(
            "--subnet does not apply to a GGUF file; export the sub-network with `llamanas export`."
        )
    if device not in ("auto", "cpu") or dtype != "auto":
        raise LlamanasError(
            "--device/--dtype do not apply to a GGUF file: llama.cpp runs it on the CPU in its own types."
        )
    info = read_gguf_info(model)
    results = evaluate_gguf(
        info.path, task_list, split=split, limit=limit, num_fewshot=num_fewshot, seed=seed, progress=True
    )
    out.print(results_table(f"{model} [llama.cpp, {info.type}, {info.n_params:,} params]", results))
    if json_path:
        payload = {
            "model": model,
            "runtime": "llamacpp",
            "subnet": info.subnet,
            "params": info.n_params,
            "dtype": info.type,
            "results": {k: r.to_dict() for k, r in results.items()},
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {json_path}")


@app.command()
def measure(
    model: ModelOpt = "default",
    subnet: SubnetOpt = None,
    seq_len: Annotated[int, typer.Option(help="Sequence length for MACs per token.")] = 128,
    prefill_tokens: Annotated[
        int, typer.Option(help="Prompt length for the latency measurement (batch 1).")
    ] = 128,
    gen_tokens: Annotated[int, typer.Option(help="Tokens generated for the throughput measurement.")] = 32,
    repeats: Annotated[
        int, typer.Option(help="Timed repeats (after 2 warm-up runs); the median is reported.")
    ] = 5,
    timing: Annotated[
        bool, typer.Option(help="Measure latency and throughput (--no-timing: counts only).")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    runtime: Annotated[
        str,
        typer.Option(
            help="hf (PyTorch, the extracted sub-network) | llamacpp (the sub-network exported to a temporary "
            "GGUF file of --type, or --model FILE.gguf as it is; batch 1 on the CPU, prefill and decode "
            "tokens/s at each --context, file bytes and peak memory of the llama.cpp process)."
        ),
    ] = "hf",
    context: Annotated[
        str | None,
        typer.Option(
            help="--runtime llamacpp: comma-separated prompt lengths to time prefill and decode after "
            "(default: --prefill-tokens and a long context of 1024, capped by the model's context length)."
        ),
    ] = None,
    type_: GGUFTypeOpt = "f16",
    threads: Annotated[
        int | None, typer.Option(help="--runtime llamacpp: CPU threads (default: all cores).")
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
):
    """Report parameters, bytes, MACs per token, prefill latency and generation throughput of a (sub-)network
    (--runtime llamacpp: of its GGUF export in llama.cpp)."""
    from llamanas.evaluation.measure import measure as measure_fn

    for flag, v in (
        ("--seq-len", seq_len),
        ("--prefill-tokens", prefill_tokens),
        ("--gen-tokens", gen_tokens),
        ("--repeats", repeats),
    ):
        if v < 1:
            raise LlamanasError(f"{flag} must be >= 1; got {v}.")
    if runtime not in ("hf", "llamacpp"):
        raise LlamanasError(f"--runtime {runtime!r} is unknown; allowed: hf, llamacpp.")
    if runtime == "llamacpp":
        return _measure_llamacpp(
            model,
            subnet,
            seq_len,
            prefill_tokens,
            gen_tokens,
            repeats,
            json_out,
            context,
            type_,
            threads,
            device,
            dtype,
        )
    if context is not None or threads is not None:
        raise LlamanasError("--context and --threads apply to --runtime llamacpp; hf uses --prefill-tokens.")
    if _is_gguf(model):
        raise LlamanasError("A GGUF file is measured with --runtime llamacpp.")
    # sizes and speed do not depend on which channels are kept
    supernet, _ = _load(model, order=False, dtype=dtype, device=device)
    cfg = _subnet(subnet, supernet)
    with console.status("Measuring"):
        m = measure_fn(supernet, cfg, seq_len, timing, prefill_tokens, gen_tokens, repeats=repeats)
    if json_out:
        print(json.dumps({"subnet": cfg.to_dict(), "runtime": "hf", **m.to_dict()}))
        return
    out.print(key_value_table(f"{model}" + ("" if subnet is None else " sub-network"), m.to_dict()))


def _contexts(context: str | None, prefill_tokens: int, gen_tokens: int, limit: int | None) -> list[int]:
    """Prompt lengths to time: --context, or --prefill-tokens and 1024, within the model's context."""
    room = (limit or 2048) - gen_tokens
    if context is None:
        return sorted({min(prefill_tokens, room), min(1024, room)}) if room >= 1 else []
    try:
        values = [int(x) for x in context.split(",") if x.strip()]
    except ValueError:
        raise LlamanasError(
            f"--context takes comma-separated token counts, e.g. 128,1024; got {context!r}."
        ) from None
    bad = [v for v in values if not 1 <= v <= room]
    if not values or bad:
        raise LlamanasError(
            f"--context values must be in 1..{room} (the model's context {limit} minus --gen-tokens); "
            f"got {context!r}."
        )
    return list(dict.fromkeys(values))


def _measure_llamacpp(
    model,
    subnet,
    seq_len,
    prefill_tokens,
    gen_tokens,
    repeats,
    json_out,
    context,
    type_,
    threads,
    device,
    dtype,
):
    import tempfile

    from llamanas.deploy.gguf import read_gguf_info
    from llamanas.deploy.llamacpp import binding, time_gguf

    _check_gguf_type(type_)
    if threads is not None and threads < 1:
        raise LlamanasError(f"--threads must be >= 1; got {threads}.")
    binding()  # the install hint before any loading
    with tempfile.TemporaryDirectory() as tmp:
        values: dict = {"runtime": "llamacpp"}
        if _is_gguf(model):
            if subnet is not None:
                raise LlamanasError("--subnet does not apply to a GGUF file; export the sub-network first.")
            info = read_gguf_info(model)
            values.update(
                subnet=info.subnet, params=info.n_params, params_non_embedding=info.n_params_non_embedding
            )
        else:
            from llamanas.evaluation.measure import count

            supernet, tokenizer = _load(model, order=False, dtype=dtype, device=device)
            cfg = _subnet(subnet, supernet)
            c = count(supernet, cfg, seq_len)
            path = Path(tmp) / f"model-{type_}.gguf"
            _export_gguf(model, supernet, tokenizer, cfg, path, type_, overwrite=False)
            del supernet
            info = read_gguf_info(path)
            values.update(
                subnet=cfg.to_dict(),
                params=c.params,
                params_non_embedding=c.params_non_embedding,
                macs_per_token=c.macs_per_token,
                seq_len=seq_len,
            )
        contexts = _contexts(context, prefill_tokens, gen_tokens, info.context_length)
        if not contexts:
            raise LlamanasError(
                f"--gen-tokens {gen_tokens} leaves no room in the model's context {info.context_length}."
            )
        timings = []
        for n in contexts:
            with console.status(
                f"Timing llama.cpp: prompt {n} tokens, {gen_tokens} decoded, {repeats} repeats"
            ):
                timings.append(time_gguf(info.path, n, gen_tokens, repeats, threads))
    first = timings[0]
    values.update(
        dtype=info.type,
        bytes=info.n_tensor_bytes,
        file_bytes=info.n_bytes,
        latency_ms=1000 * first.prompt_tokens / first.prefill_tokens_per_s,
        prefill_tokens=first.prompt_tokens,
        throughput_tok_s=first.decode_tokens_per_s,
        gen_tokens=gen_tokens,
        threads=first.threads,
        repeats=repeats,
        peak_rss_bytes=max(t.peak_rss_bytes for t in timings),
        contexts=[
            {
                "prompt_tokens": t.prompt_tokens,
                "prefill_tokens_per_s": t.prefill_tokens_per_s,
                "decode_tokens_per_s": t.decode_tokens_per_s,
            }
            for t in timings
        ],
    )
    if json_out:
        print(json.dumps(values))
        return
    flat = {k: v for k, v in values.items() if k not in ("subnet", "contexts")}
    for t in timings:
        flat[f"prefill tok/s @{t.prompt_tokens}"] = t.prefill_tokens_per_s
        flat[f"decode tok/s @{t.prompt_tokens}"] = t.decode_tokens_per_s
    title = f"{model}" + ("" if subnet is None else " sub-network") + f" in llama.cpp ({info.type})"
    out.print(key_value_table(title, flat))


@app.command()
def extract(
    subnet: Annotated[
        str,
        typer.Option(
            "--subnet", help="Sub-network config: JSON file, inline JSON, or RUN_DIR:ID of a search run."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the standalone checkpoint to.")],
    model: ModelOpt = "default",
    no_order: NoOrderOpt = False,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="Write it quantized: int8 | int4 (weight-only, every decoder linear; embeddings and head "
            "16-bit). `llamanas eval --model OUT` evaluates it; in Python: llamanas.quantize.load_quantized."
        ),
    ] = None,
    group_size: Annotated[int, typer.Option(help="INT4 group size (columns sharing one scale).")] = 64,
    gguf: Annotated[
        str | None,
        typer.Option(
            "--gguf",
            help="Also write the sub-network as OUT/model-TYPE.gguf for llama.cpp: f16 | f32 | q8_0 | q4_0 "
            "(same as `llamanas export --type TYPE`; replaces an existing file of that name).",
        ),
    ] = None,
    importance: ImportanceOpt = "rms",
    compensate: CompensateOpt = False,
    repair: Annotated[
        bool,
        typer.Option(
            help="Least-squares repair: refit the kept down_proj / o_proj columns so each sliced layer "
            "reproduces the full layer's output on the calibration text (closed form, per layer)."
        ),
    ] = False,
    calibration: Annotated[
        str | None,
        typer.Option(help="Calibration text for --repair (Alpaca JSON/JSONL or .txt; default: built in)."),
    ] = None,
    ridge: Annotated[
        float | None,
        typer.Option(help="Ridge term of --repair (default: a small multiple of the mean diagonal)."),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
):
    """Write a sub-network as a standalone checkpoint that `AutoModelForCausalLM.from_pretrained` loads
    (or, with --quantize, an INT8/INT4 checkpoint; with --gguf, also a GGUF file beside it)."""
    from llamanas.deploy.extract import extract as extract_fn

    if quantize is not None:
        from llamanas.supernet.precision import check_method

        check_method(quantize)
    if gguf is not None:
        _check_gguf_type(gguf, "--gguf")
    subnet = _member_subnet(subnet)
    supernet, tokenizer = _load(
        model, order=not no_order, dtype=dtype, device=device, importance=importance, compensate=compensate
    )
    cfg = _subnet(subnet, supernet)
    meta = {
        "source_model": model,
        "ordered": not no_order,
        "importance": importance,
        "compensate": compensate,
        "dtype": str(next(supernet.model.parameters()).dtype).removeprefix("torch."),
    }
    path = extract_fn(
        supernet,
        cfg,
        out_dir,
        tokenizer,
        metadata=meta,
        quantize=quantize,
        group_size=group_size,
        repair=repair,
        calibration=calibration,
        ridge=ridge,
    )
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    what = f", {quantize}" if quantize else ""
    console.print(
        f"wrote {path} ({cfg.num_params(supernet.arch):,} params{what}, {size / 2**20:.1f} MiB of weights)"
    )
    if gguf is not None:
        res = _export_gguf(model, supernet, tokenizer, cfg, Path(path) / f"model-{gguf}.gguf", gguf, True)
        console.print(f"wrote {res.summary()}")


@app.command()
def export(
    out_path: Annotated[Path, typer.Option("--out", help="The .gguf file to write.")],
    subnet: Annotated[
        str | None,
        typer.Option(
            "--subnet",
            help="Sub-network config: JSON file, inline JSON, or RUN_DIR:ID of a search run. Default: the full network.",
        ),
    ] = None,
    model: ModelOpt = "default",
    type_: GGUFTypeOpt = "f16",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="Tokenizer to write into the file: 'default' (the default model's), a .gguf file to copy it "
            "from, or an HF folder with a byte-level BPE tokenizer.json. Default: the model's own ('default' "
            "for the default model and the super-networks and checkpoints made from it)."
        ),
    ] = None,
    no_order: NoOrderOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
):
    """Write a (sub-)network as one GGUF file for llama.cpp (`llama` architecture when every layer has the
    same sizes, `deci` with per-layer sizes otherwise); `llamanas eval --model FILE.gguf` scores it."""
    _check_gguf_type(type_)
    _check_gguf_out(out_path, overwrite)
    if subnet is not None:
        subnet = _member_subnet(subnet)
    supernet, tok = _load(model, order=not no_order, dtype=dtype, device=device)
    cfg = _subnet(subnet, supernet)
    res = _export_gguf(model, supernet, tok, cfg, out_path, type_, overwrite, tokenizer_source=tokenizer)
    console.print(f"wrote {res.summary()}; {cfg.num_params(supernet.arch):,} params")


@dataclass_command(app, DemoArgs, flags={"out": Flag("--out")})
def demo(args: DemoArgs):
    """The whole pipeline in about 15 minutes: short InstaTune, LINAS search, front, extraction, INT8, baselines, report."""
    from llamanas.cli.demo import run_demo

    run_demo(args, out, front_table)


@app.command()
def tasks():
    """List the available evaluation tasks."""
    from llamanas.evaluation.tasks import available_tasks

    for name in available_tasks():
        print(name)


@dataclass_command(
    app,
    TuneArgs,
    required=("data", "out"),
    flags={"out": Flag(help="Pass it to any other command as --model.")},
    epilog="Several GPUs: `accelerate launch -m llamanas.cli finetune --data DATA --out DIR ...` "
    "(one process per GPU; --batch-size is per process). Re-running the same command resumes from the "
    "last checkpoint in --out.",
)
def finetune(args: TuneArgs):
    """Fine-tune a model once into a super-network whose sub-networks are all good (InstaTune).

    Channels are ordered by importance first, then the full network and sampled sub-networks are
    trained together on instruction data (loss on the response tokens). The output folder is an HF
    checkpoint with `llamanas_supernet.json` (search space, training record), `losses.csv` and
    `losses.png`; pass it to any other command as `--model`.
    """
    from llamanas.tuning.tune import finetune as finetune_fn

    result = finetune_fn(args)
    if not result.main_process:
        return
    rec = result.record
    held = rec["final_losses"]["held_out"]
    summary = ", ".join(f"{k} {v:.3f}" for k, v in held.items())
    console.print(
        f"wrote {result.out} ({rec['steps']} steps, {rec['tokens']:,} tokens, {rec['wall_time_s']:.0f} s"
        + (f"; held-out loss {summary}" if summary else "")
        + ")"
    )


# --- quantization, baselines and the report (issue 5) ------------------------------------------------


def _task_list(tasks: str | None) -> list[str]:
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if tasks is not None and not names:
        raise LlamanasError(f"--tasks needs at least one task name; got {tasks!r}.")
    return names


@app.command()
def quantize(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Checkpoint folder to quantize (e.g. from `llamanas extract`); with --front: "
            "the super-network (default: the run's model).",
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(help="int8 (per-channel) or int4 (group-wise), weight-only.")
    ] = "int8",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for the quantized checkpoint (not with --front).")
    ] = None,
    front: Annotated[
        Path | None,
        typer.Option(
            help="A search run folder: quantize and re-evaluate every sub-network of its front, writing "
            "RUN_DIR/front_<method>.json."
        ),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(help="Tasks to evaluate before and after (default: none; with --front: the run's)."),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Data split (default: the task's, or the run's).")] = None,
    limit: LimitOpt = None,
    num_fewshot: FewshotOpt = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the --limit subset.")] = None,
    group_size: Annotated[int, typer.Option(help="INT4 group size (columns sharing one scale).")] = 64,
    timing: Annotated[
        bool, typer.Option(help="Measure latency before and after (--no-timing: skip).")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
):
    """Quantize a checkpoint's decoder linears to INT8/INT4 (embeddings and head stay 16-bit) and report size,
    accuracy and latency before and after; or, with --front, re-evaluate a search's front after quantization."""
    from llamanas.deploy.quantize import quantize_checkpoint, quantize_front
    from llamanas.supernet.precision import check_method

    check_method(method)
    if limit is not None and limit < 1:
        raise LlamanasError(f"--limit must be >= 1; got {limit}.")
    task_list = _task_list(tasks)
    if front is not None:
        if out_dir is not None:
            raise LlamanasError(
                "--out is not used with --front (the result goes to RUN_DIR/front_<method>.json)."
            )
        path = quantize_front(
            front,
            method,
            model=model,
            tasks=task_list or None,
            split=split,
            limit=limit,
            num_fewshot=num_fewshot,
            seed=seed,
            group_size=group_size,
            timing=timing,
            progress=True,
            device=device,
        )
        console.print(f"wrote {path}")
        return
    if model is None or out_dir is None:
        raise LlamanasError("Give --model CHECKPOINT and --out DIR (or --front RUN_DIR).")
    with console.status(f"Quantizing {model} to {method}"):
        c = quantize_checkpoint(
            model,
            method,
            out_dir,
            dtype=dtype,
            device=device,
            tasks=task_list,
            group_size=group_size,
            split=split,
            limit=limit,
            num_fewshot=num_fewshot,
            seed=seed or 0,
            timing=timing,
        )
    if json_out:
        print(json.dumps(c.to_dict()))
        return
    out.print(quantization_table(f"{model} -> {method} ({out_dir})", c, method))


@app.command()
def baselines(
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks, e.g. arc_easy,piqa.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for baselines.json and baselines.csv.")],
    model: ModelOpt = "default",
    sizes: Annotated[
        str, typer.Option(help="Target sizes as fractions of the model's parameters, e.g. 0.9,0.8,0.7.")
    ] = "0.9,0.8,0.7",
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated: depth, shortgpt, width, sensitivity (per-layer widths allocated by each "
            "layer's measured loss increase per parameter saved)."
        ),
    ] = "depth,shortgpt,width",
    supernet: Annotated[
        str | None,
        typer.Option(help="A fine-tuned super-network folder: run the same baselines on its weights too."),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Data split (default: each task's test split).")] = None,
    limit: LimitOpt = None,
    num_fewshot: FewshotOpt = None,
    seed: SeedOpt = 0,
    calibration: Annotated[
        str | None,
        typer.Option(help="Calibration text for importance and block influence (default: built in)."),
    ] = None,
    recover: Annotated[
        bool,
        typer.Option(
            help="With --supernet: also prune the original model and fine-tune each baseline with the "
            "super-network's recorded budget (same data, steps, batch, learning rate), in OUT/recovered."
        ),
    ] = False,
    importance: ImportanceOpt = "rms",
    compensate: CompensateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
):
    """Evaluate pruning baselines at matched size: depth truncation, ShortGPT layer removal, uniform MLP width."""
    from llamanas.evidence.baselines import run_baselines

    task_list = _task_list(tasks)
    try:
        size_list = [float(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise LlamanasError(
            f"--sizes must be comma-separated fractions like 0.9,0.8,0.7; got {sizes!r}."
        ) from None
    bad = [s for s in size_list if not 0 < s <= 1]
    if not size_list or bad:
        raise LlamanasError(f"--sizes must be fractions in (0, 1]; got {sizes!r}.")
    if limit is not None and limit < 1:
        raise LlamanasError(f"--limit must be >= 1; got {limit}.")
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    with console.status("Evaluating baselines" + (" and fine-tuning them" if recover else "")):
        run = run_baselines(
            model,
            task_list,
            size_list,
            out_dir,
            supernet_dir=supernet,
            methods=method_list,
            split=split,
            limit=limit,
            num_fewshot=num_fewshot,
            seed=seed,
            calibration=calibration,
            recover=recover,
            dtype=dtype,
            device=device,
            importance=importance,
            compensate=compensate,
        )
    out.print(baselines_table(f"Baselines of {model}", run.rows, task_list))
    console.print(f"wrote {out_dir / 'baselines.json'} and baselines.csv")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A search run folder (from `llamanas search`).")],
    baselines_dir: Annotated[
        Path | None, typer.Option("--baselines", help="A folder written by `llamanas baselines`.")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: RUN_DIR).")] = None,
    png: Annotated[bool, typer.Option(help="Also write PNG figures (--no-png: HTML only).")] = True,
):
    """Write one self-contained HTML report (offline, interactive) and PNG figures of a search run."""
    from llamanas.evidence.report import report as report_fn

    path = report_fn(run_dir, baselines_dir, out_dir, png=png)
    console.print(f"wrote {path}")


def _split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _member_subnet(spec: str) -> str:
    """``RUN_DIR:ID`` (a member of a search run) -> its config as inline JSON; anything else unchanged."""
    from llamanas.search.run import load_run, parse_member_ref

    ref = parse_member_ref(spec)
    if ref is None:
        return spec
    return load_run(ref[0]).member(ref[1]).config.to_json()


def _latency_table_builder(args, space, path):
    """Time sub-networks in llama.cpp and fit the latency table a `--runtime llamacpp` search needs."""
    from llamanas.deploy.speed import DEFAULT_CONFIGS, DEFAULT_HOLDOUT, build_latency_table_for

    n = DEFAULT_CONFIGS + DEFAULT_HOLDOUT
    console.print(f"No --latency-table: timing {n} sub-networks in llama.cpp for {path} ...")
    table = build_latency_table_for(
        args,
        space,
        path,
        progress=lambda i, total, cfg: console.print(
            f"  {i + 1}/{total}: {cfg.depth} layers", highlight=False
        ),
    )
    for v, h in table.holdout.items():
        tau = "n/a" if h["kendall_tau"] is None else f"{h['kendall_tau']:.2f}"
        console.print(f"latency table, held out ({h['n']}): {v} MAPE {h['mape']:.1%}, Kendall tau {tau}")
    return table


@dataclass_command(
    app,
    SearchArgs,
    required=("out", "evaluations"),
    exclude=("seq_len",),
    flags={
        "objectives": Flag(
            help="accuracy, acc_norm, gold_nll (mean over --tasks; or per task as acc:TASK), params, bytes, "
            "macs, latency, throughput."
        ),
        "constraints": Flag("--constraint", repeat=True, help="Units K, M, B, %; repeatable."),
        "workers": Flag(help="Parallel workers; > 1 starts a local Ray with one actor per worker."),
        "ray_address": Flag(help="Join this Ray cluster: one worker per GPU there."),
    },
    epilog="Example: `llamanas search --model default --tasks arc_easy --objectives accuracy,params "
    "--algorithm linas --evaluations 100 --limit 200 --out runs/linas`. Re-running the same command resumes "
    "the run (nothing evaluated is lost or evaluated again); a larger --evaluations extends it.",
)
def search(args: SearchArgs):
    """Multi-objective search for sub-networks (LINAS, NSGA-II or random), resumable, optionally on Ray."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llamanas.search.run import load_run
    from llamanas.search.run import search as search_fn

    out_dir, algorithm, evaluations = args.run_dir, args.algorithm, args.evaluations
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("front {task.fields[front]}  HV {task.fields[hv]:.4f}"),
        TimeElapsedColumn(),
    )
    bar = Progress(*columns, console=console)
    task = bar.add_task(f"{algorithm} search", total=evaluations, front=0, hv=0.0)

    def update(traj):
        if not bar.live.is_started:  # started at the first result: errors and loading print cleanly
            bar.start()
        bar.update(task, completed=traj.live.done, front=len(traj.live.points), hv=traj.live.hv)

    console.print(f"Loading {args.model} (workers: {args.ray_address or args.workers}) ...")
    try:
        result = search_fn(args, progress=update, latency_table_builder=_latency_table_builder)
    finally:
        bar.stop()
    out.print(front_table(load_run(out_dir), f"Pareto front of {out_dir}"))
    if args.runtime == "llamacpp" and args.timing_names:  # the table predicted speeds: time the front
        from llamanas.deploy.speed import time_front

        with console.status("Timing the front in llama.cpp"):
            console.print(f"wrote {time_front(out_dir)}")
    hv = result.hypervolume[-1][1] if result.hypervolume else 0.0
    console.print(
        f"{result.evaluations} evaluations ({result.computed} run now, {result.evaluations - result.computed} "
        f"from the store), front {len(result.front)}, hypervolume {hv:.4f}, {result.seconds:.0f}s; wrote "
        f"{out_dir}/front.json, front.csv, hypervolume.csv, predictors.csv, run.json"
    )


@app.command()
def front(
    run_dir: Annotated[Path, typer.Argument(help="A search run directory (written by `llamanas search`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the front as JSON.")] = False,
):
    """Print the current Pareto front of a search run (also while it runs); extract one with --subnet RUN_DIR:ID."""
    from llamanas.search.run import load_run

    view = load_run(run_dir)
    if as_json:
        print(
            json.dumps(
                [{"id": m.id, "values": m.values, "config": m.config.to_dict()} for m in view.front], indent=2
            )
        )
        return
    out.print(front_table(view, f"Pareto front of {run_dir} ({len(view.evaluated)} evaluations)"))


def main() -> None:
    try:
        app()
    except LlamanasError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
