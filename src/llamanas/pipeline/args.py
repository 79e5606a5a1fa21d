"""What ``llamanas compress`` makes (``CompressArgs``) and on which questions it selects, confirms and reports.

The three question sets are disjoint by construction: selection and confirmation on the validation split
(the confirmation after the selected questions in the same seeded order), the report on the test split
where a task has one with answers, else on the validation questions after both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from llamanas.config import check_above, check_at_least, from_dict_strict, resumable
from llamanas.errors import LlamanasError
from llamanas.evaluation.questions import Questions
from llamanas.evaluation.tasks import get_task, resolve_tasks
from llamanas.pipeline.pick import PICK_TOLERANCE
from llamanas.search import objectives as objmod
from llamanas.search.warm_start import WARM_START_WINDOWS

TARGET_OBJECTIVES = ("params", "bytes", "macs", "kv_bytes", "latency", "throughput")


@dataclass(frozen=True)
class CompressArgs:
    """What ``llamanas compress`` makes; saved in ``OUT/compress.json`` and checked when a run resumes."""

    model: str = "default"
    """'default' (SmolLM2-135M-Instruct, offline), a local HF model folder or a hub id."""
    tasks: tuple[str, ...] = ("arc_easy",)
    """Tasks the compressed model must stay accurate on (choose ones with signal on your model)."""
    target: str = "0.8"
    """What the compressed model must meet: a fraction of the model's parameters (0.8), or a constraint on
    a size or speed objective: 'params<=100M', 'bytes<=200M', 'throughput>=120' (llama.cpp decode tokens/s
    on this CPU, predicted by a latency table built first), 'latency<=50' (llama.cpp prefill ms)."""
    evaluations: int = 24
    """Real evaluations of the search (its budget)."""
    minutes: float | None = resumable(None)
    """A time budget for the search stage as well (its sensitivity warm start included): no new batch of
    evaluations starts after it. The rest (confirmation, extraction, GGUF, evaluation, timing) comes after."""
    population: int = 8
    """LINAS batch: the first population and the sub-networks evaluated per loop."""
    select_limit: int = 100
    """Questions per task the search selects on (a seeded subset of the validation split)."""
    confirm: int = 4
    """Candidates re-scored on more validation questions before the pick: the most accurate feasible ones on
    the selection questions, plus the warm start's seeds that meet the target (0: pick on the selection)."""
    confirm_limit: int = 400
    """Validation questions per task the candidates are re-scored on, after the selection ones (disjoint)."""
    pick_tolerance: float = PICK_TOLERANCE
    """The pick: the largest candidate within this many paired standard errors of the most accurate one on
    the confirmation questions (0: the most accurate; see pipeline/pick.py for how it was chosen)."""
    report_limit: int = 500
    """Questions per task the model card reports on: disjoint from the selection ones (the test split where
    the task has one with answers, else the rest of the validation split)."""
    warm_start_windows: int = WARM_START_WINDOWS
    """Calibration windows of 128 tokens for the sensitivity warm start (16: about 5 minutes on the default
    model on 2 CPU cores; fewer is faster and a noisier ranking)."""
    timing_rounds: int = 3
    """llama.cpp timing rounds of base and compressed model, alternately (0: no timing)."""
    seed: int = 0
    """Seed of the search and of the question subsets."""
    out: str = resumable("compressed")
    """Output folder; re-running the same command resumes there."""
    dtype: str = "auto"
    """auto (float32 on the CPU below 1B parameters, bfloat16 on a GPU) | bfloat16 | float16 | float32."""
    device: str = resumable("auto")
    """auto (CUDA if present, else cpu) | cpu | cuda | cuda:N."""

    def __post_init__(self):
        object.__setattr__(self, "tasks", (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks))
        if not self.tasks:
            raise LlamanasError("--tasks needs at least one task, e.g. --tasks arc_easy.")
        resolve_tasks(list(self.tasks))  # an unknown task fails here, before anything loads
        object.__setattr__(self, "target", str(self.target).strip())
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise LlamanasError(
                f"--target must be a fraction of the parameters in (0, 1); got {self.target}."
            )
        if self.fraction is None and self.constraint(0).objective.name not in TARGET_OBJECTIVES:
            raise LlamanasError(
                f"--target {self.target!r} constrains {self.constraint(0).objective.name}, which the search "
                f"maximises; give a fraction of the parameters or a size or speed: {', '.join(TARGET_OBJECTIVES)}."
            )
        check_at_least(
            ("--evaluations", self.evaluations, 2),
            ("--population", self.population, 2),
            ("--select-limit", self.select_limit, 1),
            ("--report-limit", self.report_limit, 1),
            ("--confirm", self.confirm, 0),
            ("--confirm-limit", self.confirm_limit, 1),
            ("--pick-tolerance", self.pick_tolerance, 0),
            ("--timing-rounds", self.timing_rounds, 0),
            ("--warm-start-windows", self.warm_start_windows, 1),
        )
        check_above(("--minutes", self.minutes, 0))

    @property
    def fraction(self) -> float | None:
        """The target as a fraction of the parameters, or None for a constraint target."""
        try:
            return float(self.target)
        except ValueError:
            return None

    def constraint(self, base_params: int) -> objmod.Constraint:
        """The target as the search's constraint (a fraction becomes ``params<=N``)."""
        text = self.target if self.fraction is None else f"params<={int(self.fraction * base_params)}"
        return objmod.parse_constraint(text, self.tasks, "llamacpp")

    def target_text(self, base_params: int) -> str:
        """The target in words, e.g. "<= 80% of 134,515,008 parameters" or "throughput>=120"."""
        if self.fraction is None:
            return self.target
        return f"<= {self.fraction:.0%} of {base_params:,} parameters"

    @property
    def timed(self) -> bool:
        """Whether the target is a llama.cpp speed, predicted by a latency table during the search."""
        return self.fraction is None and self.constraint(0).objective.source != objmod.COUNT

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CompressArgs:
        return from_dict_strict(cls, d, "compress settings")

    def command(self) -> str:
        """The ``llamanas compress`` command line that makes this (flags that differ from the defaults)."""
        default = CompressArgs()
        parts = ["llamanas compress"]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in ("model", "tasks", "target", "out") and v == getattr(default, f.name):
                continue
            v = ",".join(v) if isinstance(v, tuple) else v
            parts.append(f"--{f.name.replace('_', '-')} {v}")
        return " ".join(parts)


def selection_questions(args: CompressArgs) -> Questions:
    """What the search selects on: the validation split where every task has one, else the default split."""
    split = "validation" if all(get_task(t).validation_split for t in task_leaves(args)) else None
    return Questions(split=split, limit=args.select_limit, seed=args.seed)


def confirm_questions(args: CompressArgs) -> Questions:
    """Where the candidates are re-scored: the same split as the selection, the questions after it."""
    select = selection_questions(args)
    return Questions(split=select.split, limit=args.confirm_limit, seed=args.seed, offset=args.select_limit)


def report_questions(args: CompressArgs, task: str) -> Questions:
    """What the card reports on for ``task``: disjoint from the selection and confirmation questions by
    construction (another split, or the questions after both in the same seeded order)."""
    spec = get_task(task)
    select = selection_questions(args)
    selected_split = select.split or spec.default_split
    if spec.test_split and spec.test_split != selected_split:
        return Questions(split=spec.test_split, limit=args.report_limit, seed=args.seed)
    used = args.select_limit + (args.confirm_limit if args.confirm else 0)
    return Questions(split=selected_split, limit=args.report_limit, seed=args.seed, offset=used)


def task_leaves(args: CompressArgs) -> list[str]:
    return resolve_tasks(list(args.tasks))[0]
