"""The ``llamanas`` command line: the typer app, the helpers its commands share, ``main``.

The commands are in ``commands_*.py`` by stage, each a thin call into the Python API of that stage;
importing ``llamanas.cli`` registers them all. Their options are declared in ``options.py``.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import typer
from rich.console import Console
from transformers.utils import logging as hf_logging

from llamanas.deploy.gguf import TYPES as GGUF_TYPES
from llamanas.deploy.gguf import export_subnet_gguf
from llamanas.deploy.gguf_tokenizer import tokenizer_source_for
from llamanas.deploy.quantize import is_quantized_dir
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.load import load_config
from llamanas.search.run import load_run, parse_member_ref
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.subnet import SubnetConfig

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


@app.callback()
def _quiet_libraries() -> None:
    """Per-tensor loading bars of transformers are noise on the command line; ours show progress."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _subnet(spec: str | None, model: str) -> SubnetConfig:
    """``--subnet`` of every command, read and checked against the model's config before anything loads:
    ``RUN_DIR:ID`` (a member of a search run), inline JSON or a JSON file; None is the full network."""
    arch = Arch.from_hf(load_config(model))
    if spec is None:
        return SubnetConfig.full(arch)
    try:
        ref = parse_member_ref(spec)
        if ref is not None:
            cfg = load_run(ref[0]).member(ref[1]).config
        elif spec.lstrip().startswith("{"):
            cfg = SubnetConfig.from_json(spec)
        elif Path(spec).is_file():
            cfg = SubnetConfig.from_json(Path(spec).read_text())
        else:
            head, _, tail = spec.rpartition(":")
            where = f"{head!r} holds no search run" if tail.strip().isdigit() else "no such file"
            raise LlamanasError(f"not RUN_DIR:ID of a search run, inline JSON or a JSON file ({where}).")
        return cfg.check(arch)
    except LlamanasError as e:
        raise LlamanasError(f"--subnet {spec!r}: {e}") from None


def _load(
    model: str,
    space: str | None = None,
    order: bool = True,
    dtype: str = "auto",
    device: str = "auto",
    importance: str = "rms",
    compensate: bool = False,
    cfg: SubnetConfig | None = None,
):
    """The super-network of ``model``; its residual stream ordered too when ``cfg`` narrows it (``hidden``)."""
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
            residual=cfg is not None and cfg.hidden is not None,
        )


def _model_kind(model: str) -> str:
    """How ``--model`` runs: ``gguf`` (a file, in llama.cpp), ``quantized`` (a folder written by ``quantize``
    or ``extract --quantize``, as it is) or ``supernet`` (anything else: loaded, sliced by ``--subnet``)."""
    if model.lower().endswith(".gguf"):
        return "gguf"
    return "quantized" if is_quantized_dir(model) else "supernet"


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
    from the model (``deploy.gguf_tokenizer.tokenizer_source_for``; a hub model's loaded tokenizer is saved first)."""
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


def main() -> None:
    try:
        app()
    except LlamanasError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
