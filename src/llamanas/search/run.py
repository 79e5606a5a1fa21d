"""Multi-objective sub-network search: the run's settings, its entry point, its exports and reading it back.

The parts live beside this module: ``problem`` (goals, the pymoo problem and operators), ``trajectory``
(evaluations in order, through the store and the worker pool: resuming is replay) and ``algorithms``
(random, NSGA-II on real evaluations, LINAS).

    args = SearchArgs(tasks=("arc_easy",), objectives=("accuracy", "params"), evaluations=60, out="runs/a")
    result = search(args)

Over 500 lines, one concern: a run as a whole (what defines it, and its folder: ``RunFiles`` is the one
reader and writer of run.json, front files and exports).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llamanas.errors import LlamanasError, from_dict_strict, unknown
from llamanas.search import objectives as objmod
from llamanas.search import store as storemod
from llamanas.search.algorithms import RUNNERS, BatchCache, Context
from llamanas.search.latency import LatencyTable
from llamanas.search.objectives import Constraint, Counts, Objective
from llamanas.search.problem import Goals
from llamanas.search.store import Store
from llamanas.search.trajectory import Evaluated, Trajectory
from llamanas.search.workers import EvalSettings, EvaluatorSpec, SupernetSpec, make_pool
from llamanas.supernet.space import SearchSpace, SubnetConfig

ALGORITHMS = ("random", "nsga2", "linas")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TUPLE_FIELDS = ("tasks", "objectives", "constraints", "warm_start")
RUN_FILE = "run.json"
FRONT_FILE = "front.json"
STORE_FILE = "results.sqlite"
LATENCY_TABLE_FILE = "latency_table.json"
# Builds a latency table for a run (deploy.speed.build_latency_table_for): (args, space, out path) ->
# the table or the path it was saved to. Passed in by the caller: search cannot import deploy.
LatencyTableBuilder = Callable[["SearchArgs", SearchSpace, Path], "LatencyTable | str | Path"]


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
    importance: str = "rms"
    """Importance score that orders the channels: rms | wanda | taylor (a fine-tuned super-network keeps
    the order it was trained with)."""
    compensate: bool = False
    """Bias compensation (FLAP) on every sliced sub-network: the mean contribution of removed channels."""
    dtype: str = "auto"
    """Compute dtype: auto (bfloat16 on a GPU, float32 on the CPU below 1B parameters, else the checkpoint's
    own) | bfloat16 | float16 | float32. The resolved dtype is recorded and keys the stored results."""
    device: str = "auto"
    """auto (CUDA if present, else cpu) | cpu | cuda | cuda:N; Ray workers on GPUs use their own."""
    seq_len: int = 128
    """Sequence length for MACs per token."""
    runtime: str = "hf"
    """Where the latency and throughput objectives come from: hf (timing each sub-network in transformers)
    or llamacpp (the speed in llama.cpp on this CPU, from a latency table fitted on a few timed GGUF
    exports: --latency-table, or one built first into RUN_DIR/latency_table.json)."""
    latency_table: str | None = None
    """Latency table (JSON, from a llama.cpp calibration) used with --runtime llamacpp; its content is
    copied into the run folder and keys the stored results."""
    warm_start: tuple[str, ...] = ()
    """Seed the first population (after the largest and smallest) with sub-networks chosen by importance
    instead of random ones: sensitivity (per-layer widths allocated by calibration loss at 90..50% of the
    parameters) and/or attention (the least influential attention blocks skipped; a space that skips
    attention). Computed once on the calibration text and saved in the run folder."""

    # Fields that do not change which sub-networks are evaluated: a run may be resumed with new values.
    RESUMABLE = ("evaluations", "workers", "ray_address", "out", "store", "device")

    def __post_init__(self):
        for name in TUPLE_FIELDS:
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchArgs:
        return from_dict_strict(cls, d, "search settings")

    def trajectory_dict(self) -> dict:
        """The fields that define the run's sequence of evaluations."""
        d = self.to_dict()
        # The space file's and latency table's contents are stored instead of their paths.
        for k in self.RESUMABLE + ("space", "latency_table"):
            d.pop(k)
        if not d["warm_start"]:  # runs made before the option existed resume unchanged
            d.pop("warm_start")
        return d

    def check(self) -> None:
        """Errors that name the bad value and the allowed ones, before anything is loaded."""
        if self.algorithm not in ALGORITHMS:
            raise unknown("algorithm", self.algorithm, ALGORITHMS)
        from llamanas.supernet.importance import check_importance

        check_importance(self.importance)
        from llamanas.search.warm_start import check_warm_start

        check_warm_start(self.warm_start)
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
        if self.dtype != "auto" and self.dtype not in DTYPE_BYTES:
            raise unknown("dtype", self.dtype, ("auto", *DTYPE_BYTES))
        from llamanas.search.predictors import KINDS

        if self.predictor not in KINDS:
            raise unknown("predictor", self.predictor, KINDS)
        objmod.check_runtime(self.runtime)
        if self.latency_table and self.runtime == "hf":
            raise LlamanasError(
                f"--latency-table {self.latency_table!r} is used only with --runtime llamacpp (the runtime is "
                f"'hf', where latency and throughput are timed)."
            )

    @property
    def timing_names(self) -> list[str]:
        """The TIMING objectives and constraint targets of this run (latency, throughput)."""
        names = [
            *self.objectives,
            *(objmod.parse_constraint(c, self.tasks).objective.name for c in self.constraints),
        ]
        return sorted({n for n in names if n in objmod.KINDS and objmod.KINDS[n].source == objmod.TIMING})

    def settings(self, timing: bool, latency_table: str | None = None) -> EvalSettings:
        """What the evaluations measure; ``latency_table`` is the digest of the table that gives latency and
        throughput under --runtime llamacpp (then nothing is timed)."""
        return EvalSettings(
            tasks=self.tasks,
            split=self.split,
            limit=self.limit,
            num_fewshot=self.num_fewshot,
            seed=self.data_seed,
            timing=timing,
            seq_len=self.seq_len,
            dtype=self.dtype,
            runtime=self.runtime if latency_table else "hf",
            latency_table=latency_table,
            compensate=self.compensate,
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store else self.run_dir / STORE_FILE


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


class RunFiles:
    """A run directory's files: the one reader and the one writer of ``run.json``, ``front.json``,
    ``front.csv``, ``hypervolume.csv``, ``predictors.csv`` (views of the results store) and
    ``front_<method>.json`` (``deploy.quantize``; ``front_llamacpp.json``, ``deploy.speed``) and
    ``latency_table.json`` (the table of a ``--runtime llamacpp`` run), each written atomically
    (``store.write_*``). The evaluations themselves are in the store: ``load_run`` reads both.
    """

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)

    # --- reading -------------------------------------------------------------------------------
    def has_info(self) -> bool:
        return (self.dir / RUN_FILE).is_file()

    def info(self) -> dict:
        """``run.json``: the run's settings, space, goals, bounds, fingerprint and store."""
        if not self.has_info():
            raise LlamanasError(f"{str(self.dir)!r} is not a search run directory (no {RUN_FILE} in it).")
        return json.loads((self.dir / RUN_FILE).read_text())

    def args(self) -> SearchArgs:
        return SearchArgs.from_dict(self.info()["args"])

    @property
    def latency_table_path(self) -> Path:
        return self.dir / LATENCY_TABLE_FILE

    def has_latency_table(self) -> bool:
        return self.latency_table_path.is_file()

    def latency_table(self) -> LatencyTable:
        """``latency_table.json``: the table a ``--runtime llamacpp`` run computed latency/throughput with."""
        if not self.has_latency_table():
            raise LlamanasError(f"{self.dir}: no {LATENCY_TABLE_FILE} (not a --runtime llamacpp run).")
        return LatencyTable.load(self.latency_table_path)

    def eval_settings(self) -> EvalSettings:
        """What the run's evaluations measured (run.json's ``settings``; from its ``args`` if it has none)."""
        info = self.info()
        if "settings" in info:
            return EvalSettings.from_dict(info["settings"])
        return SearchArgs.from_dict(info["args"]).settings(timing=False)

    def front(self) -> list[dict]:
        """The members of ``front.json``: dicts with ``id``, ``values``, ``measured`` and ``config``."""
        f = self.dir / FRONT_FILE
        if not f.is_file():
            raise LlamanasError(
                f"{self.dir}: no {FRONT_FILE} in the run folder (has the search finished a batch?)."
            )
        d = json.loads(f.read_text())
        members = d.get("members") if isinstance(d, dict) else None
        if not isinstance(members, list):
            raise LlamanasError(
                f"{f}: expected an object with a 'members' list (written by llamanas search)."
            )
        for i, m in enumerate(members):
            if not isinstance(m, dict) or not isinstance(m.get("config"), dict):
                raise LlamanasError(f"{f}: member {i} has no 'config' (a sub-network config object).")
        return members

    def warm_start(self, names: tuple[str, ...]) -> dict | None:
        """``warm_start.json``'s seeds when they were made for ``names`` (None otherwise)."""
        from llamanas.search.warm_start import WARM_START_FILE

        f = self.dir / WARM_START_FILE
        if not f.is_file():
            return None
        seeds = json.loads(f.read_text())
        return seeds if list(seeds) == list(names) else None

    # --- writing (atomic) ----------------------------------------------------------------------
    def write_warm_start(self, seeds: dict) -> None:
        from llamanas.search.warm_start import WARM_START_FILE

        storemod.write_json(self.dir / WARM_START_FILE, seeds)

    def write_info(self, info: dict) -> None:
        storemod.write_json(self.dir / RUN_FILE, info)

    def write_latency_table(self, table: LatencyTable) -> Path:
        return table.save(self.latency_table_path)

    def write_front_after(self, method: str, payload: dict) -> Path:
        """``front_<method>.json``: the front re-evaluated after quantization (``deploy.quantize``), or
        timed in a runtime (``front_llamacpp.json``, ``deploy.speed.time_front``)."""
        path = self.dir / f"front_{method}.json"
        storemod.write_json(path, payload)
        return path

    def export(self, goals: Goals, evaluated: list[Evaluated], quality: list[dict]) -> None:
        """front.json, front.csv, hypervolume.csv and predictors.csv."""
        run_dir = self.dir
        front = front_of(goals, evaluated)
        names = [o.name for o in goals.objectives]
        extra = [c.objective.name for c in goals.constraints if c.objective.name not in names]
        storemod.write_json(
            run_dir / FRONT_FILE,
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


def export(run_dir: Path, goals: Goals, evaluated: list[Evaluated], quality: list[dict]) -> None:
    """front.json, front.csv, hypervolume.csv and predictors.csv: views of the store, written atomically."""
    RunFiles(run_dir).export(goals, evaluated, quality)


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
    from llamanas.supernet.elastic import read_supernet_meta

    arch = Arch.from_hf(load_config(args.model))
    if args.space:
        return SearchSpace.from_file(args.space, arch)
    meta = read_supernet_meta(resolve(args.model))
    return SearchSpace.from_saved(meta["space"]) if "space" in meta else SearchSpace.from_arch(arch)


def prepare_goals(
    args: SearchArgs, space: SearchSpace, latency_table: LatencyTable | None = None
) -> tuple[list[Objective], list[Constraint], Counts]:
    """Resolve objectives and constraints, and reject impossible constraints before loading anything.

    With ``latency_table`` (``--runtime llamacpp``) latency and throughput are computed from it like counts.
    """
    runtime = args.runtime if latency_table is not None else "hf"
    counts = Counts(space, DTYPE_BYTES[args.dtype], args.seq_len, latency_table=latency_table)
    objectives = objmod.resolve(args.objectives, args.tasks, runtime)
    constraints = [objmod.parse_constraint(c, args.tasks, runtime) for c in args.constraints]
    objmod.check_feasible(constraints, counts)
    return objectives, constraints, counts


def resolve_latency_table(
    args: SearchArgs, space: SearchSpace, build: LatencyTableBuilder | None = None
) -> LatencyTable | None:
    """The latency table of a ``--runtime llamacpp`` run that has a latency or throughput objective or
    constraint (None otherwise): ``--latency-table``, else the one in the run folder (a resumed run), else
    one made by ``build`` (saved into the run folder). Checked against the space."""
    if args.runtime == "hf":
        return None
    names = args.timing_names
    if not names:
        return None
    files = RunFiles(args.run_dir)
    if args.latency_table:
        table = LatencyTable.load(args.latency_table)
    elif files.has_latency_table():
        table = files.latency_table()
    elif build is not None:
        made = build(args, space, files.latency_table_path)
        table = made if isinstance(made, LatencyTable) else LatencyTable.load(made)
    else:
        raise LlamanasError(
            f"--runtime {args.runtime} computes {', '.join(names)} from a latency table, and none was given: "
            f"pass --latency-table FILE (or let 'llamanas search' build one), or use --runtime hf to time "
            f"every sub-network."
        )
    table.check_space(space)
    return table


def search(
    args: SearchArgs,
    evaluator: EvaluatorSpec | None = None,
    space: SearchSpace | None = None,
    progress: Callable[[Trajectory], None] | None = None,
    latency_table_builder: LatencyTableBuilder | None = None,
) -> SearchResult:
    """Run (or resume) a search; returns its front. ``evaluator``/``space`` default to ``args.model``'s.

    With ``--runtime llamacpp`` and a latency or throughput objective, their values come from a latency
    table (``resolve_latency_table``; ``latency_table_builder`` makes one when none is given, e.g.
    ``deploy.speed.build_latency_table_for``), copied into the run folder and recorded in run.json.
    """
    t0 = time.time()
    args.check()
    if args.dtype == "auto":  # record the dtype that runs: it keys the stored results
        dtype = "float32"  # a custom evaluator places its own model; float32 is the reference
        if evaluator is None:
            from llamanas.model.device import dtype_name
            from llamanas.model.load import resolve_placement

            dtype = dtype_name(resolve_placement(args.model, "auto", args.device)[1])
        args = dataclasses.replace(args, dtype=dtype)
    space = space or resolve_space(args)
    table = resolve_latency_table(args, space, latency_table_builder)
    objectives, constraints, counts = prepare_goals(args, space, table)
    timing = any(o.source == objmod.TIMING for o in [*objectives, *(c.objective for c in constraints)])
    settings = args.settings(timing, table.digest if table else None)
    spec = evaluator or SupernetSpec(
        args.model,
        space.to_dict(),
        settings,
        order=args.order,
        device=args.device,
        importance=args.importance,
    )
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
            if table is not None:
                run_config["latency_table"] = table.digest
            run_id = store.open_run(run_name, run_config)
            files = RunFiles(run_dir)
            if table is not None:
                files.write_latency_table(table)
            files.write_info(
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
                    "runtime": args.runtime,
                    "latency_table": None
                    if table is None
                    else {
                        "file": LATENCY_TABLE_FILE,
                        "source": args.latency_table,
                        "digest": table.digest,
                        "timing": table.timing,
                        "holdout": table.holdout,
                    },
                },
            )
            traj = Trajectory(
                space, goals, counts, args.evaluations, store, run_id, pool, fingerprint, settings, progress
            )

            def on_batch():
                files.export(goals, traj.history, store.quality(run_id))

            warm: list[SubnetConfig] = []
            if args.warm_start:
                from llamanas.search.warm_start import interleave

                seeds = files.warm_start(args.warm_start)
                if seeds is None:
                    seeds = pool.warm_start(args.warm_start)
                    files.write_warm_start(seeds)
                warm = interleave(seeds)

            ctx = Context(
                args,
                space,
                goals,
                counts,
                traj,
                on_batch=on_batch,
                quality=lambda loop, name, row: store.put_quality(run_id, loop, name, row),
                batches=BatchCache(store, run_id),
                warm=warm,
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
    info = RunFiles(run_dir).info()
    args = SearchArgs.from_dict(info["args"])
    store_path = Path(info["store"])
    if not store_path.exists() and (run_dir / STORE_FILE).exists():
        store_path = run_dir / STORE_FILE  # the run directory was moved
    space = SearchSpace.from_saved(info["space"])
    runtime = args.runtime if info.get("latency_table") else "hf"
    objectives = objmod.resolve(args.objectives, args.tasks, runtime)
    constraints = [objmod.parse_constraint(c, args.tasks, runtime) for c in args.constraints]
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
    if not sep or not tail.strip().isdigit() or not RunFiles(head).has_info():
        return None
    return Path(head), int(tail)
