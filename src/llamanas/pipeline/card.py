"""The model card ``llamanas compress`` writes as ``OUT/README.md``: what the folder holds, what the compressed
model costs and keeps against its base on held-out questions, how it was made and on what machine."""

from __future__ import annotations

import os
import platform
import sys
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from llamanas.evaluation.metrics import at_chance
from llamanas.search.store import write_text

CARD_FILE = "README.md"
VERSIONS = ("llamanas", "torch", "transformers", "llama-cpp-python")


def machine() -> dict:
    """The machine and library versions the measurements were made with."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": sys.version.split()[0]}
    for pkg in VERSIONS:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform(), "versions": versions}


def _acc(r: dict) -> str:
    acc, se = r["metrics"]["acc"], r["stderr"]["acc"]
    mark = " (at chance)" if at_chance(acc, se, r.get("chance")) else ""
    return f"{acc:.3f} ± {se:.3f}{mark}"


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f} MiB"


def _chosen_on(pick: dict, args, sel: dict) -> str:
    """Which questions the pick was made on, and by which rule: the selection ones, or the confirmation of the
    candidates (the largest within the tolerance of the most accurate)."""
    if pick.get("confirm_accuracy") is None:
        return f"on the selection questions ({pick['select_accuracy']:.3f})"
    text = (
        f"among {len(pick['candidates'])} candidates re-scored on {args.confirm_limit} further "
        f"{sel['split'] or 'default-split'} questions per task ({pick['confirm_accuracy']:.3f}; selection "
        f"{pick['select_accuracy']:.3f})"
    )
    most = pick.get("most_accurate")
    if most is None or most == pick["id"]:
        return text + ", the most accurate there"
    gap, se = pick["candidates"][str(pick["id"])]["gap"]
    best = pick["candidates"][str(most)]
    return (
        text + f", the largest within {pick['tolerance']:g} paired standard errors of the most accurate "
        f"(#{most}: {best['params']:,} parameters, {best['confirm']:.3f}; this one {100 * gap:+.1f} ± "
        f"{100 * se:.1f} points)"
    )


def card_text(args, recipe, stages: dict, host: dict) -> str:
    plan, pick, results = stages["plan"], stages["pick"], stages["evaluate"]["results"]
    gguf, timing = stages["gguf"]["files"], stages["time"]
    base_params, params = plan["base_params"], stages["extract"]["params"]
    first = recipe.gguf_types[0]
    lines = [
        f"# {Path(args.model).name if args.model != 'default' else 'SmolLM2-135M-Instruct'}, compressed to "
        f"{params / base_params:.0%} of its parameters",
        "",
        f"Made by `llamanas compress` from `{args.model}` for {', '.join(args.tasks)}: a sub-network with every "
        f"layer kept and narrower MLPs and attention, chosen by a {stages['search']['evaluations']}-evaluation LINAS search "
        "on validation questions and reported below on questions the search never saw.",
        "",
        "## Files",
        "",
        "| file | what | size |",
        "|---|---|---|",
        f"| `model/` | Hugging Face checkpoint (`AutoModelForCausalLM.from_pretrained`) | "
        f"{_mib(stages['extract']['bytes'])} |",
    ]
    for ty in recipe.gguf_types:
        lines.append(f"| `model-{ty}.gguf` | llama.cpp, {ty.upper()} | {_mib(gguf[ty]['bytes'])} |")
    lines += [
        "| `search/` | the search run: `front.csv`, `results.sqlite`, `report.html` | |",
        "| `compress.json` | every stage's record (settings, recipe, results, timings) | |",
        "",
        "## Base vs compressed",
        "",
        "| | base | compressed |",
        "|---|---|---|",
        f"| parameters | {base_params:,} | {params:,} ({params / base_params:.1%}) |",
        f"| GGUF {first.upper()} file | {_mib(gguf['base-' + first]['bytes'])} | {_mib(gguf[first]['bytes'])} |",
    ]
    for task, q in plan["report"].items():
        where = f"{q['split'] or 'default split'}, {results['base'][task]['n']} questions"
        where += f" after the first {q['offset']}" if q["offset"] else ""
        lines.append(
            f"| {task} accuracy ({where}) | {_acc(results['base'][task])} | {_acc(results['compressed'][task])} |"
        )
    if "skipped" in timing:
        lines.append(f"| llama.cpp speed | not measured: {timing['skipped']} | |")
    else:
        for key, label in (("decode_tokens_per_s", "decode"), ("prefill_tokens_per_s", "prefill")):
            t = timing[key]
            lo, hi = t["ratio_range"]
            lines.append(
                f"| llama.cpp {label} tokens/s ({first.upper()}, batch 1) | {t['base']:.1f} | {t['compressed']:.1f} "
                f"({t['ratio']:.2f}x; rounds {lo:.2f}-{hi:.2f}x) |"
            )
        rss = timing["peak_rss_bytes"]
        lines.append(f"| llama.cpp peak memory | {_mib(rss['base'])} | {_mib(rss['compressed'])} |")
    lines += ["", "Accuracy is lm-evaluation-harness's `acc` ± its standard error; \"at chance\" marks a score within "
              "two standard errors of uniform guessing."]  # fmt: skip
    if "skipped" not in timing:
        spread = max(timing[k]["spread"] for k in ("decode_tokens_per_s", "prefill_tokens_per_s"))
        verdict = (
            "consistent between rounds"
            if timing["trusted"]
            else "**too spread between rounds to trust: the machine was busy; re-run on a quiet machine**"
        )
        lines.append(
            f"Speeds: {timing['rounds']} rounds timing base and compressed alternately (3 repeats each, medians); "
            f"the ratio's spread between rounds was {spread:.0%}, {verdict} (1-minute load average "
            f"{', '.join(str(x) for x in timing['load_average'])} on {timing['cpus']} cores)."
        )
    lines += ["", "## Recipe", "", "| choice | value | why |", "|---|---|---|"]
    for key, why in recipe.why.items():
        value = getattr(recipe, key)
        if isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, dict):
            value = f"MLP {value['mlp_choices']}, KV groups {value['kv_groups']}, every layer kept"
        elif isinstance(value, tuple):
            value = ", ".join(value) or "none"
        lines.append(f"| {key.replace('_', ' ')} | {value} | {why} |")
    sel = plan["select"]
    lines += [
        f"| search | LINAS, {stages['search']['evaluations']} evaluations, population {args.population} | selected on "
        f"{sel['limit']} {sel['split'] or 'default-split'} questions per task (seed {sel['seed']}) |",
        f"| chosen | sub-network #{pick['id']} | the most accurate meeting the target "
        f"({args.target_text(base_params)}) " + _chosen_on(pick, args, sel) + " |",
        "",
        "## Reproduce",
        "",
        "```",
        args.command(),
        "```",
        "",
        "## Measured on",
        "",
        f"{host['cpu']}, {host['cores']} cores, {host['system']}; {date.today().isoformat()}; dtype "
        f"{plan['dtype']}; " + ", ".join(f"{k} {v}" for k, v in host["versions"].items() if v) + ".",
        "Stage wall times (s): "
        + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in stages.items() if "seconds" in v)
        + ".",
        "",
    ]
    return "\n".join(lines)


def write_card(out: Path, args, recipe, stages: dict) -> Path:
    path = out / CARD_FILE
    write_text(path, card_text(args, recipe, stages, machine()))
    return path
