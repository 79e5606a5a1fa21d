"""Evaluation through llama.cpp: a GGUF F32 export scores the lm-eval-exact tasks like the HF model.

Tolerance (tiny models, F32 weights and F32 KV cache): each (document, choice) loglikelihood within
TOL_LL = 1e-3 nats of the HF evaluator's (measured 1.1e-5 on 36 requests whose values span 225 nats).
Both sides compute in float32 and differ only in the order of operations, so acc and acc_norm are equal.
On the default model (slow test) ARC-Easy accuracy on 20 items is equal and the mean gold NLL within 1e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import arc_available
from test_gguf import NONUNIFORM, bpe_tokenizer, model_of

from llamanas.deploy.gguf import export_gguf, export_subnet_gguf, read_gguf_info
from llamanas.deploy.llamacpp import available
from llamanas.errors import LlamanasError
from llamanas.evaluation import evaluate as E
from llamanas.evaluation.questions import Questions
from llamanas.supernet.slicing import build_extracted

pytestmark = [
    pytest.mark.skipif(not available(), reason="llama-cpp-python not installed"),
    pytest.mark.skipif(not arc_available(), reason="task data not available offline"),
]

TOL_LL = 1e-3
TASKS = ["arc_easy", "winogrande"]  # winogrande: the context differs per choice (short shared prefix)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    bpe_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exported(tok_dir, tmp_path_factory):
    """A non-uniform (deci) sub-network, as HF model and as GGUF F32."""
    sub = build_extracted(model_of(seed=3), NONUNIFORM)
    out = export_gguf(sub, tok_dir, tmp_path_factory.mktemp("g") / "m.gguf", type="f32")
    return sub, out.path


def test_requests_equal_hf_tokenizer(exported):
    from llamanas.deploy.llamacpp import GGUFTokenizer, LlamaCpp, doc_requests

    _, path = exported
    cpp = LlamaCpp(path, vocab_only=True)
    ours = E.prepare(
        GGUFTokenizer(cpp), TASKS, questions=Questions(split="validation", limit=6), max_length=256
    )
    ref = E.prepare(bpe_tokenizer(), TASKS, questions=Questions(split="validation", limit=6), max_length=256)
    a, b = doc_requests(ours), doc_requests(ref)
    assert len(a) == len(b) == 12
    for x, y in zip(a, b, strict=True):
        assert x.prefix == y.prefix and x.choices == y.choices
        for px, py, tx, ty in zip(x.positions, y.positions, x.targets, y.targets, strict=True):
            np.testing.assert_array_equal(px, py)
            np.testing.assert_array_equal(tx, ty)
    cpp.close()


def test_loglikelihoods_equal_hf(exported):
    from llamanas.deploy.llamacpp import LlamaCpp, loglikelihoods

    sub, path = exported
    prepared = E.prepare(
        bpe_tokenizer(), TASKS, questions=Questions(split="validation", limit=6), max_length=256
    )
    ref = E.loglikelihoods(sub, prepared)
    cpp = LlamaCpp(path, n_ctx=256, all_logits=True, f32_cache=True)
    shared = loglikelihoods(cpp, prepared)
    plain = loglikelihoods(cpp, prepared, share_context=False)
    cpp.close()
    err = float(np.abs(shared - ref).max())
    print(f"max |ll_llama.cpp - ll_HF| = {err:.2e} over {len(ref)} requests (spread {np.ptp(ref):.1f})")
    assert err < TOL_LL
    assert float(np.abs(shared - plain).max()) < TOL_LL  # re-using the prefix's KV cache changes nothing


def test_evaluate_gguf_equals_evaluate(exported):
    from llamanas.deploy.llamacpp import evaluate_gguf

    sub, path = exported
    q = Questions(split="validation", limit=8)
    ours = evaluate_gguf(path, TASKS, q, progress=False)
    ref = E.evaluate(sub, bpe_tokenizer(), TASKS, q, progress=False)
    assert set(ours) == set(ref)
    for task, r in ref.items():
        o = ours[task]
        assert isinstance(o, E.TaskResult) and (o.task, o.split, o.n, o.num_fewshot) == (
            r.task,
            r.split,
            r.n,
            r.num_fewshot,
        )
        assert set(o.metrics) == set(r.metrics) and set(o.stderr) == set(r.stderr)
        for m in ("acc", "acc_norm"):  # winogrande has acc only
            if m in r.metrics:
                assert o.metrics[m] == r.metrics[m] and o.stderr[m] == pytest.approx(r.stderr[m])
        assert o.metrics["gold_nll"] == pytest.approx(r.metrics["gold_nll"], abs=TOL_LL)


def test_needs_all_logits_and_enough_context(exported):
    from llamanas.deploy.llamacpp import LlamaCpp, loglikelihoods

    _, path = exported
    prepared = E.prepare(
        bpe_tokenizer(), "arc_easy", questions=Questions(split="validation", limit=2), max_length=256
    )
    cpp = LlamaCpp(path, n_ctx=64)
    with pytest.raises(LlamanasError, match="all_logits=True"):
        loglikelihoods(cpp, prepared)
    cpp.close()
    cpp = LlamaCpp(path, n_ctx=16, all_logits=True)
    with pytest.raises(LlamanasError, match=r"needs \d+ tokens; the llama.cpp context is"):
        loglikelihoods(cpp, prepared)
    cpp.close()


def test_read_gguf_info(exported, tok_dir, tmp_path):
    sub, path = exported
    info = read_gguf_info(path)
    assert (info.arch, info.type, info.n_layers, info.context_length) == ("deci", "f32", 3, 256)
    assert info.n_params == sum(p.numel() for p in sub.parameters()) and info.subnet is None
    assert info.n_params_non_embedding == info.n_params - sub.get_input_embeddings().weight.numel()
    out = export_subnet_gguf(model_of(), NONUNIFORM, tok_dir, tmp_path / "s.gguf", type="q8_0")
    assert read_gguf_info(out.path).subnet == NONUNIFORM.to_dict()
    assert read_gguf_info(out.path).type == "q8_0"
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(LlamanasError, match="not a readable GGUF file"):
        read_gguf_info(tmp_path / "bad.gguf")


# --- the default model ----------------------------------------------------------------------------
@pytest.mark.slow
def test_default_arc_easy_gguf_f32_equals_hf(tmp_path):
    from llamanas.deploy.llamacpp import evaluate_gguf
    from llamanas.model.load import load_model

    model, tok = load_model("default", dtype="float32", device="cpu")
    out = export_gguf(model, "default", tmp_path / "d.gguf", type="f32")
    q = Questions(split="validation", limit=20)
    ref = E.evaluate(model, tok, "arc_easy", q, progress=False)["arc_easy"]
    ours = evaluate_gguf(out.path, "arc_easy", q, progress=False)["arc_easy"]
    print(
        f"default arc_easy limit 20: HF acc {ref.metrics['acc']:.3f}, llama.cpp F32 {ours.metrics['acc']:.3f}"
    )
    assert ours.n == ref.n == 20
    assert ours.metrics["acc"] == ref.metrics["acc"] and ours.metrics["acc_norm"] == ref.metrics["acc_norm"]
    assert ours.metrics["gold_nll"] == pytest.approx(ref.metrics["gold_nll"], abs=1e-2)


# --- compress's GGUF files and llama.cpp timing ------------------------------------------------------
def test_compress_writes_gguf_atomically_and_times_abab(tmp_path, monkeypatch):
    from llamanas.pipeline import compress as C
    from llamanas.pipeline import timing

    folder = tmp_path / "tiny-bpe"
    model = model_of()
    model.save_pretrained(folder)
    bpe_tokenizer().save_pretrained(folder)
    base = C._export_gguf(str(folder), model, None, tmp_path / "b.gguf", "f16").path
    small = build_extracted(model, NONUNIFORM)
    sub = C._export_gguf(str(folder), small, None, tmp_path / "s.gguf", "q8_0", NONUNIFORM.to_dict()).path
    assert read_gguf_info(sub).type == "q8_0" and read_gguf_info(sub).arch == "deci"
    assert sorted(p.name for p in tmp_path.glob("*.gguf*")) == ["b.gguf", "s.gguf"]  # no temporary left
    lines: list[str] = []
    t = timing.time_abab(base, sub, 2, lines.append)
    assert t["rounds"] == 2 and len(lines) == 2 and len(t["load_average"]) == 3
    for key in ("decode_tokens_per_s", "prefill_tokens_per_s"):
        lo, hi = t[key]["ratio_range"]
        assert t[key]["base"] > 0 and t[key]["compressed"] > 0 and lo <= t[key]["ratio"] <= hi
        assert t[key]["spread"] == pytest.approx((hi - lo) / t[key]["ratio"])
    assert t["trusted"] == (
        max(t[k]["spread"] for k in ("decode_tokens_per_s", "prefill_tokens_per_s")) <= 0.15
    )
    monkeypatch.setattr(timing, "llamacpp_available", lambda: False)
    assert timing.time_abab(base, sub, 2, lines.append) == {
        "skipped": "the llama.cpp binding is not installed"
    }
