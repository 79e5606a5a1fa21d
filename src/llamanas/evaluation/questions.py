"""Which questions of each task are asked, and how: one frozen object from the command line to the scorer.

Every command and function that evaluates (``evaluate``, ``prepare``, ``evaluate_gguf``, ``quantize_front``,
``run_baselines``, a search's ``EvalSettings``) takes the same ``Questions``, so a selection and a report
are told apart by one visible value (``offset``), never by a keyword threaded through five signatures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from llamanas.errors import LlamanasError


@dataclass(frozen=True)
class Questions:
    """A seeded subset of each task's split, with its few-shot count."""

    split: str | None = None
    """Data split, e.g. validation or test (default: each task's lm-eval split). Choose on validation,
    claim on test."""
    limit: int | None = None
    """Evaluate a seeded random subset of N questions per task (default: all)."""
    num_fewshot: int | None = None
    """Few-shot examples (default: the task's, usually 0)."""
    seed: int = 0
    """Seed of the --limit subset: the same seed gives the same questions."""
    offset: int = 0
    """Skip the first N questions of the seeded order: with --offset 100 the questions are disjoint from those
    a search used with --limit 100 and the same seed (select on one part, report on the other)."""

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise LlamanasError(f"--limit must be >= 1; got {self.limit}.")
        if self.offset < 0:
            raise LlamanasError(f"--offset must be >= 0; got {self.offset}.")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise LlamanasError(f"--num-fewshot must be >= 0; got {self.num_fewshot}.")

    def questions(self) -> Questions:
        """Just the questions (``EvalSettings`` and other subclasses carry more)."""
        return Questions(self.split, self.limit, self.num_fewshot, self.seed, self.offset)

    def to_dict(self) -> dict:
        return asdict(self.questions())

    def override(self, **changes) -> Questions:
        """These questions with ``changes`` applied; a None leaves the field as it is (a flag not given)."""
        return replace(self.questions(), **{k: v for k, v in changes.items() if v is not None})
