"""Which of the re-scored candidates ``compress`` extracts: the largest one not clearly less accurate.

Every candidate meets the target, so a larger one only gives up speed or size the user already accepted. On
a few hundred questions the most accurate candidate often leads by noise: at 90% the most accurate on the
confirmation questions was an 80.6% sub-network that lost 4.0 ± 1.4 ARC-Easy test points to the 90% one
(docs/benchmarks.md, ``compress`` at 90/80/70%). So the pick is the largest candidate whose accuracy is
within ``tolerance`` paired standard errors of the best one's on the same questions (``tolerance=0``: the
most accurate). The tolerance was chosen on validation questions only (bench/bench_pick.py: on the other
half of the unused ARC-Easy validation questions every tolerance from 1 up beat 0 by 1.6 ± 0.8 points, and
on PIQA validation 2 and 3 beat 0 by 1.5 ± 0.4; 2 is the smaller of the two).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamanas.pipeline.recipe import Recipe
from llamanas.search.files import RunFiles
from llamanas.supernet.subnet import SubnetConfig

PICK_TOLERANCE = 2.0  # standard errors: chosen on validation by bench/bench_pick.py (docs/benchmarks.md)


@dataclass(frozen=True)
class Scored:
    """One candidate: its parameters and its per-question scores per task (the same questions for all)."""

    params: int
    questions: Mapping[str, np.ndarray]

    @property
    def accuracy(self) -> float:
        """Mean over tasks of the task's mean (each task counts once, as in the search's objective)."""
        return float(np.mean([np.mean(v) for v in self.questions.values()]))


def paired_gap(a: Scored, b: Scored) -> tuple[float, float]:
    """``b``'s accuracy minus ``a``'s, and its paired standard error (same questions; tasks weighted equally)."""
    if a.questions.keys() != b.questions.keys():
        raise ValueError(
            f"Candidates scored on different tasks: {sorted(a.questions)} vs {sorted(b.questions)}"
        )
    means, variances = [], []
    for task, qa in a.questions.items():
        d = np.asarray(b.questions[task], dtype=float) - np.asarray(qa, dtype=float)
        means.append(d.mean())
        variances.append(d.var(ddof=1) / len(d) if len(d) > 1 else 0.0)
    k = len(means)
    return float(np.mean(means)), math.sqrt(sum(variances)) / k


def choose(scored: Mapping[int, Scored], tolerance: float) -> int:
    """The key of the largest candidate whose gap to the most accurate one is above ``-tolerance`` standard
    errors (ties: the more accurate). ``tolerance=0`` returns the most accurate (ties: the larger)."""
    if not scored:
        raise ValueError("No candidates to pick from.")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 standard errors, got {tolerance}")
    best = max(scored, key=lambda k: (scored[k].accuracy, scored[k].params))

    def close(k: int) -> bool:
        gap, se = paired_gap(scored[best], scored[k])
        return gap >= 0 or (tolerance > 0 and gap >= -tolerance * se)

    return max((k for k in scored if close(k)), key=lambda k: (scored[k].params, scored[k].accuracy))


def candidates(view, run_dir: Path, recipe: Recipe, n: int) -> list:
    """The sub-networks worth re-scoring: the ``n`` most accurate evaluations that meet the target on the
    selection questions, and the warm start's seeds that meet it (their prior is measured, not sampled)."""
    rows = [e.values for e in view.evaluated]
    feasible = [e for e, ok in zip(view.evaluated, view.goals.feasible(rows), strict=True) if ok]
    out = sorted(feasible, key=lambda e: (-e.values["accuracy"], e.seq))[: max(1, n)]
    seeds = RunFiles(run_dir).warm_start(recipe.warm_start) or {}
    seeded = [SubnetConfig.from_dict(d) for configs in seeds.values() for d in configs]
    chosen = {e.seq for e in out}
    return out + ([e for e in feasible if e.config in seeded and e.seq not in chosen] if n else [])
