"""A run's Pareto front and its hypervolume after every evaluation (views of the trajectory)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llamanas.search import objectives as objmod
from llamanas.search.problem import Goals
from llamanas.search.trajectory import Evaluated
from llamanas.supernet.subnet import SubnetConfig


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
