"""Prompts exactly as lm-eval 0.4 builds them: few-shot sampling, the description, choices and targets."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from llamanas.errors import LlamanasError
from llamanas.evaluation.sources import Doc
from llamanas.evaluation.tasks import FEWSHOT_SEED, TaskSpec, fewshot_pool_split, get_task, load_docs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    """The loglikelihood requests of one document: score ``contexts[i] + continuations[i]`` per choice."""

    contexts: list[str]  # one per choice (identical unless the task has multiple inputs)
    continuations: list[str]
    choices: list[str]  # doc_to_choice: their lengths normalise acc_norm (lm-eval: characters, no delimiter)
    gold: int
    labels: list[int] | None = None  # truthfulqa_mc2: 1 for each true answer
    fewshot: list[int] = field(default_factory=list)  # indices of the few-shot docs in the pool


def effective_num_fewshot(spec: TaskSpec, num_fewshot: int | None) -> int:
    """lm-eval: a YAML ``num_fewshot: 0`` is never overridden; otherwise the argument, default 0."""
    if spec.num_fewshot == 0:
        if num_fewshot:
            log.info(
                "num_fewshot is fixed to 0 for %s in its lm-eval config; ignoring %d", spec.name, num_fewshot
            )
        return 0
    if num_fewshot is None:
        return spec.num_fewshot or 0
    if num_fewshot < 0:
        raise LlamanasError(f"num_fewshot must be >= 0, got {num_fewshot!r}.")
    return num_fewshot


def _excludes_eval_doc(spec: TaskSpec, split: str) -> bool:
    """lm-eval passes the eval doc to the sampler (to drop it) iff fewshot_split == test_split.

    A non-default ``split`` is emulated as lm-eval with ``test_split: <split>``.
    """
    test_split = spec.test_split if split == spec.default_split else split
    return spec.fewshot_split == test_split


def _sample_fewshot(
    spec: TaskSpec, pool: Sequence[Doc], doc: Doc, n: int, rnd: random.Random, exclude: bool
) -> list[int]:
    """lm_eval/api/samplers.py, on pool indices (``Random.sample`` only uses the pool's length)."""
    if n == 0:
        return []
    if spec.fewshot_sampler == "first_n":
        idx = [i for i in range(len(pool)) if pool[i] != doc] if exclude else list(range(len(pool)))
        if n > len(idx):
            raise LlamanasError(
                f"num_fewshot={n} for {spec.name} exceeds the {len(idx)} few-shot documents available."
            )
        return idx[:n]
    if n + exclude > len(pool):
        raise LlamanasError(
            f"num_fewshot={n} for {spec.name} exceeds the {len(pool)} few-shot documents available."
        )
    if exclude:
        res = [i for i in rnd.sample(range(len(pool)), n + 1) if pool[i] != doc][:n]
    else:
        res = rnd.sample(range(len(pool)), n)
    if len(res) < n:  # duplicates of the eval doc in the pool: resample without any copy of it
        rest = [i for i in range(len(pool)) if pool[i] != doc]
        res = rnd.sample(rest, n)
    return res


def _answer_text(spec: TaskSpec, doc: Doc) -> tuple[str, str | None]:
    """(question, answer) of a few-shot example, as lm-eval's build_qa_turn renders them."""
    q, c, a = spec.doc_to_text(doc), spec.doc_to_choice(doc), spec.doc_to_target(doc)
    if isinstance(q, int):  # multiple inputs: the gold choice is the question, the target the answer
        q, c = c[q], None
    if a is None or a == "":
        return str(q), None
    answer = c[a] if (c and isinstance(a, int)) else (a[0] if isinstance(a, list) else a)
    return str(q), str(answer)


def build_prompt(spec: TaskSpec, doc: Doc, fewshot_docs: Sequence[Doc]) -> Prompt:
    """lm-eval's fewshot_context + construct_requests for one doc (plain text, no chat template)."""
    prefix = spec.description
    for fs in fewshot_docs:
        q, a = _answer_text(spec, fs)
        prefix += q if a is None else q + spec.target_delimiter + a + spec.fewshot_delimiter
    text, choices, target = spec.doc_to_text(doc), spec.doc_to_choice(doc), spec.doc_to_target(doc)
    if isinstance(text, int):  # winogrande: contexts vary per choice, the continuation is fixed
        contexts = [prefix + c for c in choices]
        continuations = [spec.target_delimiter + str(target)] * len(choices)
        gold = text
    else:
        contexts = [prefix + text] * len(choices)
        continuations = [spec.target_delimiter + c for c in choices]
        gold = target if isinstance(target, int) else choices.index(target) if target in choices else -100
    if not 0 <= gold < len(choices):
        raise LlamanasError(f"{spec.name}: gold answer {target!r} is not one of the {len(choices)} choices.")
    labels = list(doc["mc2_targets"]["labels"]) if spec.mc2 else None
    return Prompt(contexts, continuations, list(choices), int(gold), labels)


def build_prompts(name: str, split: str, num_fewshot: int | None, indices: Sequence[int]) -> list[Prompt]:
    """Prompts for the docs at ``indices`` of ``split``, with lm-eval's few-shot examples.

    The few-shot sampler's Random(1234) is consumed in document order over the whole split (as one
    lm-eval run over the split does), so a doc gets the same examples whatever subset is evaluated.
    """
    spec = get_task(name)
    spec.check_split(split)
    docs = load_docs(name, split)
    n_shot = effective_num_fewshot(spec, num_fewshot)
    wanted = sorted(set(int(i) for i in indices))
    if wanted and not 0 <= wanted[0] <= wanted[-1] < len(docs):
        raise LlamanasError(f"Document index out of range for {name}/{split} ({len(docs)} docs).")
    shots: dict[int, list[int]] = {i: [] for i in wanted}
    pool: Sequence[Doc] = ()
    if n_shot > 0 and wanted:
        pool = load_docs(name, fewshot_pool_split(spec))
        rnd = random.Random(FEWSHOT_SEED)
        exclude = _excludes_eval_doc(spec, split)
        upto = wanted[-1] if spec.fewshot_sampler == "default" else -1
        for i in range(upto + 1):  # advance the shared RNG through the docs before the last wanted one
            s = _sample_fewshot(spec, pool, docs[i], n_shot, rnd, exclude)
            if i in shots:
                shots[i] = s
        if spec.fewshot_sampler == "first_n":
            for i in wanted:
                shots[i] = _sample_fewshot(spec, pool, docs[i], n_shot, rnd, exclude)
    out = []
    for i in indices:
        p = build_prompt(spec, docs[int(i)], [pool[j] for j in shots[int(i)]])
        out.append(Prompt(p.contexts, p.continuations, p.choices, p.gold, p.labels, shots[int(i)]))
    return out
