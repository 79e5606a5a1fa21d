"""Weight-only INT8/INT4 quantization: error bounds, byte counts, save/reload, policies, the front."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from torch import nn

from llamanas.deploy import quantize
from llamanas.deploy.quantize import (
    QUANT_FILE,
    WEIGHTS_FILE,
    compare_quantization,
    load_quantized,
    quantize_front,
    save_quantized,
)
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.search.files import RunFiles
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.precision import (
    QuantLinear,
    apply_precision,
    effective_group_size,
    model_bytes,
    policy_bytes,
    quantize_model,
)
from llamanas.supernet.slicing import build_extracted
from llamanas.supernet.subnet import SubnetConfig


def _linears(model):
    for layer in model.get_decoder().layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield getattr(layer.self_attn, name)
        for name in ("gate_proj", "up_proj", "down_proj"):
            yield getattr(layer.mlp, name)


def _fp16_exact(model):
    """Round float weights to float16 precision, so a saved (float16) copy reloads bit-identically."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.mark.parametrize("shape", [(40, 96), (64, 64), (48, 130), (16, 7)])
def test_weight_error_within_rounding_bound(shape):
    # Round-to-nearest leaves at most half a step of error per weight. The float16 scale/minimum add at most
    # 2^-11 relative each; for INT4 the top code (15 steps) can shift by 15 * 2^-11 * scale: hence 0.51.
    torch.manual_seed(0)
    out_f, in_f = shape
    lin = nn.Linear(in_f, out_f, bias=True)
    w = lin.weight.detach()
    q8 = QuantLinear.from_linear(lin, 8)
    err8 = (q8.dequantize() - w).abs()
    assert (err8 <= 0.5 * q8.scale.float()[:, None] * (1 + 1e-3) + 1e-7).all()
    q4 = QuantLinear.from_linear(lin, 4, group_size=64)
    assert q4.group_size == effective_group_size(in_f, 64)
    g = q4.group_size
    step = q4.scale.float().repeat_interleave(g, dim=1)
    lo = q4.zero.float().repeat_interleave(g, dim=1)
    err4 = (q4.dequantize() - w).abs()
    assert (err4 <= 0.51 * step + 1e-3 * lo.abs() + 1e-7).all()
    # int8 codes are in -127..127, int4 codes in 0..15 packed two per byte.
    assert q8.qweight.dtype == torch.int8 and q8.qweight.abs().max() <= 127
    assert q4.qweight.dtype == torch.uint8 and q4.qweight.shape == (out_f, (in_f + 1) // 2)
    # The bias is kept (float16).
    x = torch.randn(5, in_f)
    torch.testing.assert_close(q8(x), x @ q8.dequantize().T + lin.bias.detach().half().float())


def test_group_size_falls_back_to_a_divisor():
    assert effective_group_size(576, 128) == 64
    assert effective_group_size(1536, 128) == 128
    assert effective_group_size(96, 64) == 32
    assert effective_group_size(7, 64) == 7  # no power-of-two divisor >= 8: one group per row


@pytest.mark.parametrize("bits", [8, 4])
def test_bf16_kernels_match_dequantized_matmul(bits):
    # With bfloat16 activations the packed aten CPU kernels run; they must compute the same product as the
    # de-quantized weight (tolerance: bfloat16 has 8 mantissa bits, sums of 128 products).
    torch.manual_seed(0)
    lin = nn.Linear(128, 64, bias=False)
    q = QuantLinear.from_linear(lin, bits, group_size=64)
    x = torch.randn(3, 7, 128)
    assert q._use_kernel(x.bfloat16())
    ref = x @ q.dequantize().T
    got = q(x.bfloat16()).float()
    assert got.shape == (3, 7, 64)
    torch.testing.assert_close(got, ref, atol=0.05 * ref.abs().max().item(), rtol=0.02)


@pytest.mark.parametrize("method, bits", [("int8", 8), ("int4", 4)])
def test_decoder_linear_bytes_shrink_by_expected_ratio(method, bits):
    model = tiny_model("llama", hidden=64, inter=128)
    arch = Arch.from_hf(model.config)
    fp16 = {id(m): 2 * m.weight.numel() for m in _linears(model)}
    shapes = [(m.in_features, m.out_features) for m in _linears(model)]
    before_total = model_bytes(model)
    quantize_model(model, method)
    qs = list(_linears(model))
    assert all(isinstance(q, QuantLinear) and q.bits == bits for q in qs)
    for q, (i, o) in zip(qs, shapes, strict=True):
        ratio = q.storage_bytes() / (2 * i * o)
        # INT8: 1 byte a weight + a float16 scale per row; INT4: half a byte + float16 scale and min per group.
        expected = 0.5 + 1 / i if bits == 8 else 0.25 + 2 / q.group_size
        assert ratio == pytest.approx(expected, rel=1e-12)
    saved = sum(fp16.values()) - sum(q.storage_bytes() for q in qs)
    assert model_bytes(model) == before_total - saved
    # Embeddings (tied head) and norms are untouched.
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert model_bytes(model) == policy_bytes(arch, None, [bits] * arch.num_layers)


@pytest.mark.parametrize("method, max_rel, min_top1", [("int8", 0.05, 0.9), ("int4", 0.4, 0.6)])
def test_logits_close_to_fp32(method, max_rel, min_top1):
    # HF's own initialisation (std 0.02). A per-channel INT8 step is ~3 sigma / 127, i.e. noise of ~0.7% of a
    # weight's spread per linear; through 4 layers x 7 linears that stays well under 5% of the logits' norm
    # (measured: 1.6%). INT4 with groups of 64 has a step of ~5 sigma / 15 (~10% noise per linear; measured
    # 21%), so its bound is 40%. Random weights are a worst case: real LLM weights quantize better.
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        quantize_model(model, method)
        got = model(ids).logits
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < max_rel
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean().item() >= min_top1


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_save_reload_roundtrip(family, method, tmp_path, ids):
    model = _fp16_exact(tiny_model(family, hidden=64, inter=96))
    quantize_model(model, method)
    with torch.no_grad():
        expected = model(ids).logits
    path = save_quantized(model, tmp_path / "q", tiny_tokenizer(), metadata={"note": "test"})
    info = json.loads((path / QUANT_FILE).read_text())
    assert info["method"] == method and info["bytes"] == model_bytes(model) and info["note"] == "test"
    assert "llamanas_quant" not in json.loads((path / "config.json").read_text())
    file_bytes = (path / WEIGHTS_FILE).stat().st_size
    assert 0 <= file_bytes - model_bytes(model) < 32 * 1024  # the safetensors header only
    loaded, tok = load_quantized(path)
    assert tok is not None
    with torch.no_grad():
        got = loaded(ids).logits
    # Same codes, same float16-exact weights: only float32 summation order could differ.
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert model_bytes(loaded) == model_bytes(model)
    # It also generates (KV cache path) after reload.
    out = loaded.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


def test_plain_from_pretrained_refuses_a_quantized_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    model = quantize_model(tiny_model("llama"), "int8")
    path = save_quantized(model, tmp_path / "q")
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(path)  # never silently random weights
    with pytest.raises(LlamanasError, match="not a quantized checkpoint"):
        load_quantized(tmp_path)


def test_mixed_precision_policy_bytes_match_and_reload(tmp_path, ids):
    model = _fp16_exact(tiny_model("qwen2", hidden=64, inter=96))
    arch = Arch.from_hf(model.config)
    bits = [16, 8, 4, 8]
    apply_precision(model, bits)
    layers = model.get_decoder().layers
    assert isinstance(layers[0].mlp.up_proj, nn.Linear) and not isinstance(layers[0].mlp.up_proj, QuantLinear)
    assert layers[1].self_attn.q_proj.bits == 8 and layers[2].mlp.down_proj.bits == 4
    assert model_bytes(model) == policy_bytes(arch, None, bits)
    assert (
        policy_bytes(arch, None, [16] * 4)
        > policy_bytes(arch, None, bits)
        > policy_bytes(arch, None, [4] * 4)
    )
    with torch.no_grad():
        expected = model(ids).logits
    loaded, _ = load_quantized(save_quantized(model, tmp_path / "mixed"))
    assert json.loads((tmp_path / "mixed" / QUANT_FILE).read_text())["method"] == "mixed"
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_policy_bytes_of_a_subnet_equal_the_extracted_model():
    model = tiny_model("llama", layers=4, hidden=64, inter=96)
    arch = Arch.from_hf(model.config)
    SuperNet(model)
    cfg = SubnetConfig((0, 2, 3), (96, 48, 24), (2, 1, 2))
    small = build_extracted(model, cfg)
    assert model_bytes(small) == policy_bytes(arch, cfg) == 2 * cfg.num_params(arch)
    apply_precision(small, [4, 16, 8])
    assert model_bytes(small) == policy_bytes(arch, cfg, [4, 16, 8])


def test_errors_name_the_bad_value():
    model = tiny_model("llama")
    with pytest.raises(LlamanasError, match=r"Unknown quantization method 'int3'.*int8, int4"):
        quantize_model(model, "int3")
    with pytest.raises(LlamanasError, match="3 values; the model has 4"):
        apply_precision(model, [8, 8, 8])
    with pytest.raises(LlamanasError, match=r"\[2\] bits. Allowed: 16, 8, 4"):
        apply_precision(model, [8, 8, 2, 8])
    with pytest.raises(LlamanasError, match="backend 'gpu'"):
        quantize_model(model, "int8", backend="gpu")
    with pytest.raises(LlamanasError, match="not quantized"):
        save_quantized(tiny_model("llama"), "/tmp/never-written")
    quantize_model(model, "int8")
    with pytest.raises(LlamanasError, match="already quantized"):
        quantize_model(model, "int4")


def test_active_supernet_slice_is_refused():
    model = tiny_model("llama")
    sn = SuperNet(model)
    sn.activate(SubnetConfig((0, 1, 2, 3), (48,) * 4, (2,) * 4))
    with pytest.raises(LlamanasError, match="active slice"):
        quantize_model(model, "int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes LLM.int8 needs CUDA")
def test_bnb_int8_on_cuda(ids):
    pytest.importorskip("bitsandbytes")
    model = tiny_model("llama")
    with torch.no_grad():
        ref = model(ids).logits
    quantize_model(model, "int8", backend="bnb")
    with torch.no_grad():
        got = model(ids.cuda()).logits.float().cpu()
    assert ((got - ref).norm() / ref.norm()).item() < 0.1


# --- comparison and the front ----------------------------------------------------------------------


@dataclass
class FakeResult:
    """Stands in for evaluate.TaskResult: a score that depends on the model's logits."""

    metrics: dict
    stderr: dict
    chance: float = 0.25
    n: int = 100
    split: str = "validation"

    def to_dict(self):
        return {
            "metrics": self.metrics,
            "stderr": self.stderr,
            "chance": self.chance,
            "n": self.n,
            "split": self.split,
        }


def fake_evaluate(model, tokenizer, tasks, questions=None):
    ids = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        m = torch.sigmoid(model(ids).logits.float().mean()).item()
    return {t: FakeResult({"acc": m}, {"acc": 0.04}) for t in tasks}


def test_compare_quantization_reports_before_and_after(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "evaluate", fake_evaluate)
    model = tiny_model("llama", hidden=64, inter=128)
    c, qmodel = compare_quantization(
        model,
        tiny_tokenizer(),
        "int4",
        ["taskA"],
        timing=True,
        timing_kwargs=dict(prefill_tokens=8, gen_tokens=2, warmup=0, repeats=2),
        out_dir=tmp_path / "q4",
    )
    assert c.before.bytes == 2 * c.before.params and c.after.params == c.before.params
    assert c.size_ratio < 0.6
    assert c.before.latency_ms > 0 and c.after.latency_ms > 0 and c.after.throughput_tok_s > 0
    assert c.after.file_bytes == (tmp_path / "q4" / WEIGHTS_FILE).stat().st_size
    assert set(c.accuracy_delta()) == {"taskA/acc"}
    saved = json.loads((tmp_path / "q4" / "comparison.json").read_text())
    assert saved["size_ratio"] == pytest.approx(c.size_ratio)
    assert isinstance(qmodel.get_decoder().layers[0].mlp.up_proj, QuantLinear)


def _synthetic_run(tmp_path, sn):
    run = tmp_path / "run"
    run.mkdir()
    cfgs = [SubnetConfig.full(sn.arch), SubnetConfig((0, 1, 3), (96, 48, 48), (2, 1, 2))]
    members = [
        {
            "id": i + 1,
            "values": {"accuracy": 0.5, "params": c.num_params(sn.arch)},
            "measured": {"acc:taskA": 0.5},
            "config": c.to_dict(),
        }
        for i, c in enumerate(cfgs)
    ]
    (run / "front.json").write_text(json.dumps({"objectives": [], "constraints": [], "members": members}))
    (run / "run.json").write_text(
        json.dumps({"args": {"model": "unused", "tasks": ["taskA"], "split": "validation", "limit": 10}})
    )
    return run, cfgs


def test_quantize_front_writes_points_beside_the_originals(tmp_path, monkeypatch):
    model = tiny_model("llama", hidden=64, inter=96)
    sn = SuperNet(model)
    run, cfgs = _synthetic_run(tmp_path, sn)
    seen = {}

    def evaluate_fn(m, tok, tasks, questions):
        seen.update(questions.to_dict())
        return fake_evaluate(m, tok, tasks)

    monkeypatch.setattr(quantize, "evaluate", evaluate_fn)
    path = quantize_front(run, "int8", supernet=sn, tokenizer=tiny_tokenizer())
    assert path == run / "front_int8.json"
    d = json.loads(path.read_text())
    assert d["method"] == "int8" and d["tasks"] == ["taskA"]
    assert seen["split"] == "validation" and seen["limit"] == 10  # the run's settings
    assert [p["config"] for p in d["points"]] == [c.to_dict() for c in cfgs]
    for p, c in zip(d["points"], cfgs, strict=True):
        assert p["bytes_fp16"] == 2 * c.num_params(sn.arch)
        assert p["bytes"] == policy_bytes(sn.arch, c, [8] * c.depth) < p["bytes_fp16"]
        assert 0 < p["results"]["taskA"]["metrics"]["acc"] < 1
        assert p["original"]["values"]["accuracy"] == 0.5
    assert sn.active == SubnetConfig.full(sn.arch)  # the super-network is left as it was


def test_quantize_front_uses_the_runs_evaluation_settings(tmp_path, monkeypatch):
    """run.json's evaluation settings win over its args: the subset seed is the data seed, not the search's."""
    sn = SuperNet(tiny_model("llama", hidden=64, inter=96))
    run, _ = _synthetic_run(tmp_path, sn)
    info = json.loads((run / "run.json").read_text())
    info["args"].update(seed=3, data_seed=7)
    info["settings"] = {"tasks": ["taskA"], "split": "validation", "limit": 10, "num_fewshot": 0, "seed": 7}
    (run / "run.json").write_text(json.dumps(info))
    seen = {}

    def evaluate_fn(m, tok, tasks, questions):
        seen.update(questions.to_dict())
        return fake_evaluate(m, tok, tasks)

    monkeypatch.setattr(quantize, "evaluate", evaluate_fn)
    path = quantize_front(
        run,
        "int4",
        supernet=sn,
        tokenizer=tiny_tokenizer(),
        questions=RunFiles(run).eval_settings().questions().override(limit=5, split=None),
    )
    assert seen == {"split": "validation", "limit": 5, "num_fewshot": 0, "seed": 7, "offset": 0}
    d = json.loads(path.read_text())
    assert (d["split"], d["limit"], d["num_fewshot"], d["seed"]) == ("validation", 5, 0, 7)


def test_quantize_front_needs_a_front(tmp_path):
    with pytest.raises(LlamanasError, match="no front.json"):
        quantize_front(tmp_path, "int8", supernet=object(), tokenizer=None, tasks=["a"])


def test_cli_quantize_checkpoint(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from llamanas.cli.app import app

    r = CliRunner().invoke(
        app,
        [
            "quantize",
            "--model",
            str(tiny_dir),
            "--method",
            "int4",
            "--out",
            str(tmp_path / "q"),
            "--no-timing",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)
    assert c["method"] == "int4" and c["size_ratio"] < 0.6
    loaded, tok = load_quantized(tmp_path / "q")
    assert tok is not None and isinstance(loaded.get_decoder().layers[0].self_attn.q_proj, QuantLinear)
    r = CliRunner().invoke(
        app, ["quantize", "--model", str(tiny_dir), "--method", "int2", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code != 0
