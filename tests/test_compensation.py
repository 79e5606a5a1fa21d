"""Bias compensation (FLAP), least-squares repair at extraction, and sensitivity allocation, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import llamanas  # noqa: F401 - registers the llamanas_* model types
from llamanas.deploy.extract import extract, write_sliced
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.supernet.compensation import (
    Compensation,
    input_grams,
    least_squares,
    reconstruction_error,
    repair_weights,
)
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.sensitivity import Sensitivity, allocate, measure_sensitivity, sensitivity_configs
from llamanas.supernet.slicing import build_extracted
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig
from tests.conftest import tiny_model, tiny_tokenizer


def _batches(n=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (4, 24), generator=g) for _ in range(n)]


def _calibration_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(" ".join(f"w{(i * j + j) % 126}" for j in range(60)) for i in range(1, 10)))
    return path


def _inputs_outputs(model, layer: int, path: str, batches):
    """Inputs and outputs of one linear of the full model over the calibration batches."""
    lin = model.get_decoder().layers[layer].get_submodule(path)
    xs, ys = [], []

    def hook(_module, args, out):
        xs.append(args[0].reshape(-1, args[0].shape[-1]))
        ys.append(out.reshape(-1, out.shape[-1]))

    h = lin.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
    finally:
        h.remove()
    return torch.cat(xs).double(), torch.cat(ys).double()


def test_full_network_unchanged_by_compensation(family, ids):
    model = tiny_model(family)
    ref = model(ids).logits
    sn = SuperNet(model)
    comp = sn.compensate(_batches())
    torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-6)
    with sn.subnet(SubnetConfig.full(sn.arch)):
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-6)
    # full width has no bias; every smaller width choice of the space has one
    assert comp.mlp_bias(0, sn.arch.intermediate_size, model.model.layers[0].mlp.down_proj.weight) is None
    assert set(comp.mlp[0]) == {m for m in sn.space.mlp_choices[0] if m < sn.arch.intermediate_size}
    assert set(comp.kv[0]) == {g for g in sn.space.kv_choices[0] if g < sn.arch.num_kv_heads}


def test_compensation_is_the_mean_contribution_of_the_removed_channels():
    """FLAP's bias: the compensated slice's mean output over calibration tokens equals the full layer's."""
    model = tiny_model("llama")
    batches = _batches()
    sn = SuperNet(model)
    comp = sn.compensate(batches)
    x, y = _inputs_outputs(model, 1, "mlp.down_proj", batches)
    w = model.model.layers[1].mlp.down_proj.weight.detach().double()
    m = 24
    sliced = x[:, :m] @ w[:, :m].T
    bias = comp.mlp_bias(1, m, model.model.layers[1].mlp.down_proj.weight).double()
    torch.testing.assert_close((sliced + bias).mean(0), y.mean(0), rtol=0, atol=1e-5)
    assert (sliced.mean(0) - y.mean(0)).abs().max() > 1e-3  # without it the mean is off
    # the activated sub-network uses exactly that bias on down_proj, and None again at full width
    with sn.subnet(SubnetConfig((0, 1, 2, 3), (96, m, 96, 96), (2, 2, 2, 1))):
        assert torch.equal(model.model.layers[1].mlp.down_proj.active_bias.double(), bias)
        assert model.model.layers[0].mlp.down_proj.active_bias is None
        assert model.model.layers[3].self_attn.o_proj.active_bias is not None
    assert all(
        lin.active_bias is None
        for layer in sn.layers
        for lin in (layer.mlp.down_proj, layer.self_attn.o_proj)
    )
    sn.set_compensation(None)
    with sn.subnet(SubnetConfig((0, 1, 2, 3), (96, m, 96, 96), (2, 2, 2, 1))):
        assert model.model.layers[1].mlp.down_proj.active_bias is None


def test_extracted_equals_activated_with_compensation(family, ids, tmp_path):
    model = tiny_model(family)
    sn = SuperNet(model)
    sn.compensate(_batches())
    rng = np.random.default_rng(2)
    cfgs = [sn.space.sample(rng) for _ in range(2)] + [SubnetConfig((0, 2, 3), (48, 48, 48), (1, 1, 1))]
    for k, cfg in enumerate(cfgs):
        with sn.subnet(cfg):
            expected = model(ids).logits
        torch.testing.assert_close(
            build_extracted(model, cfg, sn.compensation)(ids).logits, expected, rtol=0, atol=1e-5
        )
        path = extract(sn, cfg, tmp_path / f"c{k}")
        config = json.loads((path / "config.json").read_text())
        assert config["model_type"] == f"llamanas_{family}" and config["layer_output_bias"] is True
        loaded = AutoModelForCausalLM.from_pretrained(path).eval()
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-4)
        # one output bias per kept block (two per layer that keeps both) beyond its own parameters
        blocks = sum(m > 0 for m in cfg.mlp) + sum(g > 0 for g in cfg.kv_groups)
        extra = sn.arch.hidden_size * blocks
        assert sum(p.numel() for p in loaded.parameters()) == cfg.num_params(sn.arch) + extra
        assert json.loads((path / "llamanas_subnet.json").read_text())["compensation"] is True
    # the full network extracts as a plain checkpoint: nothing to compensate
    full = extract(sn, SubnetConfig.full(sn.arch), tmp_path / "full")
    assert json.loads((full / "config.json").read_text())["model_type"] == family


def test_streamed_shards_carry_compensation(ids, tmp_path):
    model = tiny_model("qwen2")
    sn = SuperNet(model)
    sn.compensate(_batches())
    cfg = SubnetConfig((0, 1, 3), (24, 96, 48), (2, 1, 2))
    out = tmp_path / "sharded"
    out.mkdir()
    write_sliced(model, cfg, out, shard_bytes=20_000, compensation=sn.compensation)
    assert len(list(out.glob("model-*.safetensors"))) > 2
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with sn.subnet(cfg):
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-4)
    # an extracted compensated model is a super-network too: re-extracting keeps its biases
    again = SuperNet(loaded)
    sub = SubnetConfig((0, 2), (24, 48), (2, 2))
    with again.subnet(sub):
        expected = loaded(ids).logits
    torch.testing.assert_close(build_extracted(loaded, sub)(ids).logits, expected, rtol=0, atol=1e-5)


def test_compensation_saves_and_loads(tmp_path, ids):
    model = tiny_model("mistral")
    sn = SuperNet(model)
    comp = sn.compensate(_batches())
    comp.save(tmp_path)
    back = Compensation.load(tmp_path)
    assert Compensation.load(tmp_path / "nowhere") is None
    cfg = SubnetConfig((0, 1, 2, 3), (24, 48, 72, 96), (1, 2, 1, 2))
    with sn.subnet(cfg):
        expected = model(ids).logits
    sn.set_compensation(back)
    with sn.subnet(cfg):
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-6)


def test_load_supernet_compensates_and_records_importance(tiny_dir, tmp_path, ids):
    from llamanas.supernet.elastic import load_supernet, read_supernet_meta, write_supernet_meta

    calib = str(_calibration_file(tmp_path))
    sn, _tok = load_supernet(str(tiny_dir), calibration=calib, importance="wanda", compensate=True)
    assert sn.ordered_by == "wanda" and sn.compensation is not None
    plain, _ = load_supernet(str(tiny_dir), calibration=calib)
    assert plain.ordered_by == "rms" and plain.compensation is None
    with pytest.raises(
        LlamanasError, match=r"Unknown importance score 'fisher'. Allowed: rms, wanda, taylor"
    ):
        load_supernet(str(tiny_dir), importance="fisher")
    # a super-network folder records how it was ordered; its saved compensation is used as it is
    folder = tmp_path / "sn"
    sn.model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    write_supernet_meta(folder, sn.space, {}, ordered_by="wanda")
    assert read_supernet_meta(folder)["ordered_by"] == "wanda"
    saved = Compensation(
        [torch.zeros_like(t) for t in sn.compensation.mlp_mean],
        [torch.zeros_like(t) for t in sn.compensation.attn_mean],
        sn.compensation.group_width,
    )
    saved.save(folder)
    again, _ = load_supernet(str(folder), compensate=True, importance="taylor")
    assert again.ordered_by == "wanda"  # already ordered: not reordered
    w = again.model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(again.compensation.mlp_bias(0, 24, w), torch.zeros(w.shape[0]))


# --- least-squares repair ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [False, True])
def test_repair_lowers_the_layer_reconstruction_error(with_bias):
    model = tiny_model("llama")
    batches = _batches(3)
    sn = SuperNet(model)
    comp = sn.compensate(batches) if with_bias else None
    cfg = SubnetConfig((0, 1, 3), (24, 48, 96), (2, 1, 1))
    repaired = repair_weights(model, cfg, batches, comp)
    assert set(repaired) == {
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.2.self_attn.o_proj.weight",
    } | (
        {
            "model.layers.0.mlp.down_proj.bias",
            "model.layers.1.mlp.down_proj.bias",
            "model.layers.1.self_attn.o_proj.bias",
            "model.layers.2.self_attn.o_proj.bias",
        }
        if with_bias
        else set()
    )
    # Measured on the activations themselves: |sliced output - full output|^2, before and after.
    for layer, pos, path, keep in [
        (0, 0, "mlp.down_proj", 24),
        (1, 1, "mlp.down_proj", 48),
        (3, 2, "self_attn.o_proj", 32),
    ]:
        x, y = _inputs_outputs(model, layer, path, batches)
        lin = model.model.layers[layer].get_submodule(path)
        w = lin.weight.detach().double()
        before_b = 0.0
        if comp is not None:
            bias = (
                comp.mlp_bias(layer, keep, lin.weight)
                if "mlp" in path
                else comp.kv_bias(layer, keep // 32, lin.weight)
            )
            before_b = bias.double()
        before = ((x[:, :keep] @ w[:, :keep].T + before_b - y) ** 2).sum(-1).mean()
        new_w = repaired[f"model.layers.{pos}.{path}.weight"].double()
        new_b = repaired[f"model.layers.{pos}.{path}.bias"].double() if with_bias else 0.0
        after = ((x[:, :keep] @ new_w.T + new_b - y) ** 2).sum(-1).mean()
        assert after < 0.9 * before, (layer, path, float(before), float(after))
        # the Gram-matrix form of the error agrees with the direct one
        gram = input_grams(model, batches, {(layer, "mlp" if "mlp" in path else "attn")})
        g = next(iter(gram.values()))
        nb = repaired.get(f"model.layers.{pos}.{path}.bias")
        assert reconstruction_error(g, lin.weight, lin.bias, new_w, nb, keep) == pytest.approx(
            float(after), rel=1e-6
        )


def test_least_squares_without_ridge_is_exact_on_redundant_channels():
    """Channels that are linear combinations of kept ones are absorbed exactly by the refit."""
    g = torch.Generator().manual_seed(0)
    x_kept = torch.randn(500, 6, generator=g, dtype=torch.float64)
    x = torch.cat([x_kept, x_kept[:, :2] @ torch.randn(2, 3, generator=g, dtype=torch.float64)], 1)
    w = torch.randn(4, 9, generator=g, dtype=torch.float64)
    z = torch.cat([x, torch.ones(500, 1, dtype=torch.float64)], 1)
    new_w, _ = least_squares(z.T @ z, w, None, 6, fit_bias=False, ridge=0.0)
    torch.testing.assert_close(x[:, :6] @ new_w.T, x @ w.T, rtol=0, atol=1e-8)


def test_extract_with_repair(tmp_path, ids):
    model = tiny_model("qwen2")
    sn = SuperNet(model)
    tok = tiny_tokenizer()
    cfg = SubnetConfig((0, 1, 2, 3), (24, 48, 96, 48), (1, 2, 2, 1))
    with pytest.raises(LlamanasError, match="pass the tokenizer"):
        extract(sn, cfg, tmp_path / "r0", None, repair=True)
    calib = _calibration_file(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(extract(sn, cfg, tmp_path / "p", tok)).eval()
    path = extract(sn, cfg, tmp_path / "r", tok, repair=True, calibration=calib)
    repaired = AutoModelForCausalLM.from_pretrained(path).eval()
    info = json.loads((path / "llamanas_subnet.json").read_text())
    assert info["repair"]["calibration"] == str(calib)
    assert sum(p.numel() for p in repaired.parameters()) == cfg.num_params(sn.arch)
    # the kept columns changed where the layer is sliced, and only there
    a, b = plain.model.layers, repaired.model.layers
    assert not torch.equal(a[0].mlp.down_proj.weight, b[0].mlp.down_proj.weight)
    assert torch.equal(a[2].mlp.down_proj.weight, b[2].mlp.down_proj.weight)
    assert torch.equal(a[0].mlp.up_proj.weight, b[0].mlp.up_proj.weight)
    # with compensation the refit replaces the compensation bias
    sn.compensate(_batches())
    both = AutoModelForCausalLM.from_pretrained(
        extract(sn, cfg, tmp_path / "rc", tok, repair=True, calibration=calib)
    ).eval()
    assert both.model.layers[0].mlp.down_proj.bias is not None
    assert torch.isfinite(both(ids).logits).all()
    with pytest.raises(LlamanasError, match="ridge must be >= 0"):
        extract(sn, cfg, tmp_path / "r1", tok, repair=True, calibration=calib, ridge=-1)


# --- sensitivity allocation ---------------------------------------------------------------------------


def _tiny_arch():
    return Arch.from_hf(tiny_model("llama").config)


def test_allocation_hits_the_target_and_prefers_insensitive_layers():
    arch = _tiny_arch()  # 4 layers, MLP 96, 2 KV groups
    # Layer 2 is almost free to cut, layer 0 expensive, KV groups expensive everywhere.
    mlp_cost = [5.0, 1.0, 0.01, 1.0]
    sens = Sensitivity(
        2.0,
        [{96: 0.0, 72: 0.2 * c, 48: 0.5 * c, 24: 1.0 * c} for c in mlp_cost],
        [{2: 0.0, 1: 10.0} for _ in range(4)],
    )
    full = SubnetConfig.full(arch).num_params(arch)
    for target in (0.95, 0.9, 0.85, 0.8):
        cfg = allocate(arch, sens, target)
        assert cfg.num_params(arch) <= target * full
        assert cfg.layers == (0, 1, 2, 3)
    cfg = allocate(arch, sens, 0.9)
    assert cfg.mlp[2] == 24 and cfg.mlp[0] == 96 and cfg.kv_groups == (2, 2, 2, 2)
    # one step of 24 channels is enough for 99%: the cheapest per parameter saved
    assert allocate(arch, sens, 0.99).mlp == (96, 96, 72, 96)
    assert allocate(arch, sens, 1.0) == SubnetConfig.full(arch)
    with pytest.raises(LlamanasError, match="sensitivity: no sub-network fits 10%"):
        allocate(arch, sens, 0.1)
    with pytest.raises(LlamanasError, match="layers; the model has 4"):
        allocate(arch, Sensitivity(0.0, sens.mlp[:2], sens.kv[:2]), 0.9)


def test_measured_sensitivity_finds_the_dead_channels(ids):
    model = tiny_model("llama")
    with torch.no_grad():  # layer 1's MLP channels past 24 never fire: slicing them costs nothing
        model.model.layers[1].mlp.up_proj.weight[24:] = 0.0
    sn = SuperNet(model)
    batches = _batches()
    sens = measure_sensitivity(sn, batches)
    assert sens.mlp[1][24] == pytest.approx(0.0, abs=1e-6)
    assert all(sens.mlp[i][24] > 1e-4 for i in (0, 2, 3))
    assert set(sens.kv[0]) == {1, 2} and sens.kv[0][2] == 0.0
    assert Sensitivity.from_dict(json.loads(json.dumps(sens.to_dict()))) == sens
    # with the other layers made costly to cut, the free layer is cut first
    costly = Sensitivity(
        sens.base_loss,
        [r if i == 1 else {m: 1.0 + (96 - m) for m in r} for i, r in enumerate(sens.mlp)],
        [{g: 10.0 * (2 - g) for g in r} for r in sens.kv],
    )
    assert allocate(sn.arch, costly, 0.9).mlp == (96, 24, 96, 96)
    warm = sensitivity_configs(sn, batches, targets=(0.97, 0.9, 0.8, 0.01))
    full = SubnetConfig.full(sn.arch).num_params(sn.arch)
    assert all(c.num_params(sn.arch) <= t * full for c, t in zip(warm, (0.97, 0.9, 0.8), strict=True))
    assert len(warm) == 3 and all(sn.space.validate(c) == c for c in warm)
    assert warm[0] == allocate(sn.arch, sens, 0.97)
    assert sn.active == SubnetConfig.full(sn.arch)


def test_sensitivity_uses_the_space_choices():
    model = tiny_model("llama")
    arch = Arch.from_hf(model.config)
    space = SearchSpace.from_arch(arch, mlp_fractions=(0.5, 1.0), kv_groups=(2,))
    sens = measure_sensitivity(SuperNet(model, space), _batches(1))
    assert all(set(r) == {48, 96} for r in sens.mlp) and all(set(r) == {2} for r in sens.kv)


def test_cli_extract_repair_without_calibration_uses_the_default_text(tmp_path):
    """The README's recipe: `extract --repair --compensate` with no --calibration, as its help promises."""
    from typer.testing import CliRunner

    from llamanas.cli.app import app
    from llamanas.supernet.importance import default_calibration

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    cfg = json.dumps({"layers": [0, 1, 2, 3], "mlp": [48, 96, 48, 96], "kv_groups": [2, 2, 1, 2]})
    common = ["extract", "--model", str(model_dir), "--subnet", cfg, "--compensate"]
    r = CliRunner().invoke(app, [*common, "--repair", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "r" / "llamanas_subnet.json").read_text())
    assert info["repair"]["calibration"] == str(default_calibration())
    r = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    sliced = AutoModelForCausalLM.from_pretrained(tmp_path / "p").model.layers[0].mlp.down_proj.weight
    repaired = AutoModelForCausalLM.from_pretrained(tmp_path / "r").model.layers[0].mlp.down_proj.weight
    assert sliced.shape == repaired.shape == (64, 48) and not torch.equal(sliced, repaired)
