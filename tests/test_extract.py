import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import llamanas  # noqa: F401 - registers the llamanas_* model types
from llamanas.deploy.extract import extract
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.subnet import SubnetConfig
from tests.conftest import tiny_model


def _weights_bytes(path):
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def test_extracted_logits_equal_supernet(family, ids, tmp_path):
    model = tiny_model(family)
    sn = SuperNet(model)
    rng = np.random.default_rng(1)
    full_dir = extract(sn, SubnetConfig.full(sn.arch), tmp_path / "full")
    for k in range(3):
        cfg = sn.space.sample(rng)
        path = extract(sn, cfg, tmp_path / f"sub{k}")
        loaded = AutoModelForCausalLM.from_pretrained(path).eval()
        with sn.subnet(cfg):
            expected = model(ids).logits
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-4)
        assert sum(p.numel() for p in loaded.parameters()) == cfg.num_params(sn.arch)
        assert _weights_bytes(path) < _weights_bytes(full_dir) or cfg == SubnetConfig.full(sn.arch)
        info = json.loads((path / "llamanas_subnet.json").read_text())
        assert SubnetConfig.from_dict(info["subnet"]) == cfg


def test_uniform_subnet_is_a_plain_checkpoint(family, ids, tmp_path):
    model = tiny_model(family)
    sn = SuperNet(model)
    cfg = SubnetConfig((0, 2, 3), (48, 48, 48), (1, 1, 1))
    path = extract(sn, cfg, tmp_path / "u")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == family
    assert config["num_hidden_layers"] == 3 and config["intermediate_size"] == 48
    assert config["num_key_value_heads"] == 1 and config["num_attention_heads"] == 2
    assert "layer_intermediate_sizes" not in config
    # loads with transformers' own class, no llamanas code involved
    import transformers

    from llamanas.model.families import FAMILIES

    cls = getattr(transformers, FAMILIES[family].model_class)
    loaded = cls.from_pretrained(path).eval()
    with sn.subnet(cfg):
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-4)


def test_nonuniform_uses_registered_type(tmp_path, ids):
    sn = SuperNet(tiny_model("llama"))
    cfg = SubnetConfig((0, 1, 3), (24, 96, 48), (2, 1, 2))
    path = extract(sn, cfg, tmp_path / "n")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llamanas_llama"
    assert config["layer_intermediate_sizes"] == [24, 96, 48]
    assert config["layer_num_key_value_heads"] == [2, 1, 2]


def test_extract_leaves_supernet_state(ids, tmp_path):
    sn = SuperNet(tiny_model("llama"))
    cfg = SubnetConfig((0, 3), (24, 48), (1, 1))
    other = SubnetConfig((1, 2), (96, 96), (2, 2))
    sn.activate(other)
    extract(sn, cfg, tmp_path / "x")
    assert sn.active == other and len(sn.model.model.layers) == 2


def test_extract_rejects_bad_config(tmp_path):
    from llamanas.errors import LlamanasError

    sn = SuperNet(tiny_model("llama"))
    with pytest.raises(LlamanasError, match="Layer 9 does not exist"):
        extract(sn, SubnetConfig((0, 9), (24, 24), (1, 1)), tmp_path / "bad")


def test_streamed_shards_load_and_equal_supernet(family, ids, tmp_path):
    from llamanas.deploy.extract import write_sliced

    model = tiny_model(family)
    sn = SuperNet(model)
    cfg = SubnetConfig((0, 1, 3), (24, 96, 48), (2, 1, 2))
    out = tmp_path / "sharded"
    out.mkdir()
    write_sliced(model, cfg, out, shard_bytes=20_000)  # a few layers a shard: several files and an index
    shards = sorted(out.glob("model-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert not list(out.glob("*.tmp"))
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with sn.subnet(cfg):
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-4)
    assert sum(p.numel() for p in loaded.parameters()) == cfg.num_params(sn.arch)


def test_extract_keeps_bfloat16(tmp_path, ids):
    model = tiny_model("llama").to(torch.bfloat16)
    sn = SuperNet(model)
    cfg = SubnetConfig((0, 2), (48, 96), (1, 2))
    path = extract(sn, cfg, tmp_path / "bf16")
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
    assert next(loaded.parameters()).dtype == torch.bfloat16
    from llamanas.supernet.slicing import sliced_state_dict

    expected = sliced_state_dict(model, cfg)
    for name, t in loaded.state_dict().items():  # the very bf16 values, no float32 round trip
        assert torch.equal(t, expected[name]), name


def test_compensation_adds_to_existing_biases(ids, tmp_path):
    """A LLaMA with attention and MLP biases: compensation is added to its own o_proj/down_proj biases."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        mlp_bias=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 or p.numel() != 64 or "bias" in str(p):
                p.normal_(0, 0.2)
    sn = SuperNet(model)
    ref = model(ids).logits
    sn.compensate([ids])
    torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-6)
    for k, cfg in enumerate(
        [SubnetConfig((0, 2), (48, 96), (1, 2)), SubnetConfig((0, 1, 2), (24,) * 3, (1,) * 3)]
    ):
        path = extract(sn, cfg, tmp_path / f"b{k}")
        loaded = AutoModelForCausalLM.from_pretrained(path).eval()
        with sn.subnet(cfg):
            torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-4)
        # the biases the source had are there as before; none were added beyond them
        comp = sn.compensation
        sn.set_compensation(None)
        plain = AutoModelForCausalLM.from_pretrained(extract(sn, cfg, tmp_path / f"p{k}"))
        sn.set_compensation(comp)
        assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in plain.parameters())


def test_quantized_extraction_keeps_compensation(ids, tmp_path):
    from llamanas.supernet.slicing import standalone

    sn = SuperNet(tiny_model("llama"))
    sn.compensate([ids])
    cfg = SubnetConfig((0, 1, 3), (48, 96, 24), (1, 2, 2), bits=(8, 8, 8))
    new = standalone(sn, cfg)
    assert new.model.layers[0].mlp.down_proj.bias is not None
    with sn.subnet(SubnetConfig(cfg.layers, cfg.mlp, cfg.kv_groups)):
        expected = sn.model(ids).logits
    assert (new(ids).logits - expected).abs().max() < 0.1 * expected.abs().max()
