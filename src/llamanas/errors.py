"""The one exception type users see: a single line that names the bad value and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LlamanasError(ValueError):
    """Bad input or an unusable artefact. The CLI prints the message alone, without a traceback."""


def unknown(kind: str, value: object, allowed: Iterable[object]) -> LlamanasError:
    """Build an lm-eval-registry-style error: "Unknown task 'x'. Did you mean 'y'? Available: ..."."""
    allowed = [str(a) for a in allowed]
    close = difflib.get_close_matches(str(value), allowed, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(allowed[:40]) + (", ..." if len(allowed) > 40 else "")
    return LlamanasError(f"Unknown {kind} {value!r}.{hint} Available: {shown}.")
