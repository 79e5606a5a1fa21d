"""``llamanas compress``: one command from a model to a smaller one, with its GGUF files and a model card.

The stages, each resumable (a re-run skips what ``compress.json`` records as done; every file is written
under a temporary name and renamed, so a killed run never leaves a half-written file that looks complete):

1. plan      the recipe (``recipe.choose_recipe``), the selection and report questions, the memory check
2. search    LINAS on the selection questions, constrained to the target (``search.run.search``)
3. pick      the best few that meet the target on the selection questions, and the warm start's seeds,
             re-scored on further validation questions: the largest not clearly less accurate there
             than the most accurate (``pipeline.pick``)
4. extract   the HF checkpoint (``DIR/model``), least-squares repaired where the recipe says so
5. gguf      ``DIR/model-<type>.gguf`` for each of the recipe's types, and the base model's for timing
6. evaluate  base and compressed model on the report questions, disjoint from the other two sets
7. time      base and compressed GGUF in llama.cpp, alternately (ABAB), with the spread between rounds
8. report    the search's HTML report (``DIR/search/report.html``)
9. card      ``DIR/README.md``
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from llamanas.config import resume_conflicts
from llamanas.deploy.extract import extract
from llamanas.deploy.gguf import TYPES, export_gguf
from llamanas.deploy.gguf_tokenizer import tokenizer_source_for
from llamanas.deploy.speed import build_latency_table_for
from llamanas.errors import LlamanasError, unknown
from llamanas.evaluation.evaluate import (
    auto_batch_tokens,
    evaluate,
    loglikelihoods,
    model_max_length,
    per_question,
    prepare,
)
from llamanas.evaluation.questions import Questions
from llamanas.evidence.report import report
from llamanas.model.arch import Arch
from llamanas.model.device import check_memory, dtype_name, plan_memory
from llamanas.model.load import load_config, load_model, resolve_placement
from llamanas.pipeline.args import (
    CompressArgs,
    confirm_questions,
    report_questions,
    selection_questions,
    task_leaves,
)
from llamanas.pipeline.card import write_card
from llamanas.pipeline.pick import Scored, candidates, choose, paired_gap
from llamanas.pipeline.recipe import Recipe, choose_recipe
from llamanas.pipeline.timing import time_abab
from llamanas.search.args import SearchArgs
from llamanas.search.run import load_run, search
from llamanas.search.store import write_json
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.subnet import SubnetConfig

STATE_FILE = "compress.json"
STAGES = ("plan", "search", "pick", "extract", "gguf", "evaluate", "time", "report", "card")


class State:
    """``OUT/compress.json``: the settings, the recipe and each finished stage's record (atomic writes)."""

    def __init__(self, out: Path, args: CompressArgs):
        self.path = out / STATE_FILE
        self.args = args
        if self.path.is_file():
            d = json.loads(self.path.read_text())
            saved = CompressArgs.from_dict(d["args"])
            shown = resume_conflicts(saved, args)
            if shown:
                raise LlamanasError(
                    f"{out} holds a compression made with other settings ({shown}); re-run with the same "
                    "settings to resume, or choose another --out."
                )
            self.stages: dict = d.get("stages", {})
        else:
            if out.exists() and any(out.iterdir()):
                raise LlamanasError(
                    f"--out {str(out)!r} exists and is not a compress folder (no {STATE_FILE}); choose another."
                )
            self.stages = {}

    def done(self, stage: str) -> dict | None:
        return self.stages.get(stage)

    def finish(self, stage: str, record: dict, seconds: float) -> dict:
        self.stages[stage] = {**record, "seconds": round(seconds, 1)}
        write_json(self.path, {"args": self.args.to_dict(), "stages": self.stages})
        return self.stages[stage]


@dataclass
class Progress:
    """How compress talks: ``say`` prints a line; ``search`` is called after every search evaluation."""

    say: Callable[[str], None] = print
    search: Callable | None = None


def compress(args: CompressArgs, progress: Progress | None = None) -> Path:
    """Compress ``args.model`` into ``args.out`` (resuming a run interrupted there); returns the card's path."""
    progress = progress or Progress()
    say = progress.say
    out = Path(args.out)
    state = State(out, args)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def stage(i: int, name: str, eta: str = "") -> float:
        note = "done (recorded)" if state.done(name) else (f"~{eta}" if eta else "")
        say(f"[{i}/{len(STAGES)}] {name} {note}".rstrip())
        return time.time()

    # 1. plan: everything that can fail without loading weights fails here.
    t = stage(1, "plan")
    arch = Arch.from_hf(load_config(args.model))
    device, dtype = resolve_placement(args.model, args.dtype, args.device)
    check_memory(plan_memory(arch.num_params(), dtype, device, "ordering"), say)
    constraint = args.constraint(arch.num_params())
    params_fraction = constraint.bound / arch.num_params() if constraint.objective.name == "params" else None
    if params_fraction is not None and params_fraction >= 1:
        raise LlamanasError(
            f"--target {args.target!r} keeps all {arch.num_params():,} parameters of {args.model}: nothing to compress."
        )
    select = selection_questions(args)
    plan = state.done("plan") or state.finish(
        "plan",
        {
            "recipe": choose_recipe(params_fraction, arch).to_dict(),
            "dtype": dtype_name(dtype),
            "base_params": arch.num_params(),
            "select": {"tasks": list(args.tasks), **select.to_dict()},
            "report": {t: report_questions(args, t).to_dict() for t in task_leaves(args)},
        },
        time.time() - t,
    )
    recipe = Recipe.from_dict(plan["recipe"])  # a resumed run keeps the recipe it started with
    _say_recipe(say, args, recipe, select, plan)

    # 2. search
    run_dir = out / "search"
    space_file = out / "space.json"
    if not space_file.is_file():
        write_json(space_file, recipe.space)
    budget = f"{args.evaluations} evaluations" + (f" or {args.minutes:g} minutes" if args.minutes else "")
    t = stage(2, "search", f"{budget} of {args.select_limit} questions per task")
    if not state.done("search"):
        result = search(
            SearchArgs(
                model=args.model,
                tasks=args.tasks,
                objectives=("accuracy", "params"),
                constraints=(constraint.text,),
                algorithm="linas",
                evaluations=args.evaluations,
                minutes=args.minutes,
                population=args.population,
                split=select.split,
                limit=select.limit,
                data_seed=select.seed,
                seed=args.seed,
                space=str(space_file),
                importance=recipe.importance,
                warm_start=recipe.warm_start,
                warm_start_windows=args.warm_start_windows,
                out=str(run_dir),
                dtype=plan["dtype"],
                device=args.device,
                runtime="llamacpp" if args.timed else "hf",
            ),
            progress=progress.search,
            latency_table_builder=build_latency_table_for if args.timed else None,
        )
        state.finish(
            "search", {"evaluations": result.evaluations, "front": len(result.front)}, time.time() - t
        )
    search_rec = state.done("search")
    per_eval = search_rec["seconds"] / max(1, search_rec["evaluations"])

    # 3. pick
    t = stage(3, "pick")
    if not state.done("pick"):
        view = load_run(run_dir)
        found = candidates(view, run_dir, recipe, args.confirm)
        if not found:
            raise LlamanasError(
                f"No sub-network meeting --target {args.target!r} was found in {len(view.evaluated)} evaluations; "
                "raise --evaluations or relax --target."
            )
        scored: dict[int, Scored] = {}
        if len(found) > 1:
            confirm = confirm_questions(args)
            say(f"  re-scoring {len(found)} candidates on {confirm.limit} more validation questions per task")
            supernet, tokenizer = load_supernet(
                args.model, importance=recipe.importance, dtype=plan["dtype"], device=args.device
            )
            prepared = prepare(
                tokenizer,
                list(args.tasks),
                confirm,
                batch_tokens=auto_batch_tokens(supernet.model),
                max_length=model_max_length(supernet.model, tokenizer),
            )
            for e in found:
                with supernet.subnet(e.config):
                    per_q = per_question(prepared, loglikelihoods(supernet.model, prepared))
                scored[e.seq] = Scored(e.config.num_params(arch), {t: per_q[t] for t in task_leaves(args)})
                say(f"  #{e.seq}: {scored[e.seq].params:,} parameters, selection {e.values['accuracy']:.3f}, "
                    f"confirmation {scored[e.seq].accuracy:.3f}")  # fmt: skip
            del supernet
            chosen = choose(scored, args.pick_tolerance)
            most = choose(scored, 0.0)
        else:
            chosen = most = found[0].seq
        best = next(e for e in found if e.seq == chosen)
        gaps = {s: paired_gap(scored[most], c) for s, c in scored.items()}
        state.finish(
            "pick",
            {
                "id": best.seq,
                "config": best.config.to_dict(),
                "params": best.config.num_params(arch),
                "select_accuracy": best.values["accuracy"],
                "confirm_accuracy": scored[chosen].accuracy if scored else None,
                "most_accurate": most,
                "tolerance": args.pick_tolerance,
                "candidates": {
                    str(e.seq): {
                        "params": e.config.num_params(arch),
                        "select": e.values["accuracy"],
                        "confirm": scored[e.seq].accuracy if scored else None,
                        "gap": list(gaps[e.seq]) if scored else None,
                    }
                    for e in found
                },
                "target": {
                    "constraint": constraint.text,
                    "value": best.values.get(constraint.objective.name),
                },
            },
            time.time() - t,
        )
    pick = state.done("pick")
    cfg = SubnetConfig.from_dict(pick["config"])
    say(
        f"  sub-network #{pick['id']}: {pick['params']:,} parameters ({pick['params'] / arch.num_params():.1%}), "
        f"selection accuracy {pick['select_accuracy']:.3f}"
        + (
            f", confirmation {pick['confirm_accuracy']:.3f}"
            if pick.get("confirm_accuracy") is not None
            else ""
        )
    )

    # 4. extract: least-squares repair (with bias compensation, as it was measured) when the recipe has it
    model_dir = out / "model"
    t = stage(4, "extract", "under a minute" if not recipe.repair else "a minute or two with the repair")
    if not state.done("extract"):
        supernet, tokenizer = load_supernet(
            args.model,
            importance=recipe.importance,
            compensate=recipe.repair,
            dtype=plan["dtype"],
            device=args.device,
            say=say,
        )
        tmp = out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        meta = {"source_model": args.model, "ordered": True, "importance": recipe.importance, "run": "search"}
        extract(supernet, cfg, tmp, tokenizer, metadata={**meta, "id": pick["id"]}, repair=recipe.repair)
        del supernet
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.rename(model_dir)
        state.finish(
            "extract",
            {"path": "model", "bytes": _folder_bytes(model_dir), "params": checkpoint_params(model_dir)},
            time.time() - t,
        )

    # 5. GGUF, written from the checkpoints themselves: each file holds exactly the model it stands for
    ggufs = {ty: out / f"model-{ty}.gguf" for ty in recipe.gguf_types}
    base_gguf = out / "work" / f"base-{recipe.gguf_types[0]}.gguf"
    t = stage(5, "gguf")
    if not state.done("gguf"):
        files = {}
        for source, targets in (
            (str(model_dir), [(ty, path, pick["config"]) for ty, path in ggufs.items()]),
            (args.model, [(recipe.gguf_types[0], base_gguf, None)]),
        ):
            model, tok = load_model(source, dtype="float32", device="cpu")
            for ty, path, subnet in targets:
                res = _export_gguf(args.model, model, tok, path, ty, subnet)
                key = ty if subnet is not None else f"base-{ty}"
                files[key] = {"path": str(path.relative_to(out)), "bytes": path.stat().st_size}
                say(f"  wrote {res.summary()}")
            del model
        state.finish("gguf", {"files": files}, time.time() - t)

    # 6. evaluate on the report questions
    n_report = sum(q["limit"] or 0 for q in plan["report"].values())
    eta = f"{_duration(2 * per_eval * n_report / max(1, args.select_limit * len(plan['report'])))}"
    t = stage(6, "evaluate", f"{eta} for base and compressed on {n_report} held-out questions")
    if not state.done("evaluate"):
        rows = {}
        for name, source in (("base", args.model), ("compressed", str(model_dir))):
            model, tok = load_model(source, dtype=plan["dtype"], device=args.device)
            rows[name] = {
                task: evaluate(model, tok, [task], Questions(**q), progress=True)[task].to_dict()
                for task, q in plan["report"].items()
            }
            del model
        state.finish("evaluate", {"results": rows}, time.time() - t)

    # 7. time in llama.cpp, alternately
    t = stage(7, "time", f"{args.timing_rounds} rounds of base and compressed")
    if not state.done("time"):
        timing = time_abab(out / state.done("gguf")["files"]["base-" + recipe.gguf_types[0]]["path"],
                            ggufs[recipe.gguf_types[0]], args.timing_rounds, say)  # fmt: skip
        state.finish("time", timing, time.time() - t)

    # 8. the search's report
    t = stage(8, "report")
    if not state.done("report"):
        try:
            path = report(run_dir)
            rec = {"path": str(path.relative_to(out))}
        except LlamanasError as e:  # plotly/matplotlib missing: the card still gets written
            say(f"  report skipped: {e}")
            rec = {"path": None, "skipped": str(e)}
        state.finish("report", rec, time.time() - t)

    # 9. the model card
    t = stage(9, "card")
    card = write_card(out, args, recipe, state.stages)
    state.finish(
        "card", {"path": card.name, "total_seconds": round(time.time() - t_start, 1)}, time.time() - t
    )
    return card


def _say_recipe(say, args: CompressArgs, recipe: Recipe, select: Questions, plan: dict) -> None:
    """The recipe in one short block, before any work."""
    space = recipe.space
    say(f"Recipe for {args.model}, target {args.target_text(plan['base_params'])} ({plan['dtype']}):")
    say(f"  importance {recipe.importance}; warm start {', '.join(recipe.warm_start) or 'none'}; repair "
        f"{'on' if recipe.repair else 'off'}; InstaTune {'on' if recipe.finetune else 'off'}")  # fmt: skip
    say(f"  space: every layer kept, MLP {space['mlp_choices']}, KV groups {space['kv_groups']}")
    minutes = f" (or {args.minutes:g} minutes)" if args.minutes else ""
    say(f"  search: LINAS, {args.evaluations} evaluations{minutes}, population {args.population}, on {select.limit} "
        f"{select.split or 'default-split'} questions per task (seed {select.seed})")  # fmt: skip
    reported = ", ".join(
        f"{t} {q['split'] or 'default'}[{q['offset']}:+{q['limit']}]" for t, q in plan["report"].items()
    )
    say(
        f"  report: {reported} (disjoint from the selection and confirmation); GGUF {', '.join(recipe.gguf_types)}"
    )


def _export_gguf(name: str, model, tokenizer, path: Path, type: str, subnet: dict | None = None):
    """A loaded HF ``model`` (plain or extracted) as GGUF at ``path``, with the tokenizer of the model
    ``name`` (``export_gguf`` writes under a temporary name and renames)."""
    if type not in TYPES:
        raise unknown("GGUF type", type, TYPES)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tok_dir:
        source = tokenizer_source_for(name)
        if source is None:  # a hub id: the loaded tokenizer, saved where export_gguf can read it
            tokenizer.save_pretrained(tok_dir)
            source = tok_dir
        return export_gguf(model, source, path, type=type, overwrite=True, subnet=subnet)


def checkpoint_params(folder: Path) -> int:
    """Parameters stored in a checkpoint's safetensors files (the repair's output biases included), read
    from their headers without loading the weights."""
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 - safe_open is no dict
    return total


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
