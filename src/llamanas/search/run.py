"""Multi-objective sub-network search: random, NSGA-II on real evaluations, and LINAS.

LINAS (lightweight iterative NAS, as in the LLaMA-NAS paper and DyNAS-T): start from a random
population; then loop: evaluate the population for real, fit one light predictor per measured objective
on every real evaluation so far, run NSGA-II for many generations on the predictors (cheap; exact
counts such as params are computed, never predicted), and evaluate a batch chosen from its final
population. Unlike the reference code, a real evaluation is never spent twice on one sub-network (dedupe by
decoded config, also against the store), and the batch is chosen to spread along the front: greedy
predicted hypervolume gain over the real front and the configs already chosen, then predicted fronts in
greedy max-min distance order; random new configs fill what is left.

Resuming is replay: every batch is a deterministic function of the seed and the evaluations before it,
so a restarted run recomputes its batches and finds the configs it already evaluated in the store (the
store commits each evaluation as it finishes). ``Trajectory`` is the run's ordered list of evaluations:
it evaluates batches through the store (cache) and the worker pool, and checks the replay against the
stored history.

    args = SearchArgs(tasks=("arc_easy",), objectives=("accuracy", "params"), evaluations=60, out="runs/a")
    result = search(args)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair

from llamanas.errors import LlamanasError, from_dict_strict, unknown
from llamanas.search import objectives as objmod
from llamanas.search import store as storemod
from llamanas.search.objectives import Constraint, Counts, Objective
from llamanas.search.predictors import Encoder, Predictor, kendall_tau, mape
from llamanas.search.store import Record, Store
from llamanas.search.workers import EvalSettings, EvaluatorSpec, Outcome, SupernetSpec, make_pool
from llamanas.supernet.space import SearchSpace, SubnetConfig

ALGORITHMS = ("random", "nsga2", "linas")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RUN_FILE = "run.json"
STORE_FILE = "results.sqlite"


@dataclass(frozen=True)
class SearchArgs:
    """Everything a search run needs; saved as run.json and checked when a run is resumed."""

    model: str = "default"
    """'default', a local HF model folder, a super-network folder or a hub id."""
    tasks: tuple[str, ...] = ()
    """Evaluation tasks (needed by task objectives such as accuracy and gold_nll)."""
    objectives: tuple[str, ...] = ("accuracy", "params")
    """Objective names (see objectives.KINDS); directions are the objectives' own."""
    algorithm: str = "linas"
    """random, nsga2 (on real evaluations) or linas (NSGA-II on predictors)."""
    evaluations: int = 100
    """Budget: distinct sub-networks in this run's trajectory (store hits count too: honest budgets)."""
    out: str = "runs/search"
    """Run directory."""
    split: str | None = "validation"
    """Data split searched on (the test split is kept for the final report)."""
    limit: int | None = None
    """Seeded random subset of N items per task."""
    num_fewshot: int | None = None
    population: int = 10
    """Batch size: the initial random population, NSGA-II's population, LINAS's batch per loop."""
    seed: int = 0
    """Seed of the search (initial population, NSGA-II, predictors)."""
    data_seed: int = 0
    """Seed of the --limit subset: keep it fixed to compare searches with different seeds."""
    constraints: tuple[str, ...] = ()
    """E.g. 'params<=100M', 'accuracy>=0.4'."""
    space: str | None = None
    """Search-space file; its content (not its path) is stored in run.json."""
    workers: int = 1
    ray_address: str | None = None
    predictor: str = "auto"
    """LINAS predictor: auto, ensemble, ridge, svr or gbr."""
    inner_generations: int = 1000
    """LINAS: NSGA-II generations on the predictors per loop."""
    inner_population: int | None = None
    """LINAS: NSGA-II population on the predictors (default max(50, 2 x population))."""
    store: str | None = None
    """Results store (default RUN_DIR/results.sqlite); point runs at one file to share evaluations."""
    order: bool = True
    """Order channels by importance before slicing (as every llamanas command does)."""
    dtype: str = "float32"
    seq_len: int = 128
    """Sequence length for MACs per token."""

    # Fields that do not change which sub-networks are evaluated: a run may be resumed with new values.
    RESUMABLE = ("evaluations", "workers", "ray_address", "out", "store")

    def __post_init__(self):
        for name in ("tasks", "objectives", "constraints"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("tasks", "objectives", "constraints"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchArgs:
        return from_dict_strict(cls, d, "search settings")

    def trajectory_dict(self) -> dict:
        """The fields that define the run's sequence of evaluations."""
        d = self.to_dict()
        for k in self.RESUMABLE + ("space",):  # the space file's content is stored instead of its path
            d.pop(k)
        return d

    def check(self) -> None:
        """Errors that name the bad value and the allowed ones, before anything is loaded."""
        if self.algorithm not in ALGORITHMS:
            raise unknown("algorithm", self.algorithm, ALGORITHMS)
        for flag, v, lo in (
            ("--evaluations", self.evaluations, 1),
            ("--population", self.population, 2),
            ("--workers", self.workers, 1),
            ("--inner-generations", self.inner_generations, 1),
            ("--seq-len", self.seq_len, 1),
        ):
            if v < lo:
                raise LlamanasError(f"{flag} must be >= {lo}; got {v}.")
        if self.limit is not None and self.limit < 1:
            raise LlamanasError(f"--limit must be >= 1; got {self.limit}.")
        if self.inner_population is not None and self.inner_population < 4:
            raise LlamanasError(f"--inner-population must be >= 4; got {self.inner_population}.")
        if self.dtype not in DTYPE_BYTES:
            raise unknown("dtype", self.dtype, DTYPE_BYTES)
        from llamanas.search.predictors import KINDS

        if self.predictor not in KINDS:
            raise unknown("predictor", self.predictor, KINDS)

    def settings(self, timing: bool) -> EvalSettings:
        return EvalSettings(
            tasks=self.tasks,
            split=self.split,
            limit=self.limit,
            num_fewshot=self.num_fewshot,
            seed=self.data_seed,
            timing=timing,
            seq_len=self.seq_len,
            dtype=self.dtype,
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store else self.run_dir / STORE_FILE


# ------------------------------------------------------------------------------------------------------
# The problem (pymoo) and its operators
# ------------------------------------------------------------------------------------------------------


@dataclass
class Goals:
    """The run's objectives and constraints, resolved, with their hypervolume bounds."""

    objectives: list[Objective]
    constraints: list[Constraint]
    bounds: list[tuple[float, float]]  # (best, worst) per objective

    @property
    def measured(self) -> list[Objective]:
        """Objectives/constraint targets that must be evaluated (or predicted), each once, in order."""
        seen: dict[str, Objective] = {}
        for o in [*self.objectives, *(c.objective for c in self.constraints)]:
            if not o.analytic:
                seen.setdefault(o.name, o)
        return list(seen.values())

    @property
    def analytic_constraints(self) -> list[Constraint]:
        return [c for c in self.constraints if c.objective.analytic]

    def values(self, measured: dict[str, float]) -> dict[str, float]:
        """Objective and constraint values of one evaluation, by name."""
        names = {o.name: o for o in [*self.objectives, *(c.objective for c in self.constraints)]}
        return {n: o.value(measured) for n, o in names.items()}

    def F(self, rows: list[dict[str, float]]) -> np.ndarray:
        """Raw objective values (n, k), by name in the run's order."""
        return np.array([[r[o.name] for o in self.objectives] for r in rows], dtype=float).reshape(
            len(rows), len(self.objectives)
        )

    def minimised(self, F: np.ndarray) -> np.ndarray:
        return F * np.array([o.sign for o in self.objectives])

    def feasible(self, rows: list[dict[str, float]]) -> np.ndarray:
        return np.array(
            [all(c.satisfied(r[c.objective.name]) for c in self.constraints) for r in rows], dtype=bool
        )


class SpaceRepair(Repair):
    """Round, clip to bounds and apply ``SearchSpace.repair`` to every row (vectorised: pymoo calls this
    on every mating attempt, thousands of times per inner search)."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        self.xl, self.xu = space.bounds()

    def _do(self, problem, X, **kwargs):
        return repair_rows(self.space, np.round(np.asarray(X, dtype=float)).astype(int), self.xl, self.xu)


def repair_rows(space: SearchSpace, X: np.ndarray, xl=None, xu=None) -> np.ndarray:
    """``SearchSpace.repair`` on each row of X at once (same result, row by row)."""
    if xl is None:
        xl, xu = space.bounds()
    X = np.clip(np.atleast_2d(X), xl, xu).astype(int)
    if space.mode == "per_layer":
        n = space.arch.num_layers
        keep = X[:, :n]
        keep[:, list(space.always_keep)] = 1
        missing = space.min_depth - keep.sum(axis=1, keepdims=True)
        # Switch on the lowest-index skipped layers: the first `missing` zeros of each row.
        skipped = keep == 0
        keep[skipped & (np.cumsum(skipped, axis=1) <= missing)] = 1
    return X


def canonical_keys(counts: Counts, X: np.ndarray) -> list[bytes]:
    """One key per decoded sub-network: genes of skipped layers are set to their largest choice."""
    X = np.array(np.atleast_2d(X), dtype=np.int64)
    keep = counts.keep(X)
    off = 1 if counts.depths is not None else counts.n_layers
    n = counts.n_layers
    X[:, off : off + n] = np.where(keep, X[:, off : off + n], counts.mlp_max[None, :])
    X[:, off + n : off + 2 * n] = np.where(keep, X[:, off + n : off + 2 * n], counts.kv_max[None, :])
    if len(counts.bits_max):
        X[:, off + 2 * n : off + 3 * n] = np.where(
            keep, X[:, off + 2 * n : off + 3 * n], counts.bits_max[None, :]
        )
    return [row.tobytes() for row in X]


class KeyDuplicates(DuplicateElimination):
    """pymoo duplicate elimination by decoded config, also against every config already evaluated.

    pymoo's default compares raw vectors, so two vectors that decode to the same sub-network (they differ
    only in a skipped layer's genes) would both be evaluated.
    """

    def __init__(self, counts: Counts, archive: set[bytes]):
        super().__init__()
        self.counts, self.archive = counts, archive

    def _do(self, pop, other, is_duplicate):
        keys = canonical_keys(self.counts, pop.get("X"))
        if other is None:
            seen: set[bytes] = set()
            for i, k in enumerate(keys):
                if k in seen or k in self.archive:
                    is_duplicate[i] = True
                seen.add(k)
        else:
            others = set(canonical_keys(self.counts, other.get("X")))
            for i, k in enumerate(keys):
                if k in others:
                    is_duplicate[i] = True
        return is_duplicate


class SubnetProblem(Problem):
    """Sub-networks as integer vectors; objectives to minimise from a value function.

    ``values(X) -> {name: array}`` gives every objective and constraint target: exact counts for
    analytic ones, predictions (LINAS) for measured ones. NSGA-II on real evaluations uses only the
    dimensions of this problem (it evaluates through ask/tell).
    """

    def __init__(self, space: SearchSpace, goals: Goals, values: Callable[[np.ndarray], dict] | None = None):
        xl, xu = space.bounds()
        super().__init__(
            n_var=len(xl),
            n_obj=len(goals.objectives),
            n_ieq_constr=len(goals.constraints),
            xl=xl,
            xu=xu,
            vtype=int,
        )
        self.space, self.goals, self.value_fn = space, goals, values

    def _evaluate(self, X, out, *args, **kwargs):
        if self.value_fn is None:
            raise LlamanasError("This problem is evaluated for real through ask/tell, not by pymoo.")
        vals = self.value_fn(np.asarray(X, dtype=int))
        out["F"] = np.column_stack([o.sign * vals[o.name] for o in self.goals.objectives])
        if self.goals.constraints:
            out["G"] = np.column_stack([c.violation(vals[c.objective.name]) for c in self.goals.constraints])


def _nsga2(space: SearchSpace, counts: Counts, pop_size: int, sampling: np.ndarray, archive: set[bytes]):
    """NSGA-II with integer SBX/PM (DyNAS-T's operator settings) and config-level duplicate elimination."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair

    return NSGA2(
        pop_size=pop_size,
        sampling=sampling,
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=KeyDuplicates(counts, archive),
        repair=SpaceRepair(space),
    )


# ------------------------------------------------------------------------------------------------------
# The trajectory: evaluations in order, through the store and the pool
# ------------------------------------------------------------------------------------------------------


@dataclass
class Evaluated:
    seq: int
    config: SubnetConfig
    x: np.ndarray
    measured: dict[str, float]
    values: dict[str, float]  # objective/constraint values by name
    reused: bool  # found in the store (no compute spent by this process)


class Trajectory:
    """The run's evaluations; ``evaluate`` spends the budget and never evaluates a config twice."""

    def __init__(
        self,
        space: SearchSpace,
        goals: Goals,
        counts: Counts,
        budget: int,
        store: Store,
        run_id: int,
        pool,
        fingerprint: str,
        settings: EvalSettings,
        on_result: Callable[[Trajectory], None] | None = None,
    ):
        self.space, self.goals, self.counts, self.budget = space, goals, counts, budget
        self.store, self.run_id, self.pool = store, run_id, pool
        self.fingerprint, self.settings, self.settings_hash = fingerprint, settings, settings.hash()
        self.on_result = on_result
        self.history: list[Evaluated] = []
        self.keys: set[str] = set()
        self.canon: set[bytes] = set()  # canonical vectors of every evaluated config
        self.computed = 0  # evaluations run by this process
        self.live = _LiveFront(goals)

    @property
    def remaining(self) -> int:
        return self.budget - len(self.history)

    def is_new(self, cfg: SubnetConfig) -> bool:
        return cfg.key() not in self.keys

    def evaluate(self, cfgs: list[SubnetConfig]) -> list[Evaluated]:
        """Evaluate new, distinct configs (truncated to the remaining budget), in order."""
        cfgs = cfgs[: max(0, self.remaining)]
        keys = [c.key() for c in cfgs]
        if len(set(keys)) != len(keys) or any(k in self.keys for k in keys):
            raise AssertionError("search bug: a batch repeats a config or one already evaluated")
        seq0 = len(self.history)
        stored = self.store.get_many(self.fingerprint, self.settings_hash, keys)
        records: dict[int, Record] = {}
        for i, k in enumerate(keys):
            if k in stored:
                records[i] = stored[k]
                self.store.add_to_run(self.run_id, seq0 + i + 1, stored[k].id)
                self._notify(records[i])
        todo = [i for i in range(len(cfgs)) if i not in records]
        if todo:
            for j, outcome in self.pool.imap_unordered([cfgs[i] for i in todo]):
                i = todo[j]
                rec = self._record(cfgs[i], outcome)
                self.store.put(rec)  # committed now: a crash after this line loses nothing
                self.store.add_to_run(self.run_id, seq0 + i + 1, rec.id)
                self.computed += 1
                records[i] = rec
                self._notify(rec)
        out = []
        for i, cfg in enumerate(cfgs):
            rec = records[i]
            ev = Evaluated(
                seq=seq0 + i + 1,
                config=cfg,
                x=self.space.encode(cfg),
                measured=rec.measured,
                values=self.goals.values(rec.measured),
                reused=i not in todo,
            )
            out.append(ev)
            self.history.append(ev)
            self.keys.add(keys[i])
        self.canon.update(canonical_keys(self.counts, np.array([e.x for e in out]).reshape(len(out), -1)))
        return out

    def _record(self, cfg: SubnetConfig, outcome: Outcome) -> Record:
        measured = {k: float(v) for k, v in outcome.values.items()}
        measured.update(self.counts.of(cfg))  # exact sizes, identical to the extracted checkpoint's
        return Record(
            config=cfg,
            measured=measured,
            fingerprint=self.fingerprint,
            settings_hash=self.settings_hash,
            settings=self.settings.to_dict(),
            split=outcome.split,
            n_items=outcome.n_items,
            seed=self.settings.seed,
            started=outcome.started,
            seconds=outcome.seconds,
            worker=outcome.worker,
        )

    def _notify(self, rec: Record) -> None:
        self.live.add(self.goals.values(rec.measured))
        if self.on_result:
            self.on_result(self)


class _LiveFront:
    """Front size and hypervolume in arrival order (for the progress bar only)."""

    def __init__(self, goals: Goals):
        self.goals = goals
        self.points = np.zeros((0, len(goals.objectives)))
        self.done = 0
        self.hv = 0.0

    def add(self, values: dict[str, float]) -> None:
        self.done += 1
        if not self.goals.feasible([values])[0]:
            return
        p = objmod.normalise(self.goals.F([values]), self.goals.bounds)
        pts = np.vstack([self.points, p])
        self.points = pts[objmod.pareto_mask(pts)]
        self.hv = objmod.hypervolume(self.points)


# ------------------------------------------------------------------------------------------------------
# Algorithms
# ------------------------------------------------------------------------------------------------------


class BatchCache:
    """LINAS batches already proposed in this run, keyed by loop and a digest of the evaluations they were
    computed from: a resumed run replays its loops without refitting predictors or re-running NSGA-II."""

    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id = store, run_id

    @staticmethod
    def digest(history: list[Evaluated]) -> str:
        import hashlib

        data = [[e.config.key(), sorted(e.measured.items())] for e in history]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()

    def get(self, loop: int, history: list[Evaluated]) -> dict | None:
        return self.store.get_batch(self.run_id, loop, self.digest(history))

    def put(self, loop: int, history: list[Evaluated], payload: dict) -> None:
        self.store.put_batch(self.run_id, loop, self.digest(history), payload)


@dataclass
class Context:
    """What an algorithm works with."""

    args: SearchArgs
    space: SearchSpace
    goals: Goals
    counts: Counts
    traj: Trajectory
    on_batch: Callable[[], None] = field(default=lambda: None)
    quality: Callable[[int, str, dict], None] = field(default=lambda loop, name, row: None)
    batches: BatchCache | None = None

    def analytic_ok(self, cfg: SubnetConfig) -> bool:
        cs = self.goals.analytic_constraints
        if not cs:
            return True
        c = self.counts.of(cfg)
        return all(k.satisfied(c[k.objective.name]) for k in cs)

    def sample_new(
        self, rng: np.random.Generator, n: int, exclude: set[str] | None = None
    ) -> list[SubnetConfig]:
        """Up to n distinct random configs, new to the run and meeting the analytic constraints."""
        exclude = set(self.traj.keys) | (exclude or set())
        out: list[SubnetConfig] = []
        tries = 0
        max_tries = 200 * n + 2000
        while len(out) < n and tries < max_tries:
            tries += 1
            cfg = self.space.sample(rng)
            k = cfg.key()
            if k in exclude or not self.analytic_ok(cfg):
                continue
            exclude.add(k)
            out.append(cfg)
        if n and not out and not self.traj.history:
            raise LlamanasError(
                f"No sub-network meeting the constraints {[c.text for c in self.goals.constraints]} was found "
                f"in {max_tries} random samples; relax them."
            )
        return out

    def initial(self) -> list[SubnetConfig]:
        """The first population, the same for every algorithm with the same seed: the largest and the
        smallest sub-networks (the ends of the front, so it always spans the space; the largest is the base
        model) where the constraints allow them, then random ones."""
        anchors = []
        for cfg in (self.space.largest(), self.space.smallest()):
            if self.args.population > len(anchors) and self.traj.is_new(cfg) and self.analytic_ok(cfg):
                anchors.append(cfg)
        rng = np.random.default_rng(self.args.seed)
        return anchors + self.sample_new(rng, self.args.population - len(anchors), {c.key() for c in anchors})


def run_random(ctx: Context) -> None:
    """Uniform random sampling in batches of --population (the first batch is everyone's initial one)."""
    ctx.traj.evaluate(ctx.initial())
    ctx.on_batch()
    rng = np.random.default_rng([ctx.args.seed, 2])
    while ctx.traj.remaining > 0:
        batch = ctx.sample_new(rng, min(ctx.args.population, ctx.traj.remaining))
        if not batch:
            break  # the space (or its feasible part) is exhausted
        ctx.traj.evaluate(batch)
        ctx.on_batch()


def run_nsga2(ctx: Context) -> None:
    """pymoo's NSGA-II with every offspring evaluated for real (ask/tell)."""
    from pymoo.core.termination import NoTermination

    space, traj, goals = ctx.space, ctx.traj, ctx.goals
    init = ctx.initial()
    X0 = np.array([space.encode(c) for c in init])
    algo = _nsga2(space, ctx.counts, ctx.args.population, X0, traj.canon)
    algo.setup(SubnetProblem(space, goals), seed=ctx.args.seed, termination=NoTermination())
    rng = np.random.default_rng([ctx.args.seed, 1])
    while traj.remaining > 0:
        pop = algo.ask()
        X = np.asarray(pop.get("X"), dtype=int)
        cfgs = [space.decode(x) for x in X]
        new = [i for i, c in enumerate(cfgs) if traj.is_new(c) and ctx.analytic_ok(c)]
        if not new:  # nothing new: inject random configs so the search cannot stall
            extra = ctx.sample_new(rng, ctx.args.population)
            if not extra:
                break
            from pymoo.core.population import Population

            pop = Population.new(X=np.array([space.encode(c) for c in extra]))
            X, cfgs, new = pop.get("X").astype(int), extra, list(range(len(extra)))
        evaluated = traj.evaluate([cfgs[i] for i in new])
        ctx.on_batch()
        if len(evaluated) < len(new):
            break  # budget spent mid-generation
        by_key = {e.config.key(): e.values for e in traj.history}
        rows = [by_key.get(c.key()) or _infeasible_values(ctx, c) for c in cfgs]
        pop.set("F", goals.minimised(goals.F(rows)))
        if goals.constraints:
            pop.set(
                "G", np.array([[c.violation(r[c.objective.name]) for c in goals.constraints] for r in rows])
            )
        algo.tell(infills=pop)


def _infeasible_values(ctx: Context, cfg: SubnetConfig) -> dict[str, float]:
    """Values for a config skipped because it breaks an analytic constraint: exact counts, worst bounds
    for measured objectives, and a neutral value (the bound) for measured constraint targets."""
    counts = ctx.counts.of(cfg)
    goals = ctx.goals
    out = {c.objective.name: c.bound for c in goals.constraints}
    out.update({o.name: worst for o, (_, worst) in zip(goals.objectives, goals.bounds, strict=True)})
    out.update({k: v for k, v in counts.items() if k in out})
    return out


def run_linas(ctx: Context) -> None:
    """LINAS: real evaluations of batches proposed by NSGA-II on per-objective predictors."""
    args, traj, goals = ctx.args, ctx.traj, ctx.goals
    traj.evaluate(ctx.initial())
    ctx.on_batch()
    loop = 0
    while traj.remaining > 0:
        loop += 1
        batch_size = min(args.population, traj.remaining)
        payload = ctx.batches.get(loop, traj.history) if ctx.batches else None
        if payload is None:
            payload = propose_linas(ctx, loop, batch_size)
            if ctx.batches:
                ctx.batches.put(loop, traj.history, payload)
        chosen = [SubnetConfig.from_dict(d) for d in payload["configs"]][:batch_size]
        if not chosen:
            break
        evaluated = traj.evaluate(chosen)
        for o in goals.measured:
            true = [e.values[o.name] for e in evaluated]
            pred = payload["predicted"][o.name][: len(evaluated)]
            row = {
                "loop": loop,
                "objective": o.name,
                **payload["predictors"][o.name],
                "n_new": len(evaluated),
                "kendall_tau": kendall_tau(true, pred),
                "mape": mape(true, pred),
            }
            ctx.quality(loop, o.name, row)
        ctx.on_batch()


def propose_linas(ctx: Context, loop: int, batch_size: int) -> dict:
    """One LINAS step: fit predictors on every evaluation so far, search them with NSGA-II, pick a batch.

    Returns the batch (config dicts) with the predictions for it and the predictors' CV summaries.
    """
    from pymoo.optimize import minimize
    from sklearn import config_context

    args, space, traj, goals = ctx.args, ctx.space, ctx.traj, ctx.goals
    encoder = Encoder(space)
    inner_pop = args.inner_population or max(50, 2 * args.population)
    hist = traj.history
    features = encoder(np.array([e.x for e in hist]))
    predictors = {
        o.name: Predictor(args.predictor, seed=args.seed).fit(features, [e.values[o.name] for e in hist])
        for o in goals.measured
    }

    def values(X):
        out = dict(ctx.counts(X))
        if predictors:
            F = encoder(X)
            out.update({name: p.predict(F) for name, p in predictors.items()})
        return out

    rng = np.random.default_rng([args.seed, loop])
    # Warm start: the best-ranked real evaluations, then random configs (then the other real ones).
    ranked = [hist[i].config for i in _rank_order(goals, [e.values for e in hist])]
    seeds = ranked[: inner_pop // 2]
    seeds += ctx.sample_new(rng, inner_pop - len(seeds))
    seeds += ranked[inner_pop // 2 :][: max(0, inner_pop - len(seeds))]
    X0 = np.array([space.encode(c) for c in seeds])
    inner_seed = int(np.random.SeedSequence([args.seed, loop]).generate_state(1)[0] % (2**31))
    with config_context(assume_finite=True):  # skips sklearn's input checks in the hot loop
        res = minimize(
            SubnetProblem(space, goals, values),
            _nsga2(space, ctx.counts, inner_pop, X0, set()),
            ("n_gen", args.inner_generations),
            seed=inner_seed,
            verbose=False,
        )
        Xc = np.asarray(res.pop.get("X"), dtype=int)
        chosen = select_batch(ctx, Xc, values(Xc), batch_size)
        if len(chosen) < batch_size:
            chosen += ctx.sample_new(rng, batch_size - len(chosen), exclude={c.key() for c in chosen})
        predicted = values(np.array([space.encode(c) for c in chosen]).reshape(len(chosen), -1))
    return {
        "configs": [c.to_dict() for c in chosen],
        "predicted": {o.name: [float(v) for v in predicted[o.name]] for o in goals.measured},
        "predictors": {name: p.summary() for name, p in predictors.items()},
    }


def _rank_order(goals: Goals, rows: list[dict[str, float]]) -> list[int]:
    """Indices by (infeasible last, non-dominated rank, index)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if not rows:
        return []
    F = goals.minimised(goals.F(rows))
    feas = goals.feasible(rows)
    rank = np.full(len(rows), len(rows) + 1)
    idx = np.flatnonzero(feas)
    if len(idx):
        for r, front in enumerate(NonDominatedSorting().do(F[idx])):
            rank[idx[front]] = r
    return sorted(range(len(rows)), key=lambda i: (rank[i], i))


def select_batch(ctx: Context, X: np.ndarray, values: dict[str, np.ndarray], k: int) -> list[SubnetConfig]:
    """Up to k new configs from the candidates X (rows), given their predicted values, in order.

    1. Greedy predicted hypervolume gain: next comes the feasible candidate that adds the most hypervolume
       to the real front plus the candidates already chosen. A candidate next to a chosen one adds little,
       so the batch spreads along the front instead of clustering where the predictor is most optimistic.
    2. When no candidate adds anything, the other feasible ones by predicted front rank, each front in
       greedy max-min order (farthest from every real or chosen point first).
    3. Candidates predicted to break a constraint come last, least violation first.
    """
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    goals, space, traj = ctx.goals, ctx.space, ctx.traj
    if k <= 0:
        return []
    first: dict[bytes, int] = {}
    for i, key in enumerate(canonical_keys(ctx.counts, X)):
        first.setdefault(key, i)
    cand = np.array(sorted(i for key, i in first.items() if key not in traj.canon), dtype=int)
    if not len(cand):
        return []
    # Normalised, minimised; predictions beyond the best bound (e.g. a negative NLL) are clipped to it.
    Fn = np.maximum(
        objmod.normalise(np.column_stack([values[o.name][cand] for o in goals.objectives]), goals.bounds), 0.0
    )
    cv = np.zeros(len(cand))
    if goals.constraints:
        G = np.column_stack([c.violation(values[c.objective.name][cand]) for c in goals.constraints])
        cv = np.maximum(G, 0).sum(axis=1)
    real = [e.values for e in traj.history]
    pts = np.zeros((0, Fn.shape[1]))
    if real:
        pts = objmod.normalise(goals.F(real), goals.bounds)[goals.feasible(real)]
        pts = pts[objmod.pareto_mask(pts)] if len(pts) else pts
    chosen: list[int] = []
    left = [int(i) for i in np.flatnonzero(cv <= 0)]
    hv = objmod.hypervolume(pts)
    while left and len(chosen) < k:
        gains = np.array([objmod.hypervolume(np.vstack([pts, Fn[i]])) - hv for i in left])
        j = int(np.argmax(gains))  # first wins ties: deterministic
        if gains[j] <= 1e-12:
            break
        chosen.append(left.pop(j))
        pts = np.vstack([pts, Fn[chosen[-1]]])
        pts = pts[objmod.pareto_mask(pts)]
        hv = objmod.hypervolume(pts)
    if left and len(chosen) < k:
        placed = np.vstack([pts, Fn[chosen]]) if chosen else pts
        rest = np.array(left)
        for front in NonDominatedSorting().do(Fn[rest]):
            g = list(rest[front])
            while g and len(chosen) < k:
                if len(placed):
                    d = np.min(np.linalg.norm(Fn[g][:, None, :] - placed[None, :, :], axis=2), axis=1)
                    j = int(np.argmax(d))
                else:
                    j = int(np.argmin(Fn[g].sum(axis=1)))
                chosen.append(g.pop(j))
                placed = np.vstack([placed, Fn[chosen[-1]]])
    infeasible = np.flatnonzero(cv > 0)
    chosen += [int(i) for i in infeasible[np.argsort(cv[infeasible], kind="stable")]][
        : max(0, k - len(chosen))
    ]
    return [space.decode(X[cand[i]]) for i in chosen]


RUNNERS: dict[str, Callable[[Context], None]] = {"random": run_random, "nsga2": run_nsga2, "linas": run_linas}


# ------------------------------------------------------------------------------------------------------
# Fronts, hypervolume trace and exports
# ------------------------------------------------------------------------------------------------------


@dataclass
class FrontMember:
    id: int  # seq in the run
    config: SubnetConfig
    values: dict[str, float]  # objectives and constraint targets by name
    measured: dict[str, float]


def front_of(goals: Goals, evaluated: list[Evaluated]) -> list[FrontMember]:
    """Feasible non-dominated evaluations, sorted by the first objective (best first)."""
    rows = [e.values for e in evaluated]
    feas = np.flatnonzero(goals.feasible(rows)) if rows else np.array([], dtype=int)
    if not len(feas):
        return []
    F = goals.minimised(goals.F([rows[i] for i in feas]))
    members = [evaluated[i] for i in feas[objmod.pareto_mask(F)]]
    first = goals.objectives[0]
    members.sort(key=lambda e: (first.sign * e.values[first.name], e.seq))
    return [FrontMember(e.seq, e.config, e.values, e.measured) for e in members]


def hypervolume_trace(goals: Goals, evaluated: list[Evaluated]) -> list[tuple[int, float, int]]:
    """(evaluations so far, hypervolume, front size) after every evaluation, in run order."""
    out = []
    pts = np.zeros((0, len(goals.objectives)))
    hv = 0.0
    for n, e in enumerate(evaluated, 1):
        if goals.feasible([e.values])[0]:
            p = objmod.normalise(goals.F([e.values]), goals.bounds)
            pts = np.vstack([pts, p])
            pts = pts[objmod.pareto_mask(pts)]
            hv = objmod.hypervolume(pts)
        out.append((n, hv, len(pts)))
    return out


def export(run_dir: Path, goals: Goals, evaluated: list[Evaluated], quality: list[dict]) -> None:
    """front.json, front.csv, hypervolume.csv and predictors.csv: views of the store, written atomically."""
    front = front_of(goals, evaluated)
    names = [o.name for o in goals.objectives]
    extra = [c.objective.name for c in goals.constraints if c.objective.name not in names]
    storemod.write_json(
        run_dir / "front.json",
        {
            "objectives": [o.to_dict() for o in goals.objectives],
            "constraints": [c.to_dict() for c in goals.constraints],
            "members": [
                {"id": m.id, "values": m.values, "measured": m.measured, "config": m.config.to_dict()}
                for m in front
            ],
        },
    )
    params = [] if "params" in names + extra else ["params"]
    storemod.write_csv(
        run_dir / "front.csv",
        ["id", *names, *extra, *params, "depth", "config"],
        [
            [
                m.id,
                *(m.values[n] for n in names + extra),
                *(int(m.measured[p]) for p in params),
                m.config.depth,
                m.config.to_json(),
            ]
            for m in front
        ],
    )
    storemod.write_csv(
        run_dir / "hypervolume.csv",
        ["evaluations", "hypervolume", "front_size"],
        [[n, f"{hv:.6f}", size] for n, hv, size in hypervolume_trace(goals, evaluated)],
    )
    cols = ["loop", "objective", "model", "n_train", "cv_mse", "cv_tau", "n_new", "kendall_tau", "mape"]
    storemod.write_csv(run_dir / "predictors.csv", cols, [[q.get(c) for c in cols] for q in quality])


# ------------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    run_dir: Path
    front: list[FrontMember]
    hypervolume: list[tuple[int, float, int]]
    evaluations: int  # in the trajectory
    computed: int  # evaluated by this process (the rest came from the store)
    seconds: float


def resolve_space(args: SearchArgs) -> SearchSpace:
    """The space the super-network would use (space file > saved super-network space > default)."""
    from llamanas.model.arch import Arch
    from llamanas.model.load import load_config, resolve
    from llamanas.supernet.elastic import SUPERNET_FILE

    arch = Arch.from_hf(load_config(args.model))
    if args.space:
        return SearchSpace.from_file(args.space, arch)
    meta_path = Path(resolve(args.model)) / SUPERNET_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return SearchSpace.from_saved(meta["space"]) if "space" in meta else SearchSpace.from_arch(arch)


def prepare_goals(args: SearchArgs, space: SearchSpace) -> tuple[list[Objective], list[Constraint], Counts]:
    """Resolve objectives and constraints, and reject impossible constraints before loading anything."""
    counts = Counts(space, DTYPE_BYTES[args.dtype], args.seq_len)
    objectives = objmod.resolve(args.objectives, args.tasks)
    constraints = [objmod.parse_constraint(c, args.tasks) for c in args.constraints]
    objmod.check_feasible(constraints, counts)
    return objectives, constraints, counts


def search(
    args: SearchArgs,
    evaluator: EvaluatorSpec | None = None,
    space: SearchSpace | None = None,
    progress: Callable[[Trajectory], None] | None = None,
) -> SearchResult:
    """Run (or resume) a search; returns its front. ``evaluator``/``space`` default to ``args.model``'s."""
    t0 = time.time()
    args.check()
    space = space or resolve_space(args)
    objectives, constraints, counts = prepare_goals(args, space)
    timing = any(o.source == objmod.TIMING for o in [*objectives, *(c.objective for c in constraints)])
    settings = args.settings(timing)
    spec = evaluator or SupernetSpec(args.model, space.to_dict(), settings, order=args.order)
    run_dir = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    with Store(args.store_path) as store:
        pool = make_pool(spec, args.workers, args.ray_address)
        try:
            fingerprint = pool.fingerprint()
            reference = store.reference(fingerprint, settings.hash(), pool.reference)
            bounds = [objmod.bounds(o, counts, reference) for o in objectives]
            goals = Goals(objectives, constraints, bounds)
            run_name = str(run_dir.resolve())
            run_config = {
                **args.trajectory_dict(),
                "space": space.to_dict(),
                "fingerprint": fingerprint,
                "settings_hash": settings.hash(),
            }
            run_id = store.open_run(run_name, run_config)
            storemod.write_json(
                run_dir / RUN_FILE,
                {
                    "args": args.to_dict(),
                    "run_name": run_name,
                    "store": str(args.store_path.resolve()),
                    "space": space.to_dict(),
                    "variable_names": list(space.variable_names),
                    "objectives": [o.to_dict() for o in objectives],
                    "constraints": [c.to_dict() for c in constraints],
                    "bounds": {o.name: list(b) for o, b in zip(objectives, bounds, strict=True)},
                    "reference": {k: list(v) for k, v in reference.items()},
                    "fingerprint": fingerprint,
                    "settings": settings.to_dict(),
                    "settings_hash": settings.hash(),
                },
            )
            traj = Trajectory(
                space, goals, counts, args.evaluations, store, run_id, pool, fingerprint, settings, progress
            )

            def on_batch():
                export(run_dir, goals, traj.history, store.quality(run_id))

            ctx = Context(
                args,
                space,
                goals,
                counts,
                traj,
                on_batch=on_batch,
                quality=lambda loop, name, row: store.put_quality(run_id, loop, name, row),
                batches=BatchCache(store, run_id),
            )
            RUNNERS[args.algorithm](ctx)
            on_batch()
            return SearchResult(
                run_dir,
                front_of(goals, traj.history),
                hypervolume_trace(goals, traj.history),
                len(traj.history),
                traj.computed,
                time.time() - t0,
            )
        finally:
            pool.close()


@dataclass
class RunView:
    """A run directory read back from its run.json and store (for ``llamanas front`` and extraction)."""

    info: dict
    goals: Goals
    evaluated: list[Evaluated]

    @property
    def front(self) -> list[FrontMember]:
        return front_of(self.goals, self.evaluated)

    def member(self, id: int) -> Evaluated:
        for e in self.evaluated:
            if e.seq == id:
                return e
        raise LlamanasError(
            f"No evaluation #{id} in run {self.info['run_name']}; ids are 1..{len(self.evaluated)} "
            f"(front: {', '.join(str(m.id) for m in self.front) or 'empty'})."
        )


def load_run(run_dir: str | Path) -> RunView:
    """Read a run directory (while it runs, too: the store is opened alongside the writer)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise LlamanasError(f"{str(run_dir)!r} is not a search run directory (no {RUN_FILE} in it).")
    info = json.loads(path.read_text())
    args = SearchArgs.from_dict(info["args"])
    store_path = Path(info["store"])
    if not store_path.exists() and (run_dir / STORE_FILE).exists():
        store_path = run_dir / STORE_FILE  # the run directory was moved
    space = SearchSpace.from_saved(info["space"])
    objectives = objmod.resolve(args.objectives, args.tasks)
    constraints = [objmod.parse_constraint(c, args.tasks) for c in args.constraints]
    bounds = [tuple(info["bounds"][o.name]) for o in objectives]
    goals = Goals(objectives, constraints, bounds)
    with Store(store_path, create=False) as store:
        run_id = store.run_id(info["run_name"])
        records = store.run_records(run_id)
    evaluated = [
        Evaluated(seq, r.config, space.encode(r.config), r.measured, goals.values(r.measured), True)
        for seq, r in records
    ]
    return RunView(info, goals, evaluated)


def parse_member_ref(ref: str) -> tuple[Path, int] | None:
    """``RUN_DIR:ID`` -> (run dir, id) when RUN_DIR holds a run; None for anything else."""
    head, sep, tail = ref.rpartition(":")
    if not sep or not tail.strip().isdigit() or not (Path(head) / RUN_FILE).is_file():
        return None
    return Path(head), int(tail)
