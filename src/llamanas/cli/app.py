"""The ``llamanas`` command line: the typer app, the options and helpers its commands share, ``main``.

The commands are in ``commands_*.py`` by stage, each a thin call into the Python API of that stage;
importing ``llamanas.cli`` registers them all.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llamanas.errors import LlamanasError
from llamanas.model.device import DEVICE_HELP, DTYPE_HELP

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
OffsetOpt = Annotated[
    int,
    typer.Option(
        help="Skip the first N items of the seeded order: with --offset 100 the questions are disjoint from "
        "those a search used with --limit 100 and the same seed (select on one part, report on the other)."
    ),
]
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


def _task_list(tasks: str | None) -> list[str]:
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if tasks is not None and not names:
        raise LlamanasError(f"--tasks needs at least one task name; got {tasks!r}.")
    return names


def _split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _member_subnet(spec: str) -> str:
    """``RUN_DIR:ID`` (a member of a search run) -> its config as inline JSON; anything else unchanged."""
    from llamanas.search.run import load_run, parse_member_ref

    ref = parse_member_ref(spec)
    if ref is None:
        return spec
    return load_run(ref[0]).member(ref[1]).config.to_json()


def main() -> None:
    try:
        app()
    except LlamanasError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
