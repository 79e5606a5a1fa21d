"""What a score means, as lm-eval's ``metric_list`` keeps it beside each task: which way is better, whether it
is a proportion in [0, 1] with a chance level, and when a score cannot be told from guessing. The search
objectives (directions, hypervolume bounds), the tables and the report take these facts from here."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llamanas.errors import unknown

CHANCE_STDERRS = 2  # a score this many standard errors or fewer from chance is marked "at chance"


def at_chance(value: float | None, stderr: float | None, chance: float | None) -> bool:
    """Whether a score cannot be told from uniform guessing (False when any of the three is unknown)."""
    if value is None or stderr is None or chance is None:
        return False
    return abs(value - chance) <= CHANCE_STDERRS * stderr


@dataclass(frozen=True)
class Metric:
    """A per-task score, with the facts lm-eval's ``metric_list`` keeps beside it (``higher_is_better``)."""

    name: str
    higher_is_better: bool
    bounded: bool  # a proportion in [0, 1] (else in [0, inf)): normalised as is, binomial standard errors
    chance: bool  # uniform guessing scores the task's chance level (TaskResult.chance, TaskSpec.chance)
    unit: str = ""

    @property
    def range(self) -> tuple[float, float]:
        """The values the metric can take."""
        return (0.0, 1.0) if self.bounded else (0.0, math.inf)


# Every metric ``evaluate`` reports: the tasks' own (TaskSpec.metrics), gold_nll for all, mc2 for truthfulqa_mc2.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("acc", higher_is_better=True, bounded=True, chance=True),
        Metric("acc_norm", higher_is_better=True, bounded=True, chance=True),
        Metric("mc2", higher_is_better=True, bounded=True, chance=True),
        Metric("gold_nll", higher_is_better=False, bounded=False, chance=False, unit="nats"),
    )
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise unknown("metric", name, METRICS)
    return METRICS[name]
