"""Pruning baselines at matched size, on the same model and evaluator as the search.

- ``depth``: depth truncation, keep the first N layers.
- ``shortgpt``: layer removal by Block Influence (ShortGPT, Men et al. 2024): drop the layers whose output is
  most similar to their input, ``BI = 1 - mean cos(h_in, h_out)`` over calibration tokens.
- ``width``: uniform structured width pruning of every MLP by activation importance (Minitron style: the
  channels are ordered by ``importance.py`` and every layer keeps the same first-k channels).
- ``attention`` (not run by default): attention blocks dropped by their own Block Influence (He et al. 2024,
  "What Matters in Transformers? Not All Attention is Needed"): ``1 - mean cos(h, h + attn(h))`` per
  layer; the least influential attention blocks are skipped (MLPs kept) until the size is within the target.
- ``sensitivity`` (not run by default): per-layer widths allocated by sensitivity (Sensi-BERT style,
  ``supernet/sensitivity.py``): each (layer, MLP or KV width of the search space) is scored by the
  calibration loss increase when only that layer is sliced, then the cheapest loss increase per parameter
  saved is taken greedily until the size is within the target.
- ``hidden`` (not run by default): the residual stream (embeddings, every layer's input and output, the LM
  head) cut uniformly to its most important channels, every layer otherwise whole: SliceGPT (Ashkboos et
  al. 2024) without its rotation, the channels ordered by ``importance.order_residual``; widths in multiples
  of 64 (llama.cpp's quantized rows need 32).

Each baseline is a ``SubnetConfig`` chosen for a target fraction of the full model's parameters: the
largest config (most layers / widest MLP) whose ``num_params`` does not exceed the target, so a
baseline is never compared at a size larger than the one asked for. Against a fine-tuned super-network
(``supernet_dir=``) the baselines get the same training, two ways: sliced from its weights (source
``supernet``), and, with ``recover=True``, pruned from the original model and then fine-tuned with the
super-network's own recorded budget (same data, steps, batch, learning rate; plain fine-tuning of the
pruned model, as LLM-Pruner's recovery does; source ``recovered``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from llamanas.config import digest
from llamanas.deploy.extract import extract
from llamanas.errors import LlamanasError
from llamanas.evaluation.evaluate import evaluate
from llamanas.evaluation.questions import Questions
from llamanas.evidence.args import ALL_METHODS, DEFAULT_WIDTH_MULTIPLE, METHODS, BaselineArgs
from llamanas.model.arch import Arch
from llamanas.model.device import dtype_name
from llamanas.model.load import resolve
from llamanas.supernet.blocks import block_influence, block_influence_per_block, drop_attention_blocks
from llamanas.supernet.elastic import SUPERNET_FILE, load_supernet, read_supernet_meta
from llamanas.supernet.importance import calibration_batches, calibration_texts
from llamanas.supernet.sensitivity import allocate, measure_sensitivity
from llamanas.supernet.subnet import SubnetConfig
from llamanas.tuning.args import TuneArgs
from llamanas.tuning.tune import finetune


def _check_target(target: float) -> float:
    if not 0 < target <= 1:
        raise LlamanasError(f"Target size fraction must lie in (0, 1]; got {target}.")
    return float(target)


def _budget(arch: Arch, target: float) -> int:
    return int(_check_target(target) * SubnetConfig.full(arch).num_params(arch))


def _too_small(method: str, target: float, smallest: SubnetConfig, arch: Arch) -> LlamanasError:
    frac = smallest.num_params(arch) / SubnetConfig.full(arch).num_params(arch)
    return LlamanasError(
        f"{method}: no sub-network fits {target:.0%} of the parameters; the smallest it can make has {frac:.1%}."
    )


def _keep(arch: Arch, layers: Sequence[int], mlp: int | None = None) -> SubnetConfig:
    n = len(layers)
    return SubnetConfig(tuple(layers), (mlp or arch.intermediate_size,) * n, (arch.num_kv_heads,) * n)


def depth_truncation(arch: Arch, target: float) -> SubnetConfig:
    """The first N layers at full width, with the largest N whose size is within the target."""
    budget = _budget(arch, target)
    for n in range(arch.num_layers, 0, -1):
        cfg = _keep(arch, range(n))
        if cfg.num_params(arch) <= budget:
            return cfg
    raise _too_small("depth", target, _keep(arch, [0]), arch)


def shortgpt(arch: Arch, block_influence: Sequence[float], target: float) -> SubnetConfig:
    """Remove layers in increasing order of Block Influence until the size is within the target."""
    if len(block_influence) != arch.num_layers:
        raise LlamanasError(
            f"Block influence has {len(block_influence)} values; the model has {arch.num_layers} layers."
        )
    budget = _budget(arch, target)
    # Stable order: ties drop the later layer first (later layers are the usual redundant ones).
    order = iter(sorted(range(arch.num_layers), key=lambda i: (block_influence[i], -i)))
    kept = list(range(arch.num_layers))
    while True:
        cfg = _keep(arch, kept)
        if cfg.num_params(arch) <= budget:
            return cfg
        if len(kept) == 1:
            raise _too_small("shortgpt", target, cfg, arch)
        kept.remove(next(order))


def drop_attention(arch: Arch, attention_influence: Sequence[float], target: float) -> SubnetConfig:
    """Skip attention blocks in increasing order of their Block Influence until the size is within the
    target (at least one attention block stays: the most influential one)."""
    if len(attention_influence) != arch.num_layers:
        raise LlamanasError(
            f"Attention influence has {len(attention_influence)} values; the model has {arch.num_layers} layers."
        )
    budget = _budget(arch, target)
    for k in range(arch.num_layers):  # k = attention blocks dropped (at most all but one)
        cfg = drop_attention_blocks(arch, attention_influence, k)
        if cfg.num_params(arch) <= budget:
            return cfg
    raise _too_small("attention", target, cfg, arch)


HIDDEN_MULTIPLE = 64


def hidden_slice(arch: Arch, target: float, multiple: int = HIDDEN_MULTIPLE) -> SubnetConfig:
    """Every layer whole, the residual stream cut to the widest multiple of ``multiple`` within the target."""
    full = SubnetConfig.full(arch)
    budget = _budget(arch, target)
    for h in [arch.hidden_size, *range((arch.hidden_size - 1) // multiple * multiple, 0, -multiple)]:
        cfg = SubnetConfig(full.layers, full.mlp, full.kv_groups, hidden=None if h == arch.hidden_size else h)
        if cfg.num_params(arch) <= budget:
            return cfg
    raise _too_small(
        "hidden", target, SubnetConfig(full.layers, full.mlp, full.kv_groups, hidden=multiple), arch
    )


def uniform_width(arch: Arch, target: float, multiple: int = DEFAULT_WIDTH_MULTIPLE) -> SubnetConfig:
    """Every layer kept, every MLP cut to the same width (a multiple of ``multiple``) within the target."""
    if multiple < 1:
        raise LlamanasError(f"Width multiple must be >= 1; got {multiple}.")
    budget = _budget(arch, target)
    layers = range(arch.num_layers)
    full = arch.intermediate_size
    widths = [full] + list(range((full - 1) // multiple * multiple, 0, -multiple))
    for m in widths:
        cfg = _keep(arch, layers, m)
        if cfg.num_params(arch) <= budget:
            return cfg
    raise _too_small("width", target, _keep(arch, layers, min(widths)), arch)


@dataclass
class BaselineSpec:
    """One baseline to evaluate: how it was made, at which target, and the resulting config."""

    method: str  # "base" | "depth" | "shortgpt" | "width" | "attention" | "sensitivity"
    target: float
    config: SubnetConfig | None
    source: str = "base"  # "base" (the model as given), "supernet" (sliced from it), "recovered"
    note: str = ""  # why there is no config (target too small)


def baseline_configs(
    arch: Arch,
    sizes: Sequence[float],
    bi: Sequence[float] | None,
    methods: Sequence[str] = METHODS,
    source: str = "base",
    width_multiple: int = DEFAULT_WIDTH_MULTIPLE,
    sensitivity=None,
    attention_influence: Sequence[float] | None = None,
) -> list[BaselineSpec]:
    """The full model plus each method at each size; infeasible ones carry a note instead of a config.

    ``sensitivity`` (a ``supernet.sensitivity.Sensitivity``) is what the ``sensitivity`` method allocates
    from; ``attention_influence`` (``block_influence_per_block(...)["attention"]``) the ``attention`` one.
    """
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise LlamanasError(f"Unknown baseline methods {unknown}. Allowed: {', '.join(ALL_METHODS)}.")
    specs = [BaselineSpec("base", 1.0, SubnetConfig.full(arch), source)]
    for target in sizes:
        _check_target(target)
        for method in methods:
            try:
                if method == "depth":
                    cfg = depth_truncation(arch, target)
                elif method == "shortgpt":
                    if bi is None:
                        raise LlamanasError("shortgpt needs block influence scores.")
                    cfg = shortgpt(arch, bi, target)
                elif method == "attention":
                    if attention_influence is None:
                        raise LlamanasError("attention needs per-block influence scores.")
                    cfg = drop_attention(arch, attention_influence, target)
                elif method == "sensitivity":
                    if sensitivity is None:
                        raise LlamanasError("sensitivity needs per-layer sensitivity scores.")
                    cfg = allocate(arch, sensitivity, target)
                elif method == "hidden":
                    cfg = hidden_slice(arch, target)
                else:
                    cfg = uniform_width(arch, target, width_multiple)
                specs.append(BaselineSpec(method, float(target), cfg, source))
            except LlamanasError as e:
                specs.append(BaselineSpec(method, float(target), None, source, note=str(e)))
    return specs


@dataclass
class BaselineResult:
    """A baseline after evaluation (``results``: task -> TaskResult.to_dict())."""

    method: str
    source: str
    target: float
    config: dict | None
    params: int | None
    fraction: float | None
    results: dict[str, dict] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def evaluated(
        cls, spec: BaselineSpec, arch: Arch, results: dict, source: str | None = None
    ) -> BaselineResult:
        """The row of ``spec`` (a config) evaluated with ``results`` (task -> TaskResult)."""
        params = spec.config.num_params(arch)
        full = SubnetConfig.full(arch).num_params(arch)
        return cls(
            spec.method,
            source or spec.source,
            spec.target,
            spec.config.to_dict(),
            params,
            params / full,
            {k: r.to_dict() for k, r in results.items()},
        )


@dataclass
class BaselineRun:
    """Everything ``llamanas baselines`` writes to ``baselines.json``."""

    model: str
    supernet: str | None
    tasks: list[str]
    split: str | None
    limit: int | None
    num_fewshot: int | None
    seed: int
    sizes: list[float]
    full_params: int
    block_influence: dict[str, list[float]]  # source -> per-layer BI
    rows: list[BaselineResult]
    dtype: str = "float32"  # the dtype the baselines were evaluated in
    sensitivity: dict[str, dict] = field(default_factory=dict)  # source -> Sensitivity.to_dict()
    importance: str = "rms"  # the score the base model's channels were ordered by
    compensate: bool = False  # bias compensation on the sliced baselines
    offset: int = 0  # the first ``offset`` items of the seeded order were skipped (``tasks.subset``)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BaselineRun:
        d = dict(d)
        d["rows"] = [BaselineResult(**r) for r in d.get("rows", [])]
        return cls(**d)


# Called before each baseline is evaluated: (baselines done, baselines in all, what comes next).
ProgressFn = Callable[[int, int, str], None]

PARTIAL_FILE = "baselines.partial.jsonl"


class PartialRows:
    """The rows an interrupted run finished, kept in OUT/baselines.partial.jsonl (a line per row, the first
    line the settings' digest) and re-used by the next run with the same settings; removed once
    baselines.json is written. Without an output folder nothing is kept."""

    def __init__(self, out: str | None, settings: dict):
        self.path = Path(out) / PARTIAL_FILE if out else None
        self.digest = digest(settings)
        self.rows: dict[tuple, BaselineResult] = {}
        if self.path is None:
            return
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        if lines and _json_or_none(lines[0]) == {"settings": self.digest}:
            for line in lines[1:]:
                d = _json_or_none(line)
                if d is None:  # a line cut short by the interruption
                    break
                row = BaselineResult(**d)
                self.rows[(row.source, row.method, row.target)] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as f:  # other settings' rows are dropped; this run's are written again
            f.write(json.dumps({"settings": self.digest}) + "\n")
            f.writelines(json.dumps(r.to_dict()) + "\n" for r in self.rows.values())

    def get(self, source: str, method: str, target: float | None) -> BaselineResult | None:
        return self.rows.get((source, method, target))

    def put(self, row: BaselineResult) -> None:
        self.rows[(row.source, row.method, row.target)] = row
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row.to_dict()) + "\n")

    def finish(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _label(source: str, spec: BaselineSpec) -> str:
    """What the progress line says of a baseline: 'base width at 80%', 'supernet full model'."""
    return f"{source} full model" if spec.method == "base" else f"{source} {spec.method} at {spec.target:.0%}"


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def evaluate_specs(
    supernet,
    tokenizer,
    specs: Sequence[BaselineSpec],
    tasks: Sequence[str],
    questions: Questions,
    partial: PartialRows | None = None,
    step: Callable[[str], None] | None = None,
) -> list[BaselineResult]:
    """Evaluate each spec's sub-network in place on the super-network (no weights copied); a row ``partial``
    already holds is re-used, a new one added to it. ``step(label)`` is called before each evaluated spec."""
    rows = []
    for spec in specs:
        if spec.config is None:
            rows.append(
                BaselineResult(spec.method, spec.source, spec.target, None, None, None, note=spec.note)
            )
            continue
        if step:
            step(_label(spec.source, spec))
        row = partial.get(spec.source, spec.method, spec.target) if partial else None
        if row is None:
            with supernet.subnet(spec.config):
                results = evaluate(supernet.model, tokenizer, list(tasks), questions)
            row = BaselineResult.evaluated(spec, supernet.arch, results)
            if partial:
                partial.put(row)
        rows.append(row)
    return rows


def evaluate_checkpoint(
    folder: Path,
    spec: BaselineSpec,
    arch: Arch,
    load: Callable,
    tasks: Sequence[str],
    questions: Questions,
) -> BaselineResult:
    """The row of a recovered baseline: its fine-tuned checkpoint loaded (``load(name)``) and evaluated."""
    tuned, tokenizer = load(str(folder))
    results = evaluate(tuned.model, tokenizer, list(tasks), questions)
    return BaselineResult.evaluated(spec, arch, results, source="recovered")


def run_baselines(args: BaselineArgs, progress: ProgressFn | None = None) -> BaselineRun:
    """Build and evaluate the baselines on ``args.model`` (and on ``args.supernet`` when given; ``recover``
    also fine-tunes each pruned model with the super-network's budget, in ``args.out/recovered``).

    Each model is loaded by ``load_supernet``, which orders the channels by importance (as the width
    baseline needs) with the ``importance`` score; ``compensate`` switches bias compensation on for every
    baseline. Rows finished by an interrupted run with the same settings are re-used (``PartialRows``);
    ``progress`` hears of each baseline before it is evaluated.
    """
    settings = {k: v for k, v in asdict(args).items() if k not in ("out", "device")}
    partial = PartialRows(args.out, settings)
    done, total = 0, 0

    def step(label: str) -> None:
        nonlocal done
        if progress:
            progress(done, total, label)
        done += 1

    tasks = list(args.tasks)
    tune_args = training_budget(args.supernet) if args.recover else None

    def load(name: str):
        return load_supernet(
            name,
            calibration=args.calibration,
            dtype=args.dtype,
            device=args.device,
            importance=args.importance,
            compensate=args.compensate,
            residual="hidden" in args.methods,  # the hidden baseline keeps the most important channels
        )

    sources = [("base", args.model)] + ([("supernet", args.supernet)] if args.supernet else [])
    rows: list[BaselineResult] = []
    bis: dict[str, list[float]] = {}
    sens_rows: dict[str, dict] = {}
    full_params, used_dtype = 0, "float32"
    for source, name in sources:
        supernet, tokenizer = load(name)
        if full_params and SubnetConfig.full(supernet.arch).num_params(supernet.arch) != full_params:
            raise LlamanasError(
                f"The super-network {name!r} does not have the shape of the model {args.model!r}."
            )
        full_params = SubnetConfig.full(supernet.arch).num_params(supernet.arch)
        used_dtype = dtype_name(next(supernet.model.parameters()).dtype)
        bi = sens = attn_bi = None
        if {"shortgpt", "sensitivity", "attention"} & set(args.methods):
            batches = calibration_batches(
                tokenizer, calibration_texts(args.calibration), args.calibration_samples, args.seq_len
            )
            supernet.reset()
        if "shortgpt" in args.methods:
            bi = block_influence(supernet.model, batches)
            bis[source] = bi
        if "attention" in args.methods:
            attn_bi = block_influence_per_block(supernet.model, batches)["attention"]
            bis[f"{source}:attention"] = attn_bi
        if "sensitivity" in args.methods:
            sens = measure_sensitivity(supernet, batches)
            sens_rows[source] = sens.to_dict()
        specs = baseline_configs(
            supernet.arch, args.sizes, bi, args.methods, source, args.width_multiple, sens, attn_bi
        )
        if not total:  # every source has the same baselines; recover adds one per evaluated baseline
            n = sum(s.config is not None for s in specs)
            total = n * len(sources) + (n if tune_args is not None else 0)
        rows += evaluate_specs(supernet, tokenizer, specs, tasks, args.questions, partial, step)
        if source == "base" and tune_args is not None:
            recovered = Path(args.out) / "recovered"
            for spec in (s for s in specs if s.config is not None):
                step(_label("recovered", spec))
                tuned = recover_baseline(supernet, tokenizer, spec, tune_args, recovered)
                rows.append(evaluate_checkpoint(tuned, spec, supernet.arch, load, tasks, args.questions))
        del supernet
    if progress:
        progress(done, total, "done")
    run = BaselineRun(
        model=args.model,
        supernet=args.supernet,
        tasks=tasks,
        **args.questions.to_dict(),
        sizes=list(args.sizes),
        full_params=full_params,
        block_influence=bis,
        rows=rows,
        dtype=used_dtype,
        sensitivity=sens_rows,
        importance=args.importance,
        compensate=args.compensate,
    )
    if args.out is not None:
        write_baselines(run, args.out)
        partial.finish()
    return run


def training_budget(supernet_dir: str):
    """The ``TuneArgs`` a super-network folder was fine-tuned with (its ``llamanas_supernet.json``)."""
    training = read_supernet_meta(resolve(supernet_dir)).get("training")
    if not training or "args" not in training:
        raise LlamanasError(
            f"{supernet_dir!r} has no fine-tuning record ({SUPERNET_FILE} 'training'); recover needs a "
            "super-network written by `llamanas finetune`."
        )
    return TuneArgs.from_dict(training["args"])


def recover_baseline(supernet, tokenizer, spec: BaselineSpec, tune_args, work: Path) -> Path:
    """Extract ``spec``'s pruned model and fine-tune it (plain, full network) with ``tune_args``'s budget.

    Returns the fine-tuned folder; a finished one is reused, an interrupted one resumed (``finetune``).
    """
    name = "base" if spec.method == "base" else f"{spec.method}-{spec.target:g}"
    pruned, tuned = work / name / "pruned", work / name / "tuned"
    if not (pruned / "config.json").is_file():
        extract(
            supernet,
            spec.config,
            pruned,
            tokenizer,
            metadata={"baseline": spec.method, "target": spec.target},
        )
    args = replace(
        tune_args,
        model=str(pruned),
        out=str(tuned),
        space=None,
        strategy="full",
        schedule="uniform",
        distill=False,
        calibration=tune_args.calibration or tune_args.data,
    )
    finetune(args, progress=False)
    return tuned


BASELINES_FILE = "baselines.json"


def write_baselines(run: BaselineRun, out_dir: str | Path) -> Path:
    """``baselines.json`` (everything) and ``baselines.csv`` (one row per baseline, one column per metric)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / BASELINES_FILE).write_text(json.dumps(run.to_dict(), indent=2))
    metric_cols: list[str] = []
    for r in run.rows:
        for task, res in r.results.items():
            for metric in res.get("metrics", {}):
                for col in (f"{task}/{metric}", f"{task}/{metric}_stderr"):
                    if col not in metric_cols:
                        metric_cols.append(col)
    head = ["source", "method", "target", "params", "fraction", "depth", "mlp", "layers", "note"]
    with open(out / "baselines.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head + metric_cols)
        for r in run.rows:
            cfg = r.config or {}
            vals: dict[str, object] = {}
            for task, res in r.results.items():
                for metric, v in res.get("metrics", {}).items():
                    vals[f"{task}/{metric}"] = v
                    vals[f"{task}/{metric}_stderr"] = res.get("stderr", {}).get(metric, "")
            mlp = sorted(set(cfg.get("mlp", [])))
            w.writerow(
                [
                    r.source,
                    r.method,
                    r.target,
                    r.params if r.params is not None else "",
                    f"{r.fraction:.6f}" if r.fraction is not None else "",
                    len(cfg.get("layers", [])) or "",
                    mlp[0] if len(mlp) == 1 else " ".join(map(str, mlp)),
                    " ".join(map(str, cfg.get("layers", []))),
                    r.note,
                ]
                + [vals.get(c, "") for c in metric_cols]
            )
    return out / BASELINES_FILE


def read_baselines(path: str | Path) -> BaselineRun:
    """Read ``baselines.json`` from a folder or the file itself."""
    p = Path(path)
    if p.is_dir():
        p = p / BASELINES_FILE
    if not p.is_file():
        raise LlamanasError(f"No baselines file at {str(path)!r} (expected {BASELINES_FILE}).")
    return BaselineRun.from_dict(json.loads(p.read_text()))
