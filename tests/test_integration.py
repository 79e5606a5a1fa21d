"""Integration tests on the real default model (SmolLM2-135M-Instruct), with small limits."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from llamanas.deploy.extract import extract
from llamanas.evaluation.questions import Questions
from llamanas.model.load import load_model
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.subnet import SubnetConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default():
    model, tokenizer = load_model("default")
    return model, tokenizer


@pytest.fixture(scope="module")
def text_ids(default):
    _, tok = default
    return tok(
        "Question: Which gas do plants take in for photosynthesis?\nAnswer: carbon dioxide",
        return_tensors="pt",
    )["input_ids"]


def test_default_model_shape(default):
    model, tok = default
    assert model.config.num_hidden_layers == 30 and model.config.intermediate_size == 1536
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == "<|im_end|>"


def test_ordering_invariance_and_extraction_on_default(default, text_ids, tmp_path):
    from llamanas.supernet.importance import order_model

    model, tok = default
    with torch.inference_mode():
        ref = model(text_ids).logits
    order_model(model, tok, num_samples=16)
    supernet = SuperNet(model)
    with torch.inference_mode():
        assert (model(text_ids).logits - ref).abs().max().item() <= 1e-4
    cfg = supernet.space.sample(np.random.default_rng(0))
    path = extract(supernet, cfg, tmp_path / "sub", tok)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.inference_mode(), supernet.subnet(cfg):
        diff = (loaded(text_ids).logits - model(text_ids).logits).abs().max().item()
    assert diff <= 1e-4
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    assert size < 0.95 * 4 * 134_515_008
    assert json.loads((path / "llamanas_subnet.json").read_text())["params"] == cfg.num_params(supernet.arch)


def test_eval_full_vs_sliced_on_default(default):
    from llamanas.evaluation.evaluate import model_max_length, prepare, score

    model, tok = default
    supernet = SuperNet(model)
    prepared = prepare(
        tok,
        ["arc_easy"],
        questions=Questions(split="validation", limit=40, seed=0),
        max_length=model_max_length(model),
    )
    full = score(model, prepared)["arc_easy"]
    assert full.n == 40 and full.split == "validation"
    assert full.metrics["acc"] >= 0.35  # about 0.5 on the full split; chance is 0.25
    shallow = SubnetConfig(tuple(range(15)), (384,) * 15, (1,) * 15)
    with supernet.subnet(shallow):
        small = score(model, prepared)["arc_easy"]
    assert small.metrics["gold_nll"] > full.metrics["gold_nll"]
