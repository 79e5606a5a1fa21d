"""Search objectives and constraints, as data: what is measured, which way is better, and its range.

An objective is referred to by name (``accuracy``, ``params``, ``acc_norm:arc_easy``...), never by
position. Whether it is minimised or maximised is a property of the objective, not the user's choice.
Every evaluation stores raw *values* under fixed keys (``acc:<task>``, ``acc_norm:<task>``,
``gold_nll:<task>``, ``n:<task>``, ``params``, ``bytes``, ``macs``, ``latency``, ``throughput``); an
objective is a mean over some of those keys, so several runs with different objectives can share one
store of evaluations.

``Counts`` computes the analytic sizes (params, bytes, MACs) of many integer-encoded configs at once
with per-layer lookup tables, so the inner LINAS search never predicts what it can compute exactly.

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
from llamanas.supernet.precision import fixed_bytes, layer_bytes, policy_bytes
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig, layer_macs

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
# Exact sizes of integer-encoded configs, vectorised
# ------------------------------------------------------------------------------------------------------


class Counts:
    """Params, bytes and MACs per token of configs given as integer vectors (rows of X), exactly.

    Both are a constant (embeddings, LM head, final norm) plus a per-kept-layer cost that depends on the
    layer's MLP and KV choice, so one table lookup per layer does it; ``keep`` gives the kept layers.
    Bytes are ``params x dtype_bytes``, except in a space with precision genes (``bits``), where they are
    the stored bytes at each layer's precision (``quantize.policy_bytes``: 16-bit where not quantized).

    With a latency table (``search.latency.LatencyTable``, ``--runtime llamacpp``) it also gives
    ``latency`` (predicted prefill ms) and ``throughput`` (predicted decode tokens/s), the same way: a
    fixed time plus a per-kept-layer time looked up by the layer's widths and precision.
    """

    NAMES = ("params", "bytes", "macs", "kv_bytes")
    SPEED = ("latency", "throughput")

    def __init__(self, space: SearchSpace, dtype_bytes: int = 4, seq_len: int = 128, latency_table=None):
        self.space, self.dtype_bytes, self.seq_len = space, dtype_bytes, seq_len
        self.latency_table = latency_table
        self.speed_base: dict[str, float] = {}
        self.speed_tables: dict[str, np.ndarray] = {}
        if latency_table is not None:
            self.speed_base, self.speed_tables = latency_table.layer_costs(space)
        a = space.arch
        self.n_layers = a.num_layers
        self.mlp_max = np.array([len(m) - 1 for m in space.mlp_choices])
        self.kv_max = np.array([len(k) - 1 for k in space.kv_choices])
        cm, ck = int(self.mlp_max.max()) + 1, int(self.kv_max.max()) + 1
        # table[name][layer, mlp index, kv index] = that layer's cost; unused cells stay 0.
        self.tables = {n: np.zeros((a.num_layers, cm, ck)) for n in ("params", "macs", "kv_bytes")}
        # ok[layer, mlp index, kv index]: a cell a kept layer can be in (not both blocks skipped).
        self.ok = np.zeros((a.num_layers, cm, ck), dtype=bool)
        # A (0, 0) cell (both blocks skipped) costs 0: such a layer is not kept (``space.kept``).
        for i in range(a.num_layers):
            for j, m in enumerate(space.mlp_choices[i]):
                for k, g in enumerate(space.kv_choices[i]):
                    self.ok[i, j, k] = m > 0 or g > 0
                    self.tables["params"][i, j, k] = a.layer_params(m, g)
                    self.tables["macs"][i, j, k] = layer_macs(a, m, g, seq_len)
                    self.tables["kv_bytes"][i, j, k] = a.kv_bytes_per_token(g)
        # The constant part: embeddings (+ untied head) and the final norm; the LM head's MACs.
        self.base = {
            "params": float(a.fixed_params()),
            "macs": float(a.vocab_size * a.hidden_size),
            "kv_bytes": 0.0,
        }
        # bytes[layer, mlp index, kv index, bits index]; one bits slot when the space has no precision genes.
        self.bits_max = np.array([len(b) - 1 for b in space.bits_choices], dtype=int)
        if space.bits_choices:
            cb = int(self.bits_max.max()) + 1
            self.tables["bytes"] = np.zeros((a.num_layers, cm, ck, cb))
            for i in range(a.num_layers):
                for j, m in enumerate(space.mlp_choices[i]):
                    for k, g in enumerate(space.kv_choices[i]):
                        for b, bits in enumerate(space.bits_choices[i]):
                            self.tables["bytes"][i, j, k, b] = layer_bytes(a, m, g, bits)
            self.base["bytes"] = float(fixed_bytes(a))
        else:
            self.tables["bytes"] = (self.tables["params"] * dtype_bytes)[..., None]
            self.base["bytes"] = self.base["params"] * dtype_bytes
        self.depths = np.array(sorted(space.depth_choices)) if space.mode == "first_n" else None

    def keep(self, X: np.ndarray) -> np.ndarray:
        """(n, layers) bool: which layers each (repaired) row keeps."""
        return self.space.kept(np.atleast_2d(X))

    def widths(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mlp choice index, kv choice index), each (n, layers)."""
        genes = self.space.split_genes(np.atleast_2d(X))
        return genes["mlp"], genes["kv"]

    def bits(self, X: np.ndarray) -> np.ndarray:
        """(n, layers) precision choice index (all 0 in a space without precision genes)."""
        X = np.atleast_2d(X)
        if not self.space.bits_choices:
            return np.zeros((X.shape[0], self.n_layers), dtype=int)
        return self.space.split_genes(X)["bits"]

    def __call__(self, X: np.ndarray) -> dict[str, np.ndarray]:
        keep = self.keep(X)
        mi, ki = self.widths(X)
        layer = np.arange(self.n_layers)[None, :]
        out = {}
        for name in ("params", "macs", "kv_bytes"):
            per_layer = self.tables[name][layer, mi, ki]
            out[name] = self.base[name] + (per_layer * keep).sum(axis=1)
        bi = self.bits(X)
        per_layer = self.tables["bytes"][layer, mi, ki, bi]
        out["bytes"] = self.base["bytes"] + (per_layer * keep).sum(axis=1)
        if self.latency_table is not None:
            ms = {
                t: self.speed_base[t] + (table[layer, mi, ki, bi] * keep).sum(axis=1)
                for t, table in self.speed_tables.items()
            }
            out["latency"] = ms["prefill_ms"]
            out["throughput"] = 1000.0 / ms["decode_ms"]
        return out

    @property
    def names(self) -> tuple[str, ...]:
        """The values this instance computes."""
        return self.NAMES + (self.SPEED if self.latency_table is not None else ())

    def of(self, cfg: SubnetConfig) -> dict[str, float]:
        """The exact counts of one config (the values stored with every evaluation)."""
        a = self.space.arch
        params = cfg.num_params(a)
        size = float(policy_bytes(a, cfg)) if self.space.bits_choices else float(params * self.dtype_bytes)
        out = {
            "params": float(params),
            "bytes": size,
            "macs": float(cfg.macs_per_token(a, self.seq_len)),
            "kv_bytes": float(cfg.kv_bytes(a)),
        }
        if self.latency_table is not None:
            out.update(self.latency_table.values(cfg))
        return out

    def range(self, name: str) -> tuple[float, float]:
        """(smallest, largest) value of a count over the whole space (costs grow with every choice)."""
        if name in self.SPEED and self.latency_table is not None:
            return self._speed_range(name)
        if name not in self.NAMES:
            if name in self.SPEED:
                raise LlamanasError(
                    f"{name!r} is computed only with a latency table (--runtime llamacpp --latency-table)."
                )
            raise unknown("count", name, self.NAMES)
        table = self.tables[name]
        lo_cost = np.array([self._valid(table, i).min() for i in range(self.n_layers)])
        hi_cost = np.array([self._valid(table, i).max() for i in range(self.n_layers)])
        return self._extremes(self.base[name], lo_cost, hi_cost)

    def _speed_range(self, name: str) -> tuple[float, float]:
        """Range of ``latency`` (prefill ms) or ``throughput`` (1000 / decode ms) under the latency table:
        per layer the cheapest and dearest cell combination (layer costs are never negative)."""
        target = "prefill_ms" if name == "latency" else "decode_ms"
        table = self.speed_tables[target]
        lo_cost = np.array([self._valid(table, i).min() for i in range(self.n_layers)])
        hi_cost = np.array([self._valid(table, i).max() for i in range(self.n_layers)])
        lo, hi = self._extremes(self.speed_base[target], lo_cost, hi_cost)
        return (lo, hi) if name == "latency" else (1000.0 / hi, 1000.0 / lo)

    def _valid(self, table: np.ndarray, i: int) -> np.ndarray:
        """Layer ``i``'s cells a kept layer can be in (flattened): its choices, not both blocks skipped."""
        ok = self.ok[i, : self.mlp_max[i] + 1, : self.kv_max[i] + 1]
        cells = table[i, : self.mlp_max[i] + 1, : self.kv_max[i] + 1]
        if cells.ndim == 3:  # bytes and speed tables have a bits axis
            nb = int(self.bits_max[i]) + 1 if len(self.bits_max) else 1
            return cells[..., :nb][ok].ravel()
        return cells[ok]

    def _extremes(self, base: float, lo_cost: np.ndarray, hi_cost: np.ndarray) -> tuple[float, float]:
        sp = self.space
        if self.depths is not None:
            lo = base + min(lo_cost[:d].sum() for d in self.depths)
            hi = base + max(hi_cost[:d].sum() for d in self.depths)
        else:
            forced = list(sp.always_keep)
            rest = sorted((c, i) for i, c in enumerate(lo_cost) if i not in forced)
            need = max(0, sp.min_depth - len(forced))
            lo = base + lo_cost[forced].sum() + sum(c for c, _ in rest[:need])
            hi = base + hi_cost.sum()
        return float(lo), float(hi)


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
