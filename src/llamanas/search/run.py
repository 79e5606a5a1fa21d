"""Multi-objective sub-network search: its entry point, as a few named steps, and reading a run back.

The parts live beside this module: ``args`` (what a run is), ``problem`` (goals, the pymoo problem and
operators), ``trajectory`` (evaluations in order, through the store and the worker pool: resuming is
replay), ``algorithms`` (random, NSGA-II on real evaluations, LINAS), ``front`` and ``files`` (the run folder).

    args = SearchArgs(tasks=("arc_easy",), objectives=("accuracy", "params"), evaluations=60, out="runs/a")
    result = search(args)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.device import dtype_name
from llamanas.model.load import load_config, resolve, resolve_placement
from llamanas.search import objectives as objmod
from llamanas.search.algorithms import BatchCache, Context
from llamanas.search.args import DTYPE_BYTES, SearchArgs, resolve_goals
from llamanas.search.counts import Counts
from llamanas.search.files import LATENCY_TABLE_FILE, RunFiles, RunInfo
from llamanas.search.front import FrontMember, front_of, hypervolume_trace
from llamanas.search.latency import LatencyTable
from llamanas.search.objectives import Constraint, Objective
from llamanas.search.problem import Goals
from llamanas.search.store import Store
from llamanas.search.trajectory import Evaluated, Trajectory, clock
from llamanas.search.warm_start import interleave
from llamanas.search.workers import EvalSettings, EvaluatorSpec, SupernetSpec, make_pool
from llamanas.supernet.elastic import read_supernet_meta
from llamanas.supernet.space import DEFAULT_SEARCH_SPACE, SearchSpace
from llamanas.supernet.subnet import SubnetConfig

# Builds a latency table for a run (deploy.speed.build_latency_table_for): (args, space, out path) ->
# the table or the path it was saved to. Passed in by the caller: search cannot import deploy.
LatencyTableBuilder = Callable[["SearchArgs", SearchSpace, Path], "LatencyTable | str | Path"]


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
    questions: list[int] = dataclasses.field(default_factory=list)
    """Questions scored by the run after each evaluation (a --halving run's low rungs included)."""


def resolve_space(args: SearchArgs) -> SearchSpace:
    """The space of the search: --space > the run folder's own (``adopt_run``) > a saved super-network's >
    ``DEFAULT_SEARCH_SPACE``."""
    return adopt_run(args)[1] or new_space(args)


def new_space(args: SearchArgs) -> SearchSpace:
    """The space of a new run: --space > a saved super-network's > ``DEFAULT_SEARCH_SPACE``."""
    arch = Arch.from_hf(load_config(args.model))
    if args.space:
        return SearchSpace.from_file(args.space, arch)
    meta = read_supernet_meta(resolve(args.model))
    return (
        SearchSpace.from_saved(meta["space"])
        if "space" in meta
        else SearchSpace.from_file(DEFAULT_SEARCH_SPACE, arch)
    )


def resolve_dtype(args: SearchArgs, custom_evaluator: bool) -> SearchArgs:
    """``args`` with the dtype that runs instead of ``auto``: it keys the stored results."""
    if args.dtype != "auto":
        return args
    # A custom evaluator places its own model; float32 is the reference.
    dtype = (
        "float32" if custom_evaluator else dtype_name(resolve_placement(args.model, "auto", args.device)[1])
    )
    return dataclasses.replace(args, dtype=dtype)


def prepare_goals(
    args: SearchArgs, space: SearchSpace, latency_table: LatencyTable | None = None
) -> tuple[list[Objective], list[Constraint], Counts]:
    """Resolve objectives and constraints, and reject impossible constraints before loading anything.

    With ``latency_table`` (``--runtime llamacpp``) latency and throughput are computed from it like counts.
    """
    counts = Counts(space, DTYPE_BYTES[args.dtype], args.seq_len, latency_table=latency_table)
    objectives, constraints = resolve_goals(args, args.runtime if latency_table is not None else "hf")
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


def open_run(
    args: SearchArgs,
    space: SearchSpace,
    goals: Goals,
    settings: EvalSettings,
    table: LatencyTable | None,
    store: Store,
    fingerprint: str,
    reference: dict[str, tuple[float, float]],
) -> int:
    """Register the run in the store (refusing other settings under the same name) and write its run.json
    (and its latency table); returns the store's run id."""
    run_name = str(args.run_dir.resolve())
    run_config = {
        **args.trajectory_dict(),
        "space": space.to_dict(),
        "fingerprint": fingerprint,
        "settings_hash": settings.hash(),
    }
    if table is not None:
        run_config["latency_table"] = table.digest
    run_id = store.open_run(run_name, run_config)
    files = RunFiles(args.run_dir)
    if table is not None:
        files.write_latency_table(table)
    files.write_info(
        RunInfo(
            args=args,
            run_name=run_name,
            store=str(args.store_path.resolve()),
            space=space.to_dict(),
            objectives=[o.to_dict() for o in goals.objectives],
            constraints=[c.to_dict() for c in goals.constraints],
            bounds={o.name: list(b) for o, b in zip(goals.objectives, goals.bounds, strict=True)},
            reference={k: list(v) for k, v in reference.items()},
            fingerprint=fingerprint,
            settings=settings,
            runtime=args.runtime,
            latency_table=None
            if table is None
            else {
                "file": LATENCY_TABLE_FILE,
                "source": args.latency_table,
                "digest": table.digest,
                "timing": table.timing,
                "holdout": table.holdout,
            },
        )
    )
    return run_id


# Options whose default changed after runs had been made with the old one (warm_start: () until 2026-12-06). A
# run folder resumes with its own value where the option is left at today's default, so the command that made
# it still resumes it; the store keys stay as they were. The space is kept the same way (width became the
# default after runs had been made in the full space).
RUN_KEEPS = ("warm_start",)


def adopt_run(args: SearchArgs) -> tuple[SearchArgs, SearchSpace | None]:
    """What a run folder being resumed keeps of its own, read from its run.json once: ``args`` with its value
    of each ``RUN_KEEPS`` option left at today's default, and its space unless --space names one.
    ``(args, None)`` for a new folder."""
    files = RunFiles(args.run_dir)
    if not files.has_info():
        return args, None
    info = files.info()
    stored = info["args"]
    defaults = {f.name: f.default for f in dataclasses.fields(SearchArgs)}
    keep = {
        k: tuple(stored.get(k) or ())
        for k in RUN_KEEPS
        if getattr(args, k) == defaults[k] and tuple(stored.get(k) or ()) != defaults[k]
    }
    space = None if args.space else SearchSpace.from_saved(info["space"])
    return (dataclasses.replace(args, **keep) if keep else args), space


def warm_start_seeds(args: SearchArgs, pool) -> list[SubnetConfig]:
    """The ``--warm-start`` configs: read back from the run folder, or made by the evaluator and saved."""
    if not args.warm_start:
        return []
    files = RunFiles(args.run_dir)
    seeds = files.warm_start(args.warm_start)
    if seeds is None:
        seeds = pool.warm_start(args.warm_start)
        files.write_warm_start(seeds)
    return interleave(seeds)


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
    deadline = clock() + 60 * args.minutes if args.minutes else None
    args.check()
    args, run_space = adopt_run(args)
    args = resolve_dtype(args, custom_evaluator=evaluator is not None)
    space = space or run_space or new_space(args)
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
        warm_start_windows=args.warm_start_windows,
    )
    args.run_dir.mkdir(parents=True, exist_ok=True)
    files = RunFiles(args.run_dir)
    with Store(args.store_path) as store:
        pool = make_pool(spec, args.workers, args.ray_address)
        try:
            fingerprint = pool.fingerprint()
            reference = store.reference(fingerprint, settings.hash(), pool.reference)
            goals = Goals(objectives, constraints, [objmod.bounds(o, counts, reference) for o in objectives])
            run_id = open_run(args, space, goals, settings, table, store, fingerprint, reference)
            traj = Trajectory(
                space,
                goals,
                counts,
                args.evaluations,
                store,
                run_id,
                pool,
                fingerprint,
                settings,
                progress,
                deadline=deadline,
            )

            def on_batch():
                files.export(goals, traj.history, store.quality(run_id))

            ctx = Context(
                space,
                goals,
                counts,
                traj,
                on_batch=on_batch,
                quality=lambda loop, name, row: store.put_quality(run_id, loop, name, row),
                batches=BatchCache(store, run_id),
                warm=warm_start_seeds(args, pool),
                proxy=pool.proxy if settings.proxy_windows else None,
                rung=(lambda cfgs: traj.rung(cfgs, args.low_limit)) if args.halving else None,
            )
            args.algorithm_object().run(ctx)
            on_batch()
            return SearchResult(
                args.run_dir,
                front_of(goals, traj.history),
                hypervolume_trace(goals, traj.history),
                len(traj.history),
                traj.computed,
                time.time() - t0,
                traj.spent,
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
    files = RunFiles(run_dir)
    info = files.run_info()
    space = SearchSpace.from_saved(info.space)
    goals = info.goals()
    with Store(info.store_path(run_dir), create=False) as store:
        run_id = store.run_id(info.run_name)
        records = store.run_records(run_id)
    evaluated = [
        Evaluated(seq, r.config, space.encode(r.config), r.measured, goals.values(r.measured), True)
        for seq, r in records
    ]
    return RunView(files.info(), goals, evaluated)


def parse_member_ref(ref: str) -> tuple[Path, int] | None:
    """``RUN_DIR:ID`` -> (run dir, id) when RUN_DIR holds a run; None for anything else."""
    head, sep, tail = ref.rpartition(":")
    if not sep or not tail.strip().isdigit() or not RunFiles(head).has_info():
        return None
    return Path(head), int(tail)
