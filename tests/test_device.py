"""Device and dtype choice, memory plans and refusal (CPU here; the CUDA branches run on the GPU check)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from llamanas.errors import LlamanasError
from llamanas.model import device as D
from llamanas.model.arch import Arch
from llamanas.model.load import load_model


def test_resolve_device_and_bad_values():
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(LlamanasError, match="Unknown device 'tpu'.*auto.*cuda:N"):
        D.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LlamanasError, match="no CUDA GPU"):
            D.resolve_device("cuda:0")


def test_auto_dtype_rules_on_cpu():
    cpu = torch.device("cpu")
    assert D.resolve_dtype("auto", cpu, torch.bfloat16, 135_000_000) == torch.float32  # small: float32
    assert D.resolve_dtype("auto", cpu, torch.bfloat16, 7_000_000_000) == torch.bfloat16  # big: its own
    assert D.resolve_dtype("auto", cpu, torch.float32, 7_000_000_000) == torch.float32
    assert D.resolve_dtype("auto", cpu, None, 7_000_000_000) == torch.float32
    assert D.resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(LlamanasError, match="Unknown dtype 'fp8'.*auto, float32, bfloat16, float16"):
        D.resolve_dtype("fp8", cpu)


def test_param_count_from_config_equals_loaded_model(family):
    model = tiny_model(family)
    assert Arch.from_hf(model.config).num_params() == sum(p.numel() for p in model.parameters())


def test_memory_plan_and_refusal(monkeypatch):
    cpu = torch.device("cpu")
    plan = D.plan_memory(7_000_000_000, torch.bfloat16, cpu, "inference")
    assert plan.needed == 14 * 10**9 + 21 * 10**8  # bf16 weights + 15% for activations and the cache
    monkeypatch.setattr(D, "free_bytes", lambda device: 10 * 10**9)
    plan = D.plan_memory(7_000_000_000, torch.bfloat16, cpu, "inference")
    assert not plan.fits and "needs ~16.1 GB, 10.0 GB free on cpu" in str(plan)
    with pytest.raises(LlamanasError, match="Not enough memory: inference needs ~16.1 GB, 10.0 GB free"):
        D.check_memory(plan)
    monkeypatch.setenv("LLAMANAS_NO_MEMORY_CHECK", "1")
    assert D.check_memory(plan) is plan
    with pytest.raises(LlamanasError, match="Unknown kind of work 'x'"):
        D.plan_memory(1, torch.float32, cpu, "x")


def _saved(tmp_path, dtype=torch.float32):
    path = tmp_path / "m"
    tiny_model("llama").to(dtype).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def test_load_model_dtype_and_refusal_before_loading(tmp_path, monkeypatch):
    path = _saved(tmp_path, torch.bfloat16)
    model, _ = load_model(path)  # tiny: auto is float32 on the CPU
    assert next(model.parameters()).dtype == torch.float32
    model, _ = load_model(path, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    said = []
    monkeypatch.setattr(D, "free_bytes", lambda device: 1000)
    loads = []
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(1))
    with pytest.raises(LlamanasError, match="Not enough memory: inference needs"):
        load_model(path, say=said.append)
    assert said and "GB free on cpu" in said[0] and not loads  # refused before loading


def test_bf16_logits_close_to_float32(tmp_path):
    path = _saved(tmp_path)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    m32, _ = load_model(path, dtype="float32")
    m16, _ = load_model(path, dtype="bfloat16")
    with torch.no_grad():
        a = torch.log_softmax(m32(ids).logits, -1)
        b = torch.log_softmax(m16(ids).logits.float(), -1)
    # bf16 keeps 8 mantissa bits: on these random weights log-probs move by at most a few hundredths of
    # a nat per layer, and the greedy token almost never changes.
    assert (a - b).abs().max().item() < 0.25
    assert np.mean((a.argmax(-1) == b.argmax(-1)).numpy()) >= 0.9


def test_16_bit_weights_compute_in_float32_on_the_cpu(tmp_path):
    from llamanas.model.device import CpuLinear

    path = _saved(tmp_path)
    m16, _ = load_model(path, dtype="bfloat16")
    linears = [m for m in m16.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is CpuLinear for m in linears)  # swapped in place, weights untouched
    assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    m32, _ = load_model(path, dtype="float32")
    assert not any(type(m) is CpuLinear for m in m32.modules())
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    lin = linears[0]
    expected = torch.nn.functional.linear(x.float(), lin.weight.float()).to(torch.bfloat16)
    assert lin(x).dtype == torch.bfloat16 and torch.equal(lin(x), expected)
