"""The search problem for pymoo: goals (objectives, constraints, hypervolume bounds), sub-networks as
integer vectors (``SearchSpace.encode``), their repair, duplicate elimination by decoded config, and the
NSGA-II operators every algorithm here uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair

from llamanas.errors import LlamanasError
from llamanas.search.counts import Counts
from llamanas.search.objectives import Constraint, Objective
from llamanas.supernet.space import SearchSpace


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
    """Round and apply ``SearchSpace.repair`` to all rows at once (it is vectorised: pymoo calls this on
    every mating attempt, thousands of times per inner search)."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space

    def _do(self, problem, X, **kwargs):
        return self.space.repair(np.round(np.asarray(X, dtype=float)).astype(int))


def canonical_keys(counts: Counts, X: np.ndarray) -> list[bytes]:
    """One key per decoded sub-network: genes of skipped layers are set to their largest choice."""
    X = np.array(np.atleast_2d(X), dtype=np.int64)
    return [row.tobytes() for row in counts.space.canonical(X)]


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


def make_nsga2(space: SearchSpace, counts: Counts, pop_size: int, sampling: np.ndarray, archive: set[bytes]):
    """NSGA-II with integer SBX/PM (DyNAS-T's operator settings) and config-level duplicate elimination."""
    return NSGA2(
        pop_size=pop_size,
        sampling=sampling,
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=KeyDuplicates(counts, archive),
        repair=SpaceRepair(space),
    )
