"""Commands on a model and its sub-networks: ``space``, ``eval``, ``measure``, ``tasks``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from llamanas.cli.app import (
    _check_gguf_type,
    _export_gguf,
    _load,
    _model_kind,
    _subnet,
    _task_list,
    app,
    console,
    out,
)
from llamanas.cli.options import (
    CompensateOpt,
    DeviceOpt,
    DtypeOpt,
    GGUFTypeOpt,
    ImportanceOpt,
    ModelOpt,
    NoOrderOpt,
    SpaceOpt,
    SubnetOpt,
    TasksOpt,
    command,
)
from llamanas.cli.tables import (
    key_value_table,
    results_table,
    space_rows,
)
from llamanas.deploy.extract import read_extracted_meta
from llamanas.deploy.gguf import read_gguf_info
from llamanas.deploy.llamacpp import binding, evaluate_gguf, time_gguf
from llamanas.deploy.quantize import load_quantized, read_quant_meta
from llamanas.errors import LlamanasError
from llamanas.evaluation.evaluate import evaluate
from llamanas.evaluation.measure import count
from llamanas.evaluation.measure import measure as measure_fn
from llamanas.evaluation.questions import Questions
from llamanas.evaluation.tasks import available_tasks
from llamanas.model.arch import Arch
from llamanas.model.device import dtype_name
from llamanas.model.load import load_config, resolve
from llamanas.supernet.slicing import subnet_model
from llamanas.supernet.space import DEFAULT_SEARCH_SPACE, SearchSpace


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
    """Print the search space of a model (dimensions, choices, number of sub-networks), or sample from it.

    Without --space: the space `llamanas search` takes by default (width: every layer kept); --space full
    shows the one with layer and block drops as well."""
    arch = Arch.from_hf(load_config(model))
    space = space or DEFAULT_SEARCH_SPACE
    sp = SearchSpace.from_file(space, arch)
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
    out.print(key_value_table(f"Search space of {model} ({space})", space_rows(sp)))


@command(app, "eval")
def eval_(
    tasks: TasksOpt,
    model: ModelOpt = "default",
    subnet: SubnetOpt = None,
    questions: Questions = Questions(),
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
    task_list = _task_list(tasks)
    kind = _model_kind(model)
    if kind == "gguf":
        return _eval_gguf(model, subnet, task_list, questions, json_path, device, dtype)
    if kind == "quantized":  # written by `quantize` or `extract --quantize`: evaluate it as it is
        if subnet is not None:
            raise LlamanasError("--subnet does not apply to a quantized checkpoint; extract first.")
        qmodel, tokenizer = load_quantized(model, dtype="bfloat16" if dtype == "bfloat16" else "float32")
        results = evaluate(qmodel, tokenizer, task_list, questions)
        used_dtype = dtype_name(next(qmodel.parameters()).dtype)
        out.print(
            results_table(f"{model} ({qmodel.config.llamanas_quant['method']}) [{used_dtype}]", results)
        )
        if json_path:
            _write_results(json_path, model, read_quant_meta(model).get("subnet"), None, used_dtype, results)
        return
    cfg = _subnet(subnet, model)
    supernet, tokenizer = _load(
        model,
        order=subnet is not None and not no_order,
        dtype=dtype,
        device=device,
        importance=importance,
        compensate=compensate and subnet is not None,
        cfg=cfg,
    )
    used_dtype = dtype_name(next(supernet.model.parameters()).dtype)
    with subnet_model(supernet, cfg) as m:
        results = evaluate(m, tokenizer, task_list, questions)
    params, subnet_dict = cfg.num_params(supernet.arch), cfg.to_dict()
    extracted = read_extracted_meta(resolve(model)) if subnet is None else {}
    if extracted:  # an extracted checkpoint: its own sub-network and size, not its base model's
        params = sum(p.numel() for p in supernet.model.parameters())
        subnet_dict = extracted.get("subnet")
    title = model if subnet is None else f"{model} sub-network ({params:,} params)"
    out.print(results_table(f"{title} [{used_dtype}]", results))
    if json_path:
        _write_results(json_path, model, subnet_dict, params, used_dtype, results)


def _write_results(
    path: Path, model: str, subnet, params: int | None, dtype: str, results: dict, **extra
) -> None:
    """The eval --json file: what was evaluated, in which dtype, and every task's results."""
    payload = {"model": model, **extra, "subnet": subnet, "params": params, "dtype": dtype}
    payload["results"] = {k: r.to_dict() for k, r in results.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {path}")


def _eval_gguf(model, subnet, task_list, questions: Questions, json_path, device, dtype):
    if subnet is not None:
        raise LlamanasError(
            "--subnet does not apply to a GGUF file; export the sub-network with `llamanas export`."
        )
    if device not in ("auto", "cpu") or dtype != "auto":
        raise LlamanasError(
            "--device/--dtype do not apply to a GGUF file: llama.cpp runs it on the CPU in its own types."
        )
    info = read_gguf_info(model)
    results = evaluate_gguf(info.path, task_list, questions=questions, progress=True)
    out.print(results_table(f"{model} [llama.cpp, {info.type}, {info.n_params:,} params]", results))
    if json_path:
        _write_results(json_path, model, info.subnet, info.n_params, info.type, results, runtime="llamacpp")


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
            help="Comma-separated prompt lengths to time prefill and decode after, e.g. 128,2048 (long "
            "context: where skipped attention blocks pay). --runtime llamacpp default: --prefill-tokens and "
            "1024, capped by the model's context length; hf default: a 16-token prompt for decoding."
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
    if threads is not None:
        raise LlamanasError("--threads applies to --runtime llamacpp (hf uses torch's threads).")
    if _model_kind(model) == "gguf":
        raise LlamanasError("A GGUF file is measured with --runtime llamacpp.")
    cfg = _subnet(subnet, model)
    # (prompt tokens timed for prefill, prompt tokens decoding starts after): --context sets both
    if context is None:
        runs = [(prefill_tokens, 16)]
    else:
        limit = getattr(load_config(model), "max_position_embeddings", None)
        runs = [(n, n) for n in _contexts(context, prefill_tokens, gen_tokens, limit)]
    # sizes and speed do not depend on which channels are kept
    supernet, _ = _load(model, order=False, dtype=dtype, device=device)
    title = f"{model}" + ("" if subnet is None else " sub-network")
    for prefill, gen_context in runs:
        where = "" if context is None else f", context {gen_context}"
        with console.status(f"Measuring{where}"):
            m = measure_fn(
                supernet, cfg, seq_len, timing, prefill, gen_tokens, repeats=repeats, gen_context=gen_context
            )
        if json_out:
            print(json.dumps({"subnet": cfg.to_dict(), "runtime": "hf", **m.to_dict()}))
        else:
            out.print(key_value_table(title + where, m.to_dict()))


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
    _check_gguf_type(type_)
    if threads is not None and threads < 1:
        raise LlamanasError(f"--threads must be >= 1; got {threads}.")
    gguf = _model_kind(model) == "gguf"
    if gguf and subnet is not None:
        raise LlamanasError("--subnet does not apply to a GGUF file; export the sub-network first.")
    cfg = None if gguf else _subnet(subnet, model)
    binding()  # the install hint before any loading
    with tempfile.TemporaryDirectory() as tmp:
        values: dict = {"runtime": "llamacpp"}
        if cfg is None:
            info = read_gguf_info(model)
            values.update(
                subnet=info.subnet, params=info.n_params, params_non_embedding=info.n_params_non_embedding
            )
        else:
            supernet, tokenizer = _load(model, order=False, dtype=dtype, device=device)
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
                kv_bytes_per_token=c.kv_bytes_per_token,
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
def tasks():
    """List the available evaluation tasks."""
    for name in available_tasks():
        print(name)
