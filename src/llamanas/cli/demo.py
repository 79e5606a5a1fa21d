"""``make demo``: the pipeline on the default model, small enough for a 2-core laptop (about 15 minutes).

A short InstaTune fine-tune (``finetune_steps``; 0 skips it) -> LINAS search (accuracy vs parameters on
a fixed ARC-Easy validation subset) on the super-network -> the Pareto front -> extraction of the best
member under a size budget (also as GGUF F16), and its INT8 version -> the front re-scored after INT8 ->
pruning baselines at the same size (on the original model and sliced from the super-network) -> the HTML
report -> base vs chosen sub-network in llama.cpp (GGUF size, decode speed; skipped without the
``llama-cpp-python`` binding). Every step writes into ``out`` and is resumable: re-running continues
where it stopped.

The short fine-tune shows the mechanics, not the gains: how much training the default model's
sub-networks need is measured in docs/benchmarks.md (InstaTune).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llamanas.errors import LlamanasError


@dataclass
class DemoArgs:
    """What ``llamanas demo`` runs; the defaults take about five minutes on two CPU cores."""

    model: str = "default"
    """'default' (SmolLM2-135M-Instruct, offline), a local HF model folder or a hub id."""
    task: str = "arc_easy"
    """Task to search on (one with signal on your model: at-chance tasks give a front of noise)."""
    limit: int = 50
    """Items of the validation split (a seeded subset)."""
    evaluations: int = 24
    """Real evaluations of the LINAS search."""
    population: int = 8
    """LINAS batch: the initial population and the sub-networks evaluated per loop."""
    size: float = 0.8
    """Fraction of the full model's parameters for extraction and baselines."""
    finetune_steps: int = 16
    """InstaTune steps (alternate + distillation, batch 4) before the search; 0 searches the model as is."""
    seed: int = 0
    """Seed of the fine-tuning, the search and the --limit subset."""
    out: str = "runs/demo"
    """Folder for everything the demo writes; re-running resumes there."""
    device: str = "auto"
    """auto (CUDA if present, else cpu) | cpu | cuda | cuda:N."""
    dtype: str = "auto"
    """auto | bfloat16 | float16 | float32 (auto: float32 for the small default model on the CPU)."""

    def __post_init__(self):
        if not 0 < self.size <= 1:
            raise LlamanasError(f"--size must be a fraction in (0, 1]; got {self.size}.")
        if self.finetune_steps < 0:
            raise LlamanasError(f"--finetune-steps must be >= 0; got {self.finetune_steps}.")


def run_demo(args: DemoArgs, console, front_table) -> Path:
    from llamanas.deploy.extract import extract
    from llamanas.evidence.baselines import run_baselines
    from llamanas.evidence.report import report
    from llamanas.search.run import SearchArgs, load_run, search
    from llamanas.supernet.elastic import load_supernet

    out = Path(args.out)
    run_dir = out / "search"
    model = args.model
    supernet_dir = None
    if args.finetune_steps:
        from llamanas.model.data import ALPACA_DEMO, find_data
        from llamanas.tuning.tune import TuneArgs, finetune

        data = find_data(ALPACA_DEMO)
        console.rule(
            f"0/6 InstaTune: {args.finetune_steps} steps on the Alpaca demo (alternate + distillation)"
        )
        finetune(
            TuneArgs(
                data=str(data),
                out=str(out / "supernet"),
                model=args.model,
                strategy="alternate",
                distill=True,
                steps=args.finetune_steps,
                batch_size=4,
                max_length=192,
                lr=5e-5,
                save_every=4,
                eval_size=16,
                seed=args.seed,
                dtype=args.dtype,
                device=args.device,
            )
        )
        model = supernet_dir = str(out / "supernet")
    console.rule(
        f"1/6 LINAS search: {args.evaluations} sub-networks, {args.task} ({args.limit} validation items)"
    )
    search(
        SearchArgs(
            model=model,
            tasks=(args.task,),
            objectives=("accuracy", "params"),
            algorithm="linas",
            evaluations=args.evaluations,
            population=args.population,
            limit=args.limit,
            seed=args.seed,
            inner_generations=300,
            out=str(run_dir),
            dtype=args.dtype,
            device=args.device,
        )
    )
    view = load_run(run_dir)
    console.print(front_table(view, f"Pareto front ({len(view.evaluated)} evaluations)"))

    console.rule(f"2/6 extraction: most accurate front member within {args.size:.0%} of the parameters")
    supernet, tokenizer = load_supernet(model, dtype=args.dtype, device=args.device)
    budget = args.size * supernet.num_params()
    fitting = [
        m for m in view.front if m.measured.get("params", m.config.num_params(supernet.arch)) <= budget
    ]
    if not fitting:
        console.print(
            f"No front member is within {args.size:.0%} of the parameters; extracting the smallest."
        )
        fitting = [min(view.front, key=lambda m: m.config.num_params(supernet.arch))]
    best = max(fitting, key=lambda m: m.values["accuracy"])
    meta = {"run": str(run_dir), "id": best.id}
    small = extract(supernet, best.config, out / "extracted", tokenizer, metadata=meta)
    console.print(f"front member {best.id}: accuracy {best.values['accuracy']:.3f}, saved to {small}")
    gguf_path = _write_gguf(model, supernet, tokenizer, best.config, small / "model-f16.gguf", console)

    console.rule("3/6 INT8 weight-only quantization: the extracted model, and the whole front re-evaluated")
    from llamanas.deploy.quantize import quantize_front

    quantize_front(run_dir, "int8", supernet=supernet, tokenizer=tokenizer, progress=True)
    qdir = extract(supernet, best.config, out / "extracted-int8", tokenizer, metadata=meta, quantize="int8")
    info = json.loads((qdir / "llamanas_quant.json").read_text())
    console.print(
        f"saved to {qdir}: bytes={info['bytes']:,} (16-bit: {2 * best.config.num_params(supernet.arch):,})"
    )

    console.rule(f"4/6 pruning baselines at {args.size:.0%} of the parameters")
    run_baselines(
        args.model,
        [args.task],
        sizes=(args.size,),
        out_dir=out / "baselines",
        supernet_dir=supernet_dir,
        split="validation",
        limit=args.limit,
        seed=0,
        dtype=args.dtype,
        device=args.device,
    )

    console.rule("5/6 report")
    path = report(run_dir, baselines=out / "baselines")
    console.print(f"[bold green]Report:[/bold green] {path.resolve()}")

    console.rule("6/6 llama.cpp: base vs chosen sub-network (GGUF F16, batch-1 decode on the CPU)")
    if gguf_path is None:
        console.print("No GGUF file of the sub-network (see above): llama.cpp comparison skipped.")
    else:
        from llamanas.supernet.space import SubnetConfig

        full = SubnetConfig.full(supernet.arch)
        base_path = _write_gguf(model, supernet, tokenizer, full, out / "base-f16.gguf", console)
        if base_path is not None:
            base = max(view.evaluated, key=lambda e: e.config.num_params(supernet.arch))
            base_acc = base.values["accuracy"] if base.config == full else None
            rows = [
                dict(name="base", params=full.num_params(supernet.arch), path=base_path, accuracy=base_acc),
                dict(
                    name=f"sub-network {best.id}",
                    params=best.config.num_params(supernet.arch),
                    path=gguf_path,
                    accuracy=best.values["accuracy"],
                ),
            ]
            _llamacpp_rows(rows, console)
            from llamanas.cli.tables import llamacpp_table

            console.print(llamacpp_table("GGUF F16 in llama.cpp", rows, args.task))
    return path


def _write_gguf(model: str, supernet, tokenizer, cfg, path: Path, console) -> Path | None:
    """``cfg`` as GGUF F16 at ``path`` (replaced if there); None with a note if it cannot be exported."""
    import tempfile

    from llamanas.deploy.gguf import export_subnet_gguf, tokenizer_source_for

    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = tokenizer_source_for(model)
            if source is None:
                tokenizer.save_pretrained(tmp)
                source = tmp
            res = export_subnet_gguf(supernet, cfg, source, path, type="f16", overwrite=True)
    except LlamanasError as e:
        console.print(f"GGUF export skipped: {e}")
        return None
    console.print(f"wrote {res.summary()}")
    return path


def _llamacpp_rows(rows: list[dict], console) -> None:
    """Add file sizes and, when the binding is installed, llama.cpp decode tokens/s to the rows."""
    from llamanas.deploy.llamacpp import INSTALL_HINT, available, time_gguf

    timed = available()
    if not timed:
        console.print(f"llama.cpp binding not installed: decode speed not measured ({INSTALL_HINT}).")
    for r in rows:
        r["file_bytes"] = r["path"].stat().st_size
        r["decode_tok_s"] = None
        if timed:
            t = time_gguf(r["path"], prompt_tokens=128, decode_tokens=32, repeats=3)
            r["decode_tok_s"] = t.decode_tokens_per_s
