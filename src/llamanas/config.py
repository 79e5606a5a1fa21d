"""Configs as dataclasses at the boundary (run.json, a checkpoint's args): read strictly, resumed knowingly.

A field marked ``resumable()`` may differ between an interrupted run and its resumption because it does not
change any result (where the output goes, how many workers, how often to save); every other field must match.
The mark sits on the field itself, so the list cannot drift from the dataclass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from llamanas.errors import LlamanasError

_RESUMABLE = "resumable"


def digest(d: dict) -> str:
    """A short stable key of JSON-able settings (sorted keys): what keys stores and resumable files."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def resumable(default: Any) -> Any:
    """A dataclass field with ``default`` that a resumed run may change."""
    return dataclasses.field(default=default, metadata={_RESUMABLE: True})


def resumable_fields(cls) -> tuple[str, ...]:
    """The names of ``cls``'s fields marked ``resumable``."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(_RESUMABLE))


def resume_conflicts(saved, now) -> str:
    """The fields (not marked ``resumable``) in which ``now`` differs from the ``saved`` settings of a run,
    as "name: now vs there" text; empty when the run may be resumed with ``now``."""
    free = resumable_fields(type(now))
    diff = [
        f.name
        for f in dataclasses.fields(now)
        if f.name not in free and getattr(saved, f.name) != getattr(now, f.name)
    ]
    return ", ".join(f"{k}: {getattr(now, k)!r} now vs {getattr(saved, k)!r} there" for k in diff)


def check_at_least(*checks: tuple[str, float, float]) -> None:
    """Each ``(flag, value, lowest)``: a value below its lowest is an error that names the flag and both."""
    for flag, value, lowest in checks:
        if value < lowest:
            raise LlamanasError(f"{flag} must be >= {lowest}; got {value}.")


def check_above(*checks: tuple[str, float | None, float]) -> None:
    """Each ``(flag, value, bound)``: a value given (not None) must be above its bound."""
    for flag, value, bound in checks:
        if value is not None and not value > bound:
            raise LlamanasError(f"{flag} must be > {bound}; got {value}.")


def from_dict_strict(cls, d: dict, what: str):
    """Build dataclass ``cls`` from ``d``; unknown keys are an error (never silently dropped)."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    extra = set(d) - allowed
    if extra:
        raise LlamanasError(f"Unknown {what} {sorted(extra)}; allowed: {sorted(allowed)}.")
    return cls(**d)
