"""The evaluator: packed shared-context loglikelihoods equal the plain per-choice computation, and the
metrics equal lm-eval's on hand-made loglikelihoods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llamanas.errors import LlamanasError
from llamanas.evaluation import evaluate as E
from llamanas.evaluation import prompts as P
from llamanas.evaluation import tasks as T
from llamanas.evaluation.prompts import build_prompts
from llamanas.evaluation.questions import Questions
from llamanas.evaluation.tasks import load_docs

CORPUS_TASKS = [("arc_easy", "validation"), ("winogrande", "validation"), ("truthfulqa_mc2", "validation")]


def _tokenizer(bos: bool):
    """A byte-level BPE trained in memory on task text; ``bos`` adds "<s>" in front like LLaMA's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for name, split in CORPUS_TASKS:
        for p in build_prompts(name, split, 0, range(40)):
            texts += [p.contexts[0], *p.continuations]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>" if bos else None, eos_token="</s>")


def _model(family: str, vocab: int, seed: int = 0, layers: int = 2):
    import transformers

    cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[family]
    config = getattr(transformers, cls[0])(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=2048,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, cls[1])(config).eval()
    with (
        torch.no_grad()
    ):  # bigger weights than the default init, so that choices get clearly different scores
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are dominated by per-op overhead; with 2 threads on a shared CPU that overhead
    (threads waiting for each other) makes these tests 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok_bos():
    return _tokenizer(bos=True)


@pytest.fixture(scope="module")
def tok_plain():
    return _tokenizer(bos=False)


def _naive(model, tok, context: str, continuation: str, max_length: int | None = None) -> float:
    """lm-eval HFLM.loglikelihood for one request, written out: one plain forward pass, full logits."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = tok.encode(context)
    cont = tok.encode(context + continuation)[len(ctx) :]
    full = ctx + cont
    if max_length is not None:
        full = full[-(max_length + 1) :]
    inp = torch.tensor([full[:-1]])
    with torch.no_grad():
        logp = model(inp).logits[0].float().log_softmax(-1)
    pos = torch.arange(inp.shape[1] - len(cont), inp.shape[1])
    return float(logp[pos, torch.tensor(cont)].sum())


def _naive_all(model, tok, prepared: E.Prepared, num_fewshot: int = 0, max_length: int | None = None):
    out = []
    for req in prepared.tasks:
        for p in build_prompts(req.task, req.split, num_fewshot, req.indices):
            out += [
                _naive(model, tok, c, x, max_length) for c, x in zip(p.contexts, p.continuations, strict=True)
            ]
    return np.asarray(out)


@pytest.mark.parametrize("family,bos", [("llama", True), ("qwen2", False)])
def test_packed_equals_per_choice_forward(family, bos, tok_bos, tok_plain, monkeypatch):
    # Offline there is no train split: draw ARC / WinoGrande few-shot examples from validation instead.
    monkeypatch.setattr(P, "fewshot_pool_split", lambda spec: spec.fewshot_split or "validation")
    tok = tok_bos if bos else tok_plain
    model = _model(family, len(tok))
    tasks = ["arc_easy", "winogrande", "truthfulqa_mc2", "mmlu_anatomy"]
    prepared = E.prepare(
        tok, tasks, questions=Questions(split="validation", limit=5, num_fewshot=2), batch_tokens=1200
    )
    assert len(prepared.batches) > 2  # several batches ...
    assert any(b.input_ids.shape[0] > 1 for b in prepared.batches)  # ... of padded rows ...
    assert any(int(b.docs.max()) > 0 for b in prepared.batches)  # ... some holding several documents
    packed = E.loglikelihoods(model, prepared)
    naive = _naive_all(model, tok, prepared, num_fewshot=2)
    assert packed.shape == naive.shape
    assert np.abs(packed - naive).max() <= 1e-4
    # sharing really happened: fewer tokens than one sequence per choice
    per_choice = sum(
        len(tok.encode(c + x)) for r in prepared.tasks for p in build_prompts(r.task, r.split, 2, r.indices)
        for c, x in zip(p.contexts, p.continuations, strict=True)
    )  # fmt: skip
    assert sum(int((b.segments != -2).sum()) for b in prepared.batches) < 0.6 * per_choice


def test_left_truncation_like_lm_eval(tok_plain):
    model = _model("llama", len(tok_plain))
    prepared = E.prepare(
        tok_plain, "arc_easy", questions=Questions(split="validation", limit=4), max_length=24
    )
    assert (
        np.abs(
            E.loglikelihoods(model, prepared) - _naive_all(model, tok_plain, prepared, max_length=24)
        ).max()
        <= 1e-4
    )


def test_score_follows_in_place_model_changes(tok_plain):
    """A super-network swaps layers between calls: score() must use the model as it is now."""
    model = _model("llama", len(tok_plain), layers=3)
    prepared = E.prepare(tok_plain, "arc_easy", questions=Questions(split="validation", limit=6))
    full = E.loglikelihoods(model, prepared)
    assert np.array_equal(full, E.loglikelihoods(model, prepared))  # deterministic
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList(list(layers)[:1])
    short = E.loglikelihoods(model, prepared)
    model.model.layers = layers
    assert np.abs(short - full).max() > 1e-3
    model.model.layers = torch.nn.ModuleList(list(layers)[:1])
    assert np.abs(short - _naive_all(model, tok_plain, prepared)).max() <= 1e-4


def test_evaluate_end_to_end(tok_plain):
    model = _model("llama", len(tok_plain))
    res = E.evaluate(
        model,
        tok_plain,
        ["arc_easy", "truthfulqa_mc2"],
        questions=Questions(split="validation", limit=7),
        progress=False,
    )
    arc = res["arc_easy"]
    assert (arc.task, arc.split, arc.n, arc.num_fewshot) == ("arc_easy", "validation", 7, 0)
    assert set(arc.metrics) == set(arc.stderr) == {"acc", "acc_norm", "gold_nll"}
    assert 0 <= arc.metrics["acc"] <= 1 and arc.metrics["gold_nll"] > 0
    assert arc.chance == pytest.approx(
        np.mean([1 / len(p.choices) for p in build_prompts("arc_easy", "validation", 0, E.subset(570, 7, 0))])
    )
    mc2 = res["truthfulqa_mc2"]
    assert mc2.metrics["mc2"] == mc2.metrics["acc"] and 0 < mc2.metrics["mc2"] < 1
    assert arc.to_dict()["metrics"] == arc.metrics
    # default split is lm-eval's test_split (ARC test comes from the oe-eval dump)
    assert (
        E.evaluate(model, tok_plain, "arc_easy", questions=Questions(limit=2), progress=False)[
            "arc_easy"
        ].split
        == "test"
    )


def test_mmlu_group_weighted_by_size(tok_plain):
    model = _model("llama", len(tok_plain))
    res = E.evaluate(model, tok_plain, "mmlu_stem", questions=Questions(limit=2), progress=False)
    subjects = [k for k in res if k != "mmlu_stem"]
    assert subjects == list(T.GROUPS["mmlu_stem"]) and all(res[s].n == 2 for s in subjects)
    g = res["mmlu_stem"]
    assert g.n == 2 * len(subjects) and g.split == "test" and set(g.metrics) == {"acc", "gold_nll"}
    assert g.metrics["acc"] == pytest.approx(np.mean([res[s].metrics["acc"] for s in subjects]))


def _prepared_for(tasks: list[E.TaskRequests], n_choices: list[int]) -> E.Prepared:
    offsets = np.concatenate([[0], np.cumsum(n_choices)]).astype(np.int64)
    return E.Prepared(tasks, [], [], offsets, len(n_choices), None, 1)


def test_metrics_on_known_loglikelihoods():
    req = E.TaskRequests(
        task="t",
        split="validation",
        num_fewshot=0,
        indices=np.arange(3),
        gold=np.array([0, 1, 2]),
        choice_chars=[np.ones(3), np.array([1.0, 10.0, 10.0]), np.ones(3)],
        labels=None,
        metrics=("acc", "acc_norm"),
        mc2=False,
        first_doc=0,
    )
    lls = np.array([-1, -2, -3, -1, -2, -3, -5, -4, -6], dtype=float)
    r = E.results_from_loglikelihoods(_prepared_for([req], [3, 3, 3]), lls)["t"]
    # doc 0 right by both; doc 1 right only per character (-2/10 > -1/1); doc 2 wrong by both
    assert r.metrics["acc"] == pytest.approx(1 / 3) and r.metrics["acc_norm"] == pytest.approx(2 / 3)
    se = np.std([1, 0, 0], ddof=1) / math.sqrt(3)
    assert r.stderr["acc"] == pytest.approx(se) and r.stderr["acc_norm"] == pytest.approx(se)
    assert r.metrics["gold_nll"] == pytest.approx((1 + 2 + 6) / 3)
    assert r.chance == pytest.approx(1 / 3)
    # per question, in document order: what a paired comparison needs; its mean is the metric
    per_q = E.per_question(_prepared_for([req], [3, 3, 3]), lls)
    assert per_q["t"].tolist() == [1, 0, 0]
    assert E.per_question(_prepared_for([req], [3, 3, 3]), lls, "acc_norm")["t"].tolist() == [1, 1, 0]


def test_mc2_metric_matches_lm_eval():
    probs = [np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.9])]
    labels = [np.array([1, 1, 0]), np.array([1, 0])]
    req = E.TaskRequests("truthfulqa_mc2", "validation", 0, np.arange(2), np.array([0, 0]),
                         [np.ones(3), np.ones(2)], labels, ("acc",), True, 0)  # fmt: skip
    lls = np.concatenate([np.log(probs[0]) - 1000.0, np.log(probs[1])])  # -1000: exp() would underflow
    r = E.results_from_loglikelihoods(_prepared_for([req], [3, 2]), lls)["truthfulqa_mc2"]
    assert r.metrics["mc2"] == pytest.approx((0.8 + 0.1) / 2)
    assert r.stderr["mc2"] == pytest.approx(np.std([0.8, 0.1], ddof=1) / math.sqrt(2))
    assert r.chance == pytest.approx((2 / 3 + 1 / 2) / 2)
    utils = pytest.importorskip("lm_eval.tasks.truthfulqa.utils")
    doc = {"mc2_targets": {"labels": list(labels[1])}}
    assert utils.process_results_mc2(doc, [(x, False) for x in np.log(probs[1])])["acc"] == pytest.approx(0.1)


def test_group_stderr_pooled_like_lm_eval():
    parts = [
        E.TaskResult("a", "test", 10, 0, {"acc": 0.5}, {"acc": 0.16}, 0.25),
        E.TaskResult("b", "test", 30, 0, {"acc": 0.8}, {"acc": 0.07}, 0.25),
    ]
    g = E._group_result("g", parts)
    assert g.n == 40 and g.metrics["acc"] == pytest.approx((5 + 24) / 40)
    pooled = math.sqrt((9 * 0.16**2 * 10 + 29 * 0.07**2 * 30) / (40 - 2) / 40)
    assert g.stderr["acc"] == pytest.approx(pooled)
    metrics = pytest.importorskip("lm_eval.api.metrics")
    assert g.stderr["acc"] == pytest.approx(metrics.pooled_sample_stderr([0.16, 0.07], [10, 30]))


def test_limit_subset_is_seeded(tok_plain):
    a = E.prepare(tok_plain, "piqa", questions=Questions(limit=20, seed=0))
    b = E.prepare(tok_plain, "piqa", questions=Questions(limit=20, seed=0))
    c = E.prepare(tok_plain, "piqa", questions=Questions(limit=20, seed=1))
    assert np.array_equal(a.tasks[0].indices, b.tasks[0].indices)
    assert not np.array_equal(a.tasks[0].indices, c.tasks[0].indices)
    assert len(a.tasks[0].indices) == 20 and len(set(a.tasks[0].indices)) == 20
    assert set(E.subset(1838, 10, 0)) <= set(E.subset(1838, 20, 0))  # nested in limit
    assert len(E.prepare(tok_plain, "piqa", questions=Questions(limit=10**6)).tasks[0].indices) == len(
        load_docs("piqa", "validation")
    )


def test_errors_name_the_bad_value(tok_plain):
    with pytest.raises(LlamanasError, match=r"Unknown task 'arc_esy'\. Did you mean 'arc_easy'.*Available:"):
        E.prepare(tok_plain, ["arc_esy"])
    with pytest.raises(
        LlamanasError, match=r"split for task 'winogrande': 'test'.*Available: train, validation"
    ):
        E.prepare(tok_plain, "winogrande", questions=Questions(split="test"))
    with pytest.raises(LlamanasError, match="limit"):
        E.prepare(tok_plain, "piqa", questions=Questions(limit=0))
    with pytest.raises(LlamanasError, match="batch_tokens"):
        E.prepare(tok_plain, "piqa", batch_tokens=0)
