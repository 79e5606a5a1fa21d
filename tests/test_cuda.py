"""The CUDA paths: skipped without a GPU (CI has none); bench/gpu_check.sh runs them where one is lent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model, tiny_tokenizer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "m"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def test_auto_places_on_gpu_in_16_bits(model_dir):
    from llamanas.model.load import load_model

    model, _ = load_model(model_dir)
    p = next(model.parameters())
    assert p.device.type == "cuda"
    assert p.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def test_supernet_on_gpu_equals_cpu(model_dir):
    from llamanas.supernet.elastic import load_supernet

    gpu, _ = load_supernet(model_dir, device="cuda", dtype="float32")
    cpu, _ = load_supernet(model_dir, device="cpu", dtype="float32")
    cfg = cpu.space.sample(np.random.default_rng(0))
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with gpu.subnet(cfg), cpu.subnet(cfg):
        a = gpu.model(ids.cuda()).logits.float().cpu()
        b = cpu.model(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-3)  # TF32 matmuls on the GPU


def test_extract_from_gpu_loads_on_cpu(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from llamanas.deploy.extract import extract
    from llamanas.supernet.elastic import load_supernet

    sn, tok = load_supernet(model_dir, device="cuda", dtype="bfloat16")
    cfg = sn.space.sample(np.random.default_rng(1))
    out = extract(sn, cfg, tmp_path / "x", tok)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_auto_batch_tokens_grows_with_free_memory(model_dir):
    from llamanas.evaluation.evaluate import CPU_BATCH_TOKENS, auto_batch_tokens
    from llamanas.model.load import load_model

    model, _ = load_model(model_dir, device="cuda")
    assert auto_batch_tokens(model) > CPU_BATCH_TOKENS
