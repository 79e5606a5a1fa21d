"""Search objectives and constraints, as data: what is measured, which way is better, and its range.

An objective is referred to by name (``accuracy``, ``params``, ``acc_norm:arc_easy``...), never by
position. Whether it is minimised or maximised is a property of the objective, not the user's choice.
Every evaluation stores raw *values* under fixed keys (``acc:<task>``, ``acc_norm:<task>``,
``gold_nll:<task>``, ``n:<task>``, ``params``, ``bytes``, ``macs``, ``latency``, ``throughput``); an
objective is a mean over some of those keys, so several runs with different objectives can share one
store of evaluations.

``search.counts.Counts`` computes the analytic sizes (params, bytes, MACs) of integer-encoded configs;
an objective of source COUNT reads its value from there.

``latency`` and ``throughput`` are timed in the loop (``--runtime hf``), or, with ``--runtime llamacpp``,
computed like counts from a latency table of llama.cpp on this CPU (``search.latency``; source MODEL).

Hypervolume uses fixed per-objective bounds (best, worst) derived from the space and the evaluation, not
from the data seen, so numbers are comparable across runs and algorithms: accuracy in [1, 0], params
between the smallest and the largest sub-network, gold NLL between 0 and the NLL of a uniform guess over
the vocabulary, latency between 0 and the largest sub-network's. A task objective's direction, unit and
range are its metric's (``evaluation.metrics.METRICS``), not kept here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from moocore import hypervolume as _hv

from llamanas.errors import LlamanasError, unknown
from llamanas.evaluation.metrics import get_metric
from llamanas.search.counts import Counts

MIN, MAX = "min", "max"
TASK, COUNT, TIMING = "task", "count", "timing"  # where a value comes from
MODEL = "model"  # a TIMING objective under --runtime llamacpp: exact from the config and a latency table


@dataclass(frozen=True)
class Kind:
    """A registry entry: one objective family."""

    direction: str  # MIN or MAX
    source: str  # TASK (evaluator, per task), COUNT (exact from the config), TIMING (measured, or MODEL)
    unit: str
    help: str
    metric: str | None = None  # TASK only: the per-task metric averaged over --tasks


def _task_kind(metric: str, help: str) -> Kind:
    """A TASK objective: the mean of a task metric, with that metric's direction and unit."""
    m = get_metric(metric)
    return Kind(MAX if m.higher_is_better else MIN, TASK, m.unit, help, metric)


# Adding an objective is adding a row here (and producing its value key in workers.py).
KINDS: dict[str, Kind] = {
    "accuracy": _task_kind("acc", "mean accuracy (acc) over --tasks"),
    "acc_norm": _task_kind("acc_norm", "mean length-normalised accuracy over --tasks"),
    "gold_nll": _task_kind("gold_nll", "mean negative log-likelihood of the gold answers (smooth proxy)"),
    "params": Kind(MIN, COUNT, "", "parameters of the extracted sub-network"),
    "bytes": Kind(
        MIN,
        COUNT,
        "B",
        "weight bytes at the run's dtype (stored bytes at each layer's bits with a 'bits' space)",
    ),
    "macs": Kind(MIN, COUNT, "", "multiply-accumulates per token"),
    "kv_bytes": Kind(
        MIN,
        COUNT,
        "B",
        "KV-cache bytes per token of context (16-bit keys and values of each attention block)",
    ),
    "latency": Kind(
        MIN,
        TIMING,
        "ms",
        "prefill latency of the extracted sub-network (measured; with --runtime llamacpp, the llama.cpp "
        "prefill time from the latency table)",
    ),
    "throughput": Kind(
        MAX,
        TIMING,
        "tok/s",
        "generation throughput of the extracted sub-network (measured; with --runtime llamacpp, the "
        "llama.cpp decode speed from the latency table)",
    ),
}
# Per-task variants "<metric>:<task>" use the direction of the aggregate with that metric.
PER_TASK = {k.metric: name for name, k in KINDS.items() if k.source == TASK}


@dataclass(frozen=True)
class Objective:
    """A resolved objective: ``value`` is the mean of ``keys`` in an evaluation's values."""

    name: str
    direction: str
    source: str
    keys: tuple[str, ...]
    unit: str = ""

    @property
    def sign(self) -> float:
        """Multiply by this to turn the objective into one to minimise."""
        return 1.0 if self.direction == MIN else -1.0

    @property
    def analytic(self) -> bool:
        """Computed from the config (counts, or a latency table), never measured nor predicted."""
        return self.source in (COUNT, MODEL)

    @property
    def metric(self) -> str:
        return self.keys[0].split(":", 1)[0]

    def value(self, values: dict[str, float]) -> float:
        missing = [k for k in self.keys if k not in values]
        if missing:
            raise LlamanasError(
                f"Objective {self.name!r} needs the measured values {missing}; this evaluation has "
                f"{sorted(values)}."
            )
        return float(np.mean([values[k] for k in self.keys]))

    def to_dict(self) -> dict:
        return {"name": self.name, "direction": self.direction, "source": self.source, "unit": self.unit}


def available(tasks: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Every objective name valid for these tasks (for error messages and help)."""
    return list(KINDS) + [f"{m}:{t}" for t in tasks for m in PER_TASK]


RUNTIMES = ("hf", "llamacpp")  # where TIMING objectives come from: timed in the loop, or a latency table


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise unknown("runtime", runtime, RUNTIMES)


def get(name: str, tasks: tuple[str, ...] | list[str] = (), runtime: str = "hf") -> Objective:
    """Resolve an objective name against the run's tasks; with ``runtime="llamacpp"`` the TIMING
    objectives come from a latency table (source MODEL, analytic) instead of timing."""
    name = name.strip()
    tasks = tuple(tasks)
    check_runtime(runtime)
    if name in KINDS:
        k = KINDS[name]
        if k.source == TASK:
            if not tasks:
                raise LlamanasError(f"Objective {name!r} needs at least one task (--tasks).")
            keys = tuple(f"{k.metric}:{t}" for t in tasks)
        else:
            keys = (name,)
        source = MODEL if k.source == TIMING and runtime != "hf" else k.source
        return Objective(name, k.direction, source, keys, k.unit)
    metric, sep, task = name.partition(":")
    if sep and metric in PER_TASK:
        if task not in tasks:
            raise LlamanasError(
                f"Objective {name!r} names task {task!r}, which is not in --tasks ({', '.join(tasks) or 'none'})."
            )
        k = KINDS[PER_TASK[metric]]
        return Objective(name, k.direction, TASK, (name,), k.unit)
    raise unknown("objective", name, available(tasks))


def resolve(
    names: list[str] | tuple[str, ...], tasks: tuple[str, ...] | list[str] = (), runtime: str = "hf"
) -> list[Objective]:
    """Objectives in the user's order; duplicates and an empty list are errors."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise LlamanasError(f"Give at least one objective; available: {', '.join(available(tasks))}.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LlamanasError(f"Objectives {dup} are listed more than once.")
    return [get(n, tasks, runtime) for n in names]


# ------------------------------------------------------------------------------------------------------
# Constraints
# ------------------------------------------------------------------------------------------------------

UNITS = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "%": 0.01}
OPS = ("<=", ">=", "<", ">")
_CONSTRAINT = re.compile(
    r"^\s*([A-Za-z_][\w.:-]*)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z%]?)\s*$"
)


@dataclass(frozen=True)
class Constraint:
    """``objective op bound``, e.g. ``params<=100M``; ``violation <= 0`` means satisfied (pymoo's G)."""

    objective: Objective
    op: str
    bound: float
    text: str

    def violation(self, v):
        """Positive when violated (works on arrays)."""
        return v - self.bound if self.op in ("<=", "<") else self.bound - v

    def satisfied(self, v) -> bool:
        return bool(
            {"<=": v <= self.bound, "<": v < self.bound, ">=": v >= self.bound, ">": v > self.bound}[self.op]
        )

    def to_dict(self) -> dict:
        return {"text": self.text, "objective": self.objective.name, "op": self.op, "bound": self.bound}


def parse_constraint(text: str, tasks: tuple[str, ...] | list[str] = (), runtime: str = "hf") -> Constraint:
    """Parse ``name<=value[unit]`` (units K, M, B/G, %), e.g. ``params<=100M``, ``accuracy>=40%``."""
    m = _CONSTRAINT.match(text)
    if not m:
        raise LlamanasError(
            f"Cannot parse constraint {text!r}; expected NAME OP VALUE[UNIT] with OP in {', '.join(OPS)} "
            f"and UNIT in K, M, B, G, % (e.g. 'params<=100M', 'accuracy>=0.4')."
        )
    name, op, num, unit = m.groups()
    if unit not in UNITS:
        raise LlamanasError(f"Constraint {text!r}: unknown unit {unit!r}; allowed: K, M, B (or G) and %.")
    return Constraint(get(name, tasks, runtime), op, float(num) * UNITS[unit], text.strip())


def value_range(obj: Objective, counts: Counts | None) -> tuple[float, float]:
    """The smallest and largest value ``obj`` can take (inf where unknown before measuring)."""
    if obj.analytic:
        if counts is None:
            raise LlamanasError(f"Objective {obj.name!r} needs the search space to know its range.")
        return counts.range(obj.name)
    if obj.source == TASK:
        return get_metric(obj.metric).range
    return 0.0, math.inf


def check_feasible(constraints: list[Constraint], counts: Counts | None) -> None:
    """Raise if a constraint cannot be met by any config of the space (e.g. params below the smallest)."""
    for c in constraints:
        lo, hi = value_range(c.objective, counts)
        impossible = {
            "<=": c.bound < lo,
            "<": c.bound <= lo,
            ">=": c.bound > hi,
            ">": c.bound >= hi,
        }[c.op]
        if impossible:
            raise LlamanasError(
                f"Constraint {c.text!r} cannot be met: {c.objective.name} ranges from {_fmt(lo)} to "
                f"{_fmt(hi)} in this search space."
            )


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 and math.isfinite(v) else f"{v:g}"


# ------------------------------------------------------------------------------------------------------
# Pareto fronts and hypervolume
# ------------------------------------------------------------------------------------------------------


def bounds(
    obj: Objective, counts: Counts | None, reference: dict[str, tuple[float, float]] | None = None
) -> tuple[float, float]:
    """(best, worst) used to normalise ``obj`` for hypervolume: fixed by the space and the evaluation.

    ``reference`` comes from the evaluator (``Evaluator.reference``): per value key, a (low, high) pair,
    e.g. ``gold_nll:arc_easy`` -> (0, NLL of a uniform guess), ``latency`` -> (0, largest's latency).
    """
    if obj.analytic:
        lo, hi = value_range(obj, counts)
    elif obj.source == TASK and get_metric(obj.metric).bounded:
        lo, hi = get_metric(obj.metric).range
    else:
        reference = reference or {}
        missing = [k for k in obj.keys if k not in reference]
        if missing:
            raise LlamanasError(
                f"Objective {obj.name!r} has no reference range for {missing}; the evaluator gave "
                f"{sorted(reference)}."
            )
        lo = float(np.mean([reference[k][0] for k in obj.keys]))
        hi = float(np.mean([reference[k][1] for k in obj.keys]))
    if not hi > lo:
        raise LlamanasError(f"Objective {obj.name!r} has an empty range [{lo}, {hi}] for the hypervolume.")
    return (lo, hi) if obj.direction == MIN else (hi, lo)


def normalise(F: np.ndarray, objective_bounds: list[tuple[float, float]]) -> np.ndarray:
    """Raw objective values (n, k) -> 0 at the best bound, 1 at the worst, for every objective."""
    F = np.atleast_2d(np.asarray(F, dtype=float))
    best = np.array([b for b, _ in objective_bounds])
    worst = np.array([w for _, w in objective_bounds])
    return (F - best) / (worst - best)


def pareto_mask(F: np.ndarray) -> np.ndarray:
    """Non-dominated rows of F (all objectives minimised); among equal rows only the first is kept."""
    F = np.atleast_2d(np.asarray(F, dtype=float))
    n = len(F)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        if not keep[i]:
            continue
        dominated = np.all(F[i] <= F, axis=1) & np.any(F[i] < F, axis=1)
        keep &= ~dominated
        same = np.all(F[i] == F, axis=1)
        same[: i + 1] = False
        keep &= ~same
    return keep


def hypervolume(Fn: np.ndarray) -> float:
    """Hypervolume of normalised points (minimised) w.r.t. the reference point (1, ..., 1)."""
    Fn = np.atleast_2d(np.asarray(Fn, dtype=float))
    if Fn.size == 0:
        return 0.0
    Fn = Fn[np.all(Fn < 1.0, axis=1)]
    if len(Fn) == 0:
        return 0.0
    return float(_hv(Fn, ref=np.ones(Fn.shape[1])))
