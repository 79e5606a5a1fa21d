"""The ``llamanas`` command line: each command is a thin call into the Python API of the same stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llamanas.errors import LlamanasError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="""One-shot neural architecture search for LLaMA-family models (LLaMA-NAS).

Typical session on the offline default model (SmolLM2-135M-Instruct):

    llamanas space --model default --sample 3 --seed 0 > subnets.jsonl
    llamanas eval --model default --tasks arc_easy --split validation --limit 200
    llamanas eval --model default --subnet '{"layers": [0, 1, 2], "mlp": [768, 768, 768], "kv_groups": [3, 3, 3]}' --tasks arc_easy
    llamanas measure --model default --subnet subnet.json
    llamanas extract --model default --subnet subnet.json --out small-model/
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
    from llamanas.space import SubnetConfig

    if spec is None:
        return SubnetConfig.full(supernet.arch)
    cfg = SubnetConfig.from_json(spec) if spec.lstrip().startswith("{") else SubnetConfig.load(spec)
    return cfg.check(supernet.arch)


def _load(model: str, space: str | None = None, order: bool = True):
    from llamanas.supernet import load_supernet

    with console.status(f"Loading {model}" + (" and ordering channels by importance" if order else "")):
        return load_supernet(model, space_file=space, order=order)


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

    from llamanas.models import load_config
    from llamanas.space import Arch, SearchSpace

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
    limit: Annotated[
        int | None, typer.Option(help="Evaluate a seeded random subset of N items per task.")
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option(help="Few-shot examples (default: the task's, usually 0).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit subset.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write results to this JSON file.")
    ] = None,
    no_order: NoOrderOpt = False,
):
    """Evaluate a model or one of its sub-networks on multiple-choice tasks, scored exactly as lm-eval 0.4 does."""
    from llamanas.evaluate import evaluate

    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    if not task_list:
        raise LlamanasError(f"--tasks needs at least one task name; got {tasks!r}.")
    if limit is not None and limit < 1:
        raise LlamanasError(f"--limit must be >= 1; got {limit}.")
    supernet, tokenizer = _load(model, order=subnet is not None and not no_order)
    cfg = _subnet(subnet, supernet)
    with supernet.subnet(cfg):
        results = evaluate(
            supernet.model, tokenizer, task_list, split=split, limit=limit, num_fewshot=num_fewshot, seed=seed
        )
    table = Table(
        title=f"{model}"
        + ("" if subnet is None else f" sub-network ({cfg.num_params(supernet.arch):,} params)")
    )
    for col in ("task", "split", "n", "shots", "metric", "value", "± stderr", "chance"):
        table.add_column(col, justify="right" if col not in ("task", "split", "metric") else "left")
    for name, r in results.items():
        for metric, value in r.metrics.items():
            se = r.stderr.get(metric)
            chance = f"{r.chance:.3f}" if r.chance is not None and metric.startswith("acc") else ""
            flag = ""
            if chance and se is not None and abs(value - r.chance) <= 2 * se:
                flag = " (at chance)"
            table.add_row(
                name,
                r.split,
                str(r.n),
                str(r.num_fewshot),
                metric,
                f"{value:.4f}{flag}",
                f"{se:.4f}" if se else "",
                chance,
            )
    out.print(table)
    if json_path:
        payload = {
            "model": model,
            "subnet": cfg.to_dict(),
            "params": cfg.num_params(supernet.arch),
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
):
    """Report parameters, bytes, MACs per token, prefill latency and generation throughput of a (sub-)network."""
    from llamanas.measure import measure as measure_fn

    for flag, v in (
        ("--seq-len", seq_len),
        ("--prefill-tokens", prefill_tokens),
        ("--gen-tokens", gen_tokens),
        ("--repeats", repeats),
    ):
        if v < 1:
            raise LlamanasError(f"{flag} must be >= 1; got {v}.")
    supernet, _ = _load(model, order=False)  # sizes and speed do not depend on which channels are kept
    cfg = _subnet(subnet, supernet)
    with console.status("Measuring"):
        m = measure_fn(supernet, cfg, seq_len, timing, prefill_tokens, gen_tokens, repeats=repeats)
    if json_out:
        print(json.dumps({"subnet": cfg.to_dict(), **m.to_dict()}))
        return
    table = Table(title=f"{model}" + ("" if subnet is None else " sub-network"), show_header=False)
    for k, v in m.to_dict().items():
        if v is not None:
            table.add_row(
                k, f"{v:,.2f}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))
            )
    out.print(table)


@app.command()
def extract(
    subnet: Annotated[str, typer.Option("--subnet", help="Sub-network config: JSON file or inline JSON.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the standalone checkpoint to.")],
    model: ModelOpt = "default",
    no_order: NoOrderOpt = False,
):
    """Write a sub-network as a standalone checkpoint that `AutoModelForCausalLM.from_pretrained` loads."""
    from llamanas.extract import extract as extract_fn

    supernet, tokenizer = _load(model, order=not no_order)
    cfg = _subnet(subnet, supernet)
    path = extract_fn(
        supernet, cfg, out_dir, tokenizer, metadata={"source_model": model, "ordered": not no_order}
    )
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    console.print(
        f"wrote {path} ({cfg.num_params(supernet.arch):,} params, {size / 2**20:.1f} MiB of weights)"
    )


@app.command()
def demo(
    model: ModelOpt = "default",
    task: Annotated[
        str, typer.Option(help="Task to evaluate on (one with signal on your model).")
    ] = "arc_easy",
    limit: Annotated[int, typer.Option(help="Items of the validation split (seeded subset).")] = 100,
    subnets: Annotated[int, typer.Option(help="Random sub-networks to compare with the full model.")] = 3,
    seed: int = 0,
):
    """The main job in a few minutes: the full model and random sub-networks, size vs speed vs accuracy."""
    from llamanas.demo import DemoArgs, run_demo

    run_demo(DemoArgs(model=model, task=task, limit=limit, subnets=subnets, seed=seed), out)


@app.command()
def tasks():
    """List the available evaluation tasks."""
    from llamanas.tasks import TASKS

    for name in sorted(TASKS):
        print(name)


def main() -> None:
    try:
        app()
    except LlamanasError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
