"""A search run's folder: ``RunFiles`` is the one reader and writer of its files, ``RunInfo`` is run.json."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from llamanas.errors import LlamanasError
from llamanas.search import store as storemod
from llamanas.search.args import STORE_FILE, SearchArgs, resolve_goals
from llamanas.search.front import front_of, hypervolume_trace
from llamanas.search.latency import LatencyTable
from llamanas.search.problem import Goals
from llamanas.search.trajectory import Evaluated
from llamanas.search.warm_start import WARM_START_FILE
from llamanas.search.workers import EvalSettings
from llamanas.supernet.space import SearchSpace

RUN_FILE = "run.json"
FRONT_FILE = "front.json"
HYPERVOLUME_FILE = "hypervolume.csv"
PREDICTORS_FILE = "predictors.csv"
LATENCY_TABLE_FILE = "latency_table.json"


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

    def _json(self, name: str, missing: str):
        """A JSON file of the run; ``missing`` says why it may be absent (what to run)."""
        f = self.dir / name
        if not f.is_file():
            raise LlamanasError(f"{self.dir}: no {name} in the run folder ({missing}).")
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise LlamanasError(f"{f} is not valid JSON ({e}); was it written by llamanas?") from e

    def _rows(self, name: str, missing: str) -> list[dict]:
        """A CSV view of the store, numbers as floats (None for an empty cell), text as text."""
        f = self.dir / name
        if not f.is_file():
            raise LlamanasError(f"{self.dir}: no {name} in the run folder ({missing}).")
        with open(f, newline="") as fh:
            return [{k: _cell(v) for k, v in r.items()} for r in csv.DictReader(fh)]

    def info(self) -> dict:
        """``run.json``: the run's settings, space, goals, bounds, fingerprint and store."""
        if not self.has_info():
            raise LlamanasError(f"{str(self.dir)!r} is not a search run directory (no {RUN_FILE} in it).")
        return self._json(RUN_FILE, "written when the search starts")

    def run_info(self) -> RunInfo:
        """``run.json`` read into its dataclass (``info`` is the same file as a plain dict, for display)."""
        return RunInfo.from_dict(self.info())

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
        return recorded_settings(self.info())

    def front_file(self) -> dict:
        """``front.json``: its ``objectives``, ``constraints`` and ``members`` (checked: see ``front``)."""
        f = self.dir / FRONT_FILE
        d = self._json(FRONT_FILE, "has the search finished a batch?")
        members = d.get("members") if isinstance(d, dict) else None
        if not isinstance(members, list):
            raise LlamanasError(
                f"{f}: expected an object with a 'members' list (written by llamanas search)."
            )
        for i, m in enumerate(members):
            if not isinstance(m, dict) or not isinstance(m.get("config"), dict):
                raise LlamanasError(f"{f}: member {i} has no 'config' (a sub-network config object).")
        return d

    def front(self) -> list[dict]:
        """The members of ``front.json``: dicts with ``id``, ``values``, ``measured`` and ``config``."""
        return self.front_file()["members"]

    def hypervolume(self) -> list[dict]:
        """``hypervolume.csv``: ``evaluations``, ``hypervolume`` and ``front_size`` after each evaluation."""
        return self._rows(HYPERVOLUME_FILE, "has the search finished a batch?")

    def predictors(self) -> list[dict]:
        """``predictors.csv``: each LINAS loop's predictor quality per objective (empty for other searches)."""
        return self._rows(PREDICTORS_FILE, "has the search finished a batch?")

    def front_after_path(self, method: str) -> Path:
        return self.dir / f"front_{method}.json"

    def front_after(self, method: str) -> dict:
        """``front_<method>.json`` (see ``write_front_after``): its settings and ``points``."""
        return self._json(
            self.front_after_path(method).name,
            "written by `llamanas quantize --front RUN_DIR`, or by a --runtime llamacpp search",
        )

    def warm_start(self, names: tuple[str, ...]) -> dict | None:
        """``warm_start.json``'s seeds when they were made for ``names`` (None otherwise)."""
        f = self.dir / WARM_START_FILE
        if not f.is_file():
            return None
        seeds = json.loads(f.read_text())
        return seeds if list(seeds) == list(names) else None

    # --- writing (atomic) ----------------------------------------------------------------------
    def write_warm_start(self, seeds: dict) -> None:
        storemod.write_json(self.dir / WARM_START_FILE, seeds)

    def write_info(self, info: RunInfo) -> None:
        storemod.write_json(self.dir / RUN_FILE, info.to_dict())

    def write_latency_table(self, table: LatencyTable) -> Path:
        return table.save(self.latency_table_path)

    def write_front_after(self, method: str, payload: dict) -> Path:
        """``front_<method>.json``: the front re-evaluated after quantization (``deploy.quantize``), or
        timed in a runtime (``front_llamacpp.json``, ``deploy.speed.time_front``)."""
        path = self.front_after_path(method)
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
            run_dir / HYPERVOLUME_FILE,
            ["evaluations", "hypervolume", "front_size"],
            [[n, f"{hv:.6f}", size] for n, hv, size in hypervolume_trace(goals, evaluated)],
        )
        cols = ["loop", "objective", "model", "n_train", "cv_mse", "cv_tau", "n_new", "kendall_tau", "mape"]
        storemod.write_csv(run_dir / PREDICTORS_FILE, cols, [[q.get(c) for c in cols] for q in quality])


def _cell(v: str | None) -> float | str | None:
    """A CSV cell as written by ``store.write_csv``: a number, None (empty, or a None), else the text."""
    if v in ("", None, "None"):
        return None
    try:
        return float(v)
    except ValueError:
        return v


def recorded_settings(info: dict) -> EvalSettings:
    """run.json's evaluation settings (runs made before they were recorded: from the args)."""
    if "settings" in info:
        return EvalSettings.from_dict(info["settings"])
    return SearchArgs.from_dict(info["args"]).settings(timing=False)


@dataclass(frozen=True)
class RunInfo:
    """``run.json``: what a run is (its settings, space and goals) and where its evaluations are."""

    args: SearchArgs
    run_name: str  # the run's key in the store (its folder, resolved, when it started)
    store: str
    space: dict
    objectives: list[dict]
    constraints: list[dict]
    bounds: dict[str, list[float]]
    reference: dict[str, list[float]]
    fingerprint: str
    settings: EvalSettings
    runtime: str = "hf"
    latency_table: dict | None = None  # file, source, digest, timing and hold-out of a llamacpp run's table

    def to_dict(self) -> dict:
        return {
            "args": self.args.to_dict(),
            "run_name": self.run_name,
            "store": self.store,
            "space": self.space,
            "variable_names": list(SearchSpace.from_saved(self.space).variable_names),
            "objectives": self.objectives,
            "constraints": self.constraints,
            "bounds": self.bounds,
            "reference": self.reference,
            "fingerprint": self.fingerprint,
            "settings": self.settings.to_dict(),
            "settings_hash": self.settings.hash(),
            "runtime": self.runtime,
            "latency_table": self.latency_table,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunInfo:
        return cls(
            args=SearchArgs.from_dict(d["args"]),
            run_name=d["run_name"],
            store=d["store"],
            space=d["space"],
            objectives=d.get("objectives", []),
            constraints=d.get("constraints", []),
            bounds=d["bounds"],
            reference=d.get("reference", {}),
            fingerprint=d.get("fingerprint", ""),
            settings=recorded_settings(d),
            runtime=d.get("runtime", "hf"),
            latency_table=d.get("latency_table"),
        )

    def store_path(self, run_dir: Path) -> Path:
        """The results store; the one in ``run_dir`` when the run folder was moved."""
        path = Path(self.store)
        if not path.exists() and (run_dir / STORE_FILE).exists():
            return run_dir / STORE_FILE
        return path

    def goals(self) -> Goals:
        """The run's goals with its recorded bounds."""
        objectives, constraints = resolve_goals(self.args, self.runtime if self.latency_table else "hf")
        return Goals(objectives, constraints, [tuple(self.bounds[o.name]) for o in objectives])
