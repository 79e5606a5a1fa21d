"""Commands that write deployable files: ``extract``, ``export`` (GGUF), ``quantize``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from llamanas.cli.app import (
    _check_gguf_out,
    _check_gguf_type,
    _export_gguf,
    _load,
    _subnet,
    _task_list,
    app,
    console,
    out,
)
from llamanas.cli.options import (
    SUBNET_HELP,
    CompensateOpt,
    DeviceOpt,
    DtypeOpt,
    FewshotOpt,
    GGUFTypeOpt,
    GroupSizeOpt,
    ImportanceOpt,
    LimitOpt,
    ModelOpt,
    NoOrderOpt,
    SeedOpt,
    SubnetOpt,
)
from llamanas.cli.tables import (
    quantization_table,
)
from llamanas.deploy.extract import extract as extract_fn
from llamanas.deploy.gguf import TYPES as GGUF_TYPES
from llamanas.deploy.quantize import quantize_checkpoint, quantize_front
from llamanas.errors import LlamanasError
from llamanas.evaluation.questions import Questions
from llamanas.model.device import dtype_name
from llamanas.search.files import RunFiles
from llamanas.supernet.precision import check_method


@app.command()
def extract(
    subnet: Annotated[str, typer.Option("--subnet", help=SUBNET_HELP)],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the standalone checkpoint to.")],
    model: ModelOpt = "default",
    no_order: NoOrderOpt = False,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="Write it quantized: int8 | int4 (weight-only, every decoder linear; embeddings and head "
            "16-bit). `llamanas eval --model OUT` evaluates it; in Python: llamanas.deploy.quantize.load_quantized."
        ),
    ] = None,
    group_size: GroupSizeOpt = 64,
    gguf: Annotated[
        str | None,
        typer.Option(
            "--gguf",
            help=f"Also write the sub-network as OUT/model-TYPE.gguf for llama.cpp: {' | '.join(GGUF_TYPES)} "
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
    if quantize is not None:
        check_method(quantize)
    if gguf is not None:
        _check_gguf_type(gguf, "--gguf")
    cfg = _subnet(subnet, model)
    supernet, tokenizer = _load(
        model, order=not no_order, dtype=dtype, device=device, importance=importance, compensate=compensate,
        cfg=cfg,
    )  # fmt: skip
    meta = {
        "source_model": model,
        "ordered": not no_order,
        "importance": importance,
        "compensate": compensate,
        "dtype": dtype_name(next(supernet.model.parameters()).dtype),
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
    subnet: SubnetOpt = None,
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
    cfg = _subnet(subnet, model)
    supernet, tok = _load(model, order=not no_order, dtype=dtype, device=device, cfg=cfg)
    res = _export_gguf(model, supernet, tok, cfg, out_path, type_, overwrite, tokenizer_source=tokenizer)
    console.print(f"wrote {res.summary()}; {cfg.num_params(supernet.arch):,} params")


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
    seed: SeedOpt = None,
    group_size: GroupSizeOpt = 64,
    timing: Annotated[
        bool, typer.Option(help="Measure latency before and after (--no-timing: skip).")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
):
    """Quantize a checkpoint's decoder linears to INT8/INT4 (embeddings and head stay 16-bit) and report size,
    accuracy and latency before and after; or, with --front, re-evaluate a search's front after quantization."""
    check_method(method)
    if limit is not None and limit < 1:
        raise LlamanasError(f"--limit must be >= 1; got {limit}.")
    task_list = _task_list(tasks)
    if front is not None:
        if out_dir is not None:
            raise LlamanasError(
                "--out is not used with --front (the result goes to RUN_DIR/front_<method>.json)."
            )
        files = RunFiles(front)
        saved = files.eval_settings().questions() if files.has_info() else Questions()
        path = quantize_front(
            front,
            method,
            model=model,
            tasks=task_list or None,
            questions=saved.override(split=split, limit=limit, num_fewshot=num_fewshot, seed=seed),
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
            questions=Questions(split=split, limit=limit, num_fewshot=num_fewshot, seed=seed or 0),
            timing=timing,
        )
    if json_out:
        print(json.dumps(c.to_dict()))
        return
    out.print(quantization_table(f"{model} -> {method} ({out_dir})", c, method))
