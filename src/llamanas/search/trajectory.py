"""The trajectory: a run's evaluations in order, through the results store (cache) and the worker pool.

Resuming is replay: every batch is a deterministic function of the seed and the evaluations before it,
so a restarted run recomputes its batches and finds the configs it already evaluated in the store (the
store commits each evaluation as it finishes). ``Trajectory.evaluate`` spends the budget, never evaluates
a config twice, and checks the replay against the stored history. ``Trajectory.rung`` scores configs on
the first questions only (a multi-fidelity search's low rung): stored under those questions' settings, kept
out of the history and the budget, but counted in the questions the run has spent (``spent``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llamanas.search import objectives as objmod
from llamanas.search.counts import Counts
from llamanas.search.problem import Goals, canonical_keys
from llamanas.search.store import Record, Store
from llamanas.search.workers import EvalSettings, Outcome
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig


@dataclass
class Evaluated:
    seq: int
    config: SubnetConfig
    x: np.ndarray
    measured: dict[str, float]
    values: dict[str, float]  # objective/constraint values by name
    reused: bool  # found in the store (no compute spent by this process)


def clock() -> float:
    """Seconds on the clock the time budget (``--minutes``) is kept by."""
    return time.monotonic()


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
        deadline: float | None = None,
    ):
        self.space, self.goals, self.counts, self.budget = space, goals, counts, budget
        self.deadline = deadline  # clock() after which no new batch starts (a time budget)
        self.store, self.run_id, self.pool = store, run_id, pool
        self.fingerprint, self.settings, self.settings_hash = fingerprint, settings, settings.hash()
        self.on_result = on_result
        self.history: list[Evaluated] = []
        self.keys: set[str] = set()
        self.canon: set[bytes] = set()  # canonical vectors of every evaluated config
        self.computed = 0  # evaluations run by this process
        self.questions = 0  # questions scored so far, low rungs included (store hits count too)
        self.spent: list[int] = []  # self.questions after each evaluation of the history
        self.rung_values: dict[str, dict[str, float]] = {}  # low-rung objective values by config key
        self.live = _LiveFront(goals)

    @property
    def remaining(self) -> int:
        """Evaluations left: the budget's, or 0 once the time budget is spent (then the algorithms stop)."""
        if self.out_of_time:
            return 0
        return self.budget - len(self.history)

    @property
    def out_of_time(self) -> bool:
        return self.deadline is not None and clock() > self.deadline

    def is_new(self, cfg: SubnetConfig) -> bool:
        return cfg.key() not in self.keys

    def evaluate(self, cfgs: list[SubnetConfig]) -> list[Evaluated]:
        """Evaluate new, distinct configs (truncated to the remaining budget), in order."""
        cfgs = cfgs[: max(0, self.budget - len(self.history))]  # a batch begun is finished in time or not
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
            self.questions += records[i].n_items or 0
            self.spent.append(self.questions)
        self.canon.update(canonical_keys(self.counts, np.array([e.x for e in out]).reshape(len(out), -1)))
        return out

    def rung(self, cfgs: list[SubnetConfig], limit: int) -> list[dict[str, float]]:
        """Objective values of ``cfgs`` on the first ``limit`` questions of each task (a low-fidelity rung),
        in order, through the store; not part of the history or the evaluation budget."""
        settings = dataclasses.replace(self.settings, limit=limit, proxy_windows=0, timing=False)
        settings_hash = settings.hash()
        keys = [c.key() for c in cfgs]
        records = self.store.get_many(self.fingerprint, settings_hash, keys)
        todo = [i for i, k in enumerate(keys) if k not in records]
        if todo:
            for j, outcome in self.pool.imap_unordered([cfgs[i] for i in todo], limit=limit):
                rec = self._record(cfgs[todo[j]], outcome, settings, settings_hash)
                self.store.put(rec)
                records[keys[todo[j]]] = rec
        out = []
        for k in keys:
            if k not in self.rung_values:  # proposed again in a later loop: paid for once
                self.questions += records[k].n_items or 0
            self.rung_values[k] = self.goals.values(records[k].measured)
            out.append(self.rung_values[k])
        return out

    def _record(
        self,
        cfg: SubnetConfig,
        outcome: Outcome,
        settings: EvalSettings | None = None,
        settings_hash: str | None = None,
    ) -> Record:
        """The store's record of an outcome under the run's settings, or a low rung's (with its hash)."""
        if settings is None:
            settings, settings_hash = self.settings, self.settings_hash
        measured = {k: float(v) for k, v in outcome.values.items()}
        measured.update(self.counts.of(cfg))  # exact sizes, identical to the extracted checkpoint's
        return Record(
            config=cfg,
            measured=measured,
            fingerprint=self.fingerprint,
            settings_hash=settings_hash,
            settings=settings.to_dict(),
            split=outcome.split,
            n_items=outcome.n_items,
            seed=settings.seed,
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
