"""Reading a run folder (and optionally a baselines folder) into one ``ReportData``.

Kept apart from the drawing so the analysis and both figure back ends work on one in-memory view, and
so a half-written run (no store yet, no quantized fronts, no baselines) is handled in one place: every
input that is missing is recorded in ``ReportData.missing`` with the reason instead of raising.

Every file is read through its owner: the results store and ``run.json`` through the search stage's
``load_run``, the files the search, ``quantize_front`` and ``time_front`` export (``front.json``,
``hypervolume.csv``, ``predictors.csv``, ``front_int8.json``/``front_int4.json``, and
``front_llamacpp.json``: the front timed in llama.cpp) through ``search.files.RunFiles``. What a score means
(which way is better, its chance level) is the task metric's (``evaluation.tasks``). An accuracy within two
standard errors of chance is marked (``Point.at_chance``): such a sub-network cannot be told from random
guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from llamanas.deploy.speed import RUNTIME
from llamanas.errors import LlamanasError
from llamanas.evaluation.metrics import METRICS, at_chance
from llamanas.evaluation.tasks import nominal_chance
from llamanas.evidence.baselines import read_baselines
from llamanas.model.arch import Arch
from llamanas.search.files import RunFiles
from llamanas.search.run import load_run
from llamanas.supernet.precision import METHODS
from llamanas.supernet.subnet import SubnetConfig


@dataclass(frozen=True)
class Score:
    """The accuracy-like value plotted on the y axis: the mean of ``metric`` over ``tasks``."""

    name: str
    metric: str
    tasks: tuple[str, ...]
    higher_is_better: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} ({self.metric} over {', '.join(self.tasks)})" if self.tasks else self.name

    @property
    def bounded(self) -> bool:
        """A proportion in [0, 1]: binomial standard errors, and one point is 0.01."""
        return self.metric in METRICS and METRICS[self.metric].bounded

    @property
    def has_chance(self) -> bool:
        """Uniform guessing scores the tasks' chance level on this metric."""
        return self.metric in METRICS and METRICS[self.metric].chance

    def from_measured(self, m: dict) -> tuple[float | None, float | None, float | None]:
        """(value, standard error, chance) from a store's measured values (``acc:<task>``, ``n:<task>``)."""
        vals = [m.get(f"{self.metric}:{t}") for t in self.tasks]
        if not self.tasks or any(v is None or not math.isfinite(v) for v in vals):
            return None, None, None
        value = sum(vals) / len(vals)
        se = chance = None
        if self.bounded:
            ses = []
            for t, p in zip(self.tasks, vals, strict=True):
                n = m.get(f"n:{t}")
                ses.append(math.sqrt(max(p * (1 - p), 0.0) / (n - 1)) if n and n > 1 else None)
            if all(s is not None for s in ses):
                se = math.sqrt(sum(s * s for s in ses)) / len(ses)
        if self.has_chance:
            chances = [m.get(f"chance:{t}", nominal_chance(t)) for t in self.tasks]
            if all(c is not None for c in chances):
                chance = sum(chances) / len(chances)
        return value, se, chance

    def from_results(self, results: dict) -> tuple[float | None, float | None, float | None]:
        """(value, standard error, chance) from ``{task: TaskResult.to_dict()}``."""
        rs = [results.get(t) for t in self.tasks]
        if not self.tasks or any(r is None or self.metric not in r.get("metrics", {}) for r in rs):
            return None, None, None
        value = sum(r["metrics"][self.metric] for r in rs) / len(rs)
        ses = [r.get("stderr", {}).get(self.metric) for r in rs]
        se = math.sqrt(sum(s * s for s in ses)) / len(ses) if all(s is not None for s in ses) else None
        chance = None
        if self.has_chance:
            cs = [
                r.get("chance") if r.get("chance") is not None else nominal_chance(t)
                for r, t in zip(rs, self.tasks, strict=True)
            ]
            chance = sum(cs) / len(cs) if all(c is not None for c in cs) else None
        return value, se, chance


@dataclass
class Point:
    """One model on the plots: a search evaluation, a baseline, the base model or a quantized one."""

    label: str
    kind: str  # evaluated | base | depth | shortgpt | width | int8 | int4 ...
    config: dict | None
    params: float | None
    score: float | None
    stderr: float | None = None
    chance: float | None = None
    latency: float | None = None
    bytes: float | None = None
    decode_ms: float | None = None  # ms per decoded token in a runtime (front_llamacpp.json)
    source: str = ""
    on_front: bool = False

    @property
    def at_chance(self) -> bool:
        """Within two standard errors of chance (only when both are known)."""
        return at_chance(self.score, self.stderr, self.chance)


@dataclass
class ReportData:
    run_dir: Path
    info: dict
    score: Score
    arch: Arch | None
    space: dict | None
    evaluated: list[Point]
    front: list[Point]
    hypervolume: list[dict] | None
    predictors: list[dict] | None
    quantized: dict[str, list[tuple[Point, Point]]]
    baselines: list[Point]
    baselines_info: dict | None
    base: Point | None
    notes: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    runtime: dict | None = None  # front_llamacpp.json's settings (type, prompt and decode tokens, threads...)
    runtime_front: list[Point] = field(default_factory=list)  # the front timed there
    runtime_predicted: list[Point] = field(default_factory=list)  # the latency table's prediction of it


def _read(read, *args):
    """``read(*args)``, a ``RunFiles`` reader, or None when the file is missing or unreadable (the report
    says so instead of failing)."""
    try:
        return read(*args)
    except LlamanasError:
        return None


def choose_score(info: dict, front: dict | None) -> Score:
    """The run's first maximised task objective (``accuracy``, ``acc_norm``, ``acc:<task>``), else its
    first task objective, else accuracy over its tasks."""
    args = info.get("args", {}) if info else {}
    tasks = tuple(args.get("tasks") or ())
    objectives = (info or {}).get("objectives") or (front or {}).get("objectives") or []
    task_objs = [o for o in objectives if o.get("source") == "task"]
    pick = next((o for o in task_objs if o.get("direction") == "max"), task_objs[0] if task_objs else None)
    if pick is None:
        return Score("accuracy", "acc", tasks)
    name = pick["name"]
    metric, _, task = name.partition(":")
    metric = {"accuracy": "acc"}.get(metric, metric)
    return Score(name, metric, (task,) if task else tasks, pick.get("direction", "max") == "max")


def _point_from_measured(label: str, kind: str, cfg: dict, measured: dict, score: Score, arch) -> Point:
    value, se, chance = score.from_measured(measured)
    params = measured.get("params")
    if params is None and arch is not None:
        params = SubnetConfig.from_dict(cfg).num_params(arch)
    lat = measured.get("latency")
    return Point(
        label,
        kind,
        cfg,
        params,
        value,
        se,
        chance,
        latency=lat if lat is not None and math.isfinite(lat) else None,
        bytes=measured.get("bytes"),
    )


def _timed_point(label: str, kind: str, entry: dict, measured: dict, speed: dict, score, arch) -> Point:
    """A front member of ``front_llamacpp.json`` at ``speed`` (its ``latency`` and ``throughput``: as timed,
    or as the latency table predicted them)."""
    p = _point_from_measured(label, kind, entry["config"], measured, score, arch)
    p.latency, p.decode_ms = speed.get("latency"), 1000.0 / speed["throughput"]
    return p


def _point_from_results(label, kind, cfg, results, score, arch, **kw) -> Point:
    value, se, chance = score.from_results(results)
    params = kw.pop("params", None)
    if params is None and cfg is not None and arch is not None:
        params = SubnetConfig.from_dict(cfg).num_params(arch)
    return Point(label, kind, cfg, params, value, se, chance, **kw)


def load_data(run_dir: str | Path, baselines: str | Path | None = None) -> ReportData:
    """Read everything the report shows; what is missing is recorded in ``missing`` with the reason."""
    run = Path(run_dir)
    if not run.is_dir():
        raise LlamanasError(f"Run folder {str(run_dir)!r} does not exist.")
    # The store and run.json through the search stage's reader; run.json alone when the store fails.
    files = RunFiles(run)
    view, unread = None, None
    try:
        view = load_run(run)
    except Exception as e:  # noqa: BLE001 - the report must still be written without the store
        unread = e
    info = view.info if view is not None else _read(files.info) or {}
    front_json = _read(files.front_file)
    missing: dict[str, str] = {}
    notes: list[str] = []
    if not info:
        notes.append("No run.json in the run folder: settings unknown.")
    score = choose_score(info, front_json)
    arch = space = None
    if isinstance(info.get("space"), dict):
        space = info["space"]
        try:
            arch = Arch(**space["arch"])
        except (KeyError, TypeError):
            arch = None

    # All evaluations (the store), else the front only.
    evaluated: list[Point] = []
    try:
        if view is None:
            raise unread
        front_ids = {m.id for m in view.front}
        for e in view.evaluated:
            p = _point_from_measured(f"#{e.seq}", "evaluated", e.config.to_dict(), e.measured, score, arch)
            p.on_front = e.seq in front_ids
            evaluated.append(p)
    except Exception as e:  # noqa: BLE001 - the report must still be written without the store
        missing["evaluations"] = (
            f"the results store could not be read ({_first_line(e)}); using front.json only"
        )
    front: list[Point] = []
    if front_json:
        for m in front_json.get("members", []):
            p = _point_from_measured(
                f"#{m.get('id')}", "evaluated", m["config"], m.get("measured", {}), score, arch
            )
            p.on_front = True
            front.append(p)
    elif evaluated:
        front = [p for p in evaluated if p.on_front]
    else:
        missing["front"] = "no front.json in the run folder"
    if not evaluated:
        evaluated = list(front)
    front.sort(key=lambda p: p.params or 0)

    hv = _read(files.hypervolume)
    if not hv:
        missing["hypervolume"] = "no hypervolume.csv (or it is empty) in the run folder"
    pred = _read(files.predictors)
    if not pred:
        missing["predictors"] = "no predictors.csv rows (random and NSGA-II searches train no predictors)"

    quantized: dict[str, list[tuple[Point, Point]]] = {}
    for method in METHODS:
        q = _read(files.front_after, method)
        if not q:
            continue
        pairs = []
        for i, e in enumerate(q.get("points", [])):
            orig_measured = (e.get("original") or {}).get("measured", {})
            before = _point_from_measured(f"front {i + 1}", "front", e["config"], orig_measured, score, arch)
            before.bytes = e.get("bytes_fp16")
            after = _point_from_results(
                f"front {i + 1} {method}",
                method,
                e["config"],
                e.get("results", {}),
                score,
                arch,
                params=e.get("params"),
                bytes=e.get("bytes"),
                latency=e.get("latency_ms"),
            )
            pairs.append((before, after))
        quantized[method] = pairs
    if not quantized:
        names = " / ".join(files.front_after_path(m).name for m in METHODS)
        missing["quantized"] = f"no {names} in the run folder (run `llamanas quantize --front RUN_DIR`)"

    runtime, runtime_front, runtime_predicted = None, [], []
    timed = _read(files.front_after, RUNTIME)
    if timed and timed.get("points"):
        runtime = {k: v for k, v in timed.items() if k != "points"}
        for k, e in enumerate(timed["points"]):
            measured = (e.get("original") or {}).get("measured", {})
            point = _timed_point(f"front {k + 1} (llama.cpp)", "runtime", e, measured, e, score, arch)
            point.on_front = True
            runtime_front.append(point)
            guess = e.get("predicted")
            if guess and guess.get("throughput"):
                label = f"front {k + 1} (table)"
                runtime_predicted.append(_timed_point(label, "predicted", e, measured, guess, score, arch))

    base_points: list[Point] = []
    b_info = None
    if baselines is not None:
        try:
            b = read_baselines(baselines)
            b_info = {k: v for k, v in b.to_dict().items() if k != "rows"}
            for r in b.rows:
                if r.config is None:
                    continue
                label = "base model" if r.method == "base" else f"{r.method} {r.target:.0%}"
                if r.source != "base":
                    label += f" ({r.source})"
                base_points.append(
                    _point_from_results(
                        label, r.method, r.config, r.results, score, arch, params=r.params, source=r.source
                    )
                )
            searched = _read(files.eval_settings)  # the search's questions (None without run.json)
            searched = searched.questions().to_dict() if searched is not None else {}
            diff = [
                k
                for k in ("split", "limit", "num_fewshot", "seed")
                if searched and searched[k] != getattr(b, k)
            ]
            if set(score.tasks) - set(b.tasks):
                diff.append("tasks")
            if diff:
                notes.append(
                    "Baselines were evaluated with different settings than the search ("
                    + ", ".join(f"{k}: {getattr(b, k)!r} vs {searched[k]!r}" for k in diff)
                    + "); they are not directly comparable."
                )
        except LlamanasError as e:
            missing["baselines"] = str(e)
    else:
        missing["baselines"] = "no baselines folder given (llamanas report RUN_DIR --baselines DIR)"

    base = None
    if arch is not None:
        full = SubnetConfig.full(arch).to_dict()
        base = next((p for p in evaluated if p.config == full), None)
    if base is None:
        base = next((p for p in base_points if p.kind == "base" and p.source == "base"), None)
    if base is not None:
        base = Point(**{**base.__dict__, "label": "base model", "kind": "base"})
    return ReportData(
        run,
        info,
        score,
        arch,
        space,
        evaluated,
        front,
        hv,
        pred,
        quantized,
        base_points,
        b_info,
        base,
        notes,
        missing,
        runtime=runtime,
        runtime_front=runtime_front,
        runtime_predicted=runtime_predicted,
    )


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
