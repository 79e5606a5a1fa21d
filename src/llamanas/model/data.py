"""Local data: finding the shared data folder, and Alpaca-format instruction data.

Offline machines have the project's data beside the checkout in ``../shared/data``; elsewhere set
``LLAMANAS_DATA_DIR``. Online, hub dataset ids work too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from llamanas.errors import LlamanasError

ALPACA_DEMO = "alpaca/alpaca_en_demo.json"


def data_dirs() -> list[Path]:
    """Candidate data folders, most specific first."""
    out = []
    if os.environ.get("LLAMANAS_DATA_DIR"):
        out.append(Path(os.environ["LLAMANAS_DATA_DIR"]))
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for parent in (start, *start.parents):
            cand = parent / "shared" / "data"
            if cand.is_dir():
                out.append(cand)
    return list(dict.fromkeys(out))


def find_data(relpath: str) -> Path | None:
    """The first ``<data dir>/relpath`` that exists, or None."""
    for d in data_dirs():
        if (d / relpath).exists():
            return d / relpath
    return None


@dataclass(frozen=True)
class Example:
    """One instruction example rendered as (prompt, response): the loss is on the response."""

    prompt: str
    response: str


# The Stanford Alpaca prompt template.
_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_records(source: str | Path) -> list[dict]:
    """The raw Alpaca records (``instruction``, ``input``, ``output``) of a JSON/JSONL file or a hub id,
    checked for their keys; ``load_alpaca`` renders them, tools that write new data files extend them."""
    p = Path(source)
    if p.is_file():
        text = p.read_text()
        try:
            rows = (
                [json.loads(line) for line in text.splitlines() if line.strip()]
                if p.suffix == ".jsonl"
                else json.loads(text)
            )
        except json.JSONDecodeError as e:
            raise LlamanasError(
                f"Data file {str(source)!r} is not valid JSON{'L' if p.suffix == '.jsonl' else ''}: {e}"
            ) from None
    elif p.suffix in (".json", ".jsonl") or p.exists() or str(source).startswith((".", "/")):
        raise LlamanasError(f"Data file {str(source)!r} does not exist.")
    else:
        try:
            rows = list(datasets.load_dataset(str(source), split="train"))
        except Exception as e:  # noqa: BLE001
            raise LlamanasError(
                f"Cannot load dataset {str(source)!r} from the hub: {str(e).splitlines()[0]}"
            ) from None
    if not isinstance(rows, list):
        raise LlamanasError(
            f"Data {str(source)!r}: expected a list of records with instruction/input/output."
        )
    for k, r in enumerate(rows):
        if not isinstance(r, dict) or "instruction" not in r or "output" not in r:
            keys = sorted(r) if isinstance(r, dict) else type(r).__name__
            raise LlamanasError(
                f"Data {str(source)!r}, record {k}: expected Alpaca keys instruction/input/output; got {keys}."
            )
    if not rows:
        raise LlamanasError(f"Data {str(source)!r} holds no records.")
    return rows


def load_alpaca(source: str | Path) -> list[Example]:
    """Alpaca-format records (``instruction``, ``input``, ``output``) from a JSON/JSONL file or a hub id."""
    out = []
    for r in alpaca_records(source):
        template = _WITH_INPUT if r.get("input") else _NO_INPUT
        out.append(
            Example(template.format(instruction=r["instruction"], input=r.get("input", "")), str(r["output"]))
        )
    return out
