"""Attention and MLP blocks kept or skipped per layer (size 0): space, counts, super-network, extraction."""

import itertools

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import llamanas  # noqa: F401 - registers the llamanas_* model types
from llamanas.deploy.extract import extract
from llamanas.errors import LlamanasError
from llamanas.search.counts import Counts
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig
from tests.conftest import tiny_arch, tiny_model


def small_space(**kw) -> SearchSpace:
    arch = tiny_arch(num_layers=3)
    return SearchSpace.from_arch(arch, mlp_fractions=(0.5, 1.0), min_depth=1, **kw)


def test_default_space_has_block_choices():
    sp = SearchSpace.from_arch(tiny_arch())
    assert all(m[0] == 0 for m in sp.mlp_choices) and all(k[0] == 0 for k in sp.kv_choices)
    narrow = SearchSpace.from_arch(tiny_arch(), skip_attention=False, skip_mlp=False)
    assert all(m[0] > 0 for m in narrow.mlp_choices) and all(k[0] > 0 for k in narrow.kv_choices)


def test_size_is_brute_force_count():
    """Every gene vector decodes to a valid config; the distinct ones are exactly ``size()``."""
    for sp in (small_space(), small_space(always_keep=(1,)), small_space(skip_mlp=False)):
        xl, xu = sp.bounds()
        seen = set()
        for x in itertools.product(*[range(lo, hi + 1) for lo, hi in zip(xl, xu, strict=True)]):
            cfg = sp.decode(np.array(x))
            sp.validate(cfg)
            assert cfg.kv_groups[0] > 0  # the first kept layer keeps attention
            assert not any(m == 0 == g for m, g in zip(cfg.mlp, cfg.kv_groups, strict=True))
            seen.add(cfg.key())
        assert len(seen) == sp.size()
        # sampling stays inside the space, with skipped blocks among the samples
        rng = np.random.default_rng(0)
        samples = [sp.sample(rng) for _ in range(200)]
        assert all(s.key() in seen for s in samples)


def test_both_blocks_skipped_is_a_skipped_layer():
    sp = small_space()
    cfg = SubnetConfig((0, 2), (128, 0), (2, 1))
    x = sp.encode(cfg)
    assert sp.decode(x) == cfg
    genes = sp.split_genes(x.copy())
    y = x.copy()
    g = sp.split_genes(y)
    g["keep"][1], g["mlp"][1], g["kv"][1] = 1, 0, 0  # layer 1 "kept" with both blocks skipped
    assert sp.decode(y) == cfg
    assert np.array_equal(sp.canonical(y), sp.canonical(x))
    assert genes["keep"][1] == 0


def test_config_rejects_empty_layers_and_no_attention():
    with pytest.raises(LlamanasError, match="skip both attention and MLP"):
        SubnetConfig((0, 1), (64, 0), (1, 0)).__class__((0, 1), (64, 0), (1, 0))
    with pytest.raises(LlamanasError, match="at least one attention block"):
        SubnetConfig((0, 1), (64, 64), (0, 0))


def test_smallest_keeps_attention_in_its_first_layer():
    sp = small_space()
    s = sp.smallest()
    sp.validate(s)
    assert s.kv_groups[0] > 0 and sum(g > 0 for g in s.kv_groups) == 1
    lo, _ = Counts(sp).range("params")  # a bound: per layer its cheapest cell
    assert lo <= s.num_params(sp.arch)
    with pytest.raises(LlamanasError, match="first kept layer"):
        sp.validate(SubnetConfig((0, 1), (128, 128), (0, 2)))
    with pytest.raises(LlamanasError, match="always skips its attention"):
        SearchSpace.from_dict({"layers": {"0": {"kv_groups": [0]}}}, tiny_arch(num_layers=3))


def test_counts_of_skipped_blocks():
    a = tiny_arch(num_layers=2)
    full = SubnetConfig.full(a)
    no_attn = SubnetConfig((0, 1), (256, 256), (2, 0))
    no_mlp = SubnetConfig((0, 1), (0, 256), (2, 2))
    attn = a.layer_params(0, 2)
    mlp = a.layer_params(256, 0)
    assert attn == 2 * 64 * 64 + 2 * 64 * 32 + 64  # q and o 64x64, k and v 64x32, its RMSNorm
    assert mlp == 3 * 64 * 256 + 64
    assert full.num_params(a) - no_attn.num_params(a) == attn
    assert full.num_params(a) - no_mlp.num_params(a) == mlp
    assert full.kv_bytes(a) == 2 * (2 * 2 * 16 * 2) and no_attn.kv_bytes(a) == full.kv_bytes(a) // 2
    assert no_attn.macs_per_token(a) < full.macs_per_token(a)
    sp = SearchSpace.from_arch(a, min_depth=1)
    X = np.stack([sp.encode(c) for c in (full, no_attn, no_mlp)])
    got = Counts(sp)(X)
    for k, c in enumerate((full, no_attn, no_mlp)):
        exact = Counts(sp).of(c)
        for name in ("params", "macs", "kv_bytes"):
            assert got[name][k] == exact[name]


def test_space_file_keys(tmp_path):
    a = tiny_arch(num_layers=4)
    sp = SearchSpace.from_dict(
        {"skip_attention": False, "always_keep": [0], "layers": {"2": {"kv_groups": [0]}}}, a
    )
    assert sp.kv_choices[0] == (1, 2) and sp.kv_choices[2] == (0,)  # forbidden / pinned skipped
    assert sp.mlp_choices[0][0] == 0  # MLP skipping stays on by default
    sp = SearchSpace.from_dict({"mlp_choices": [0.5, 1.0]}, a)
    assert sp.mlp_choices[0] == (128, 256)  # a spelled-out list is taken as it is
    sp = SearchSpace.from_dict({"mlp_choices": [0.5, 1.0], "layers": {"1": {"skip_mlp": True}}}, a)
    assert sp.mlp_choices[1] == (0, 128, 256)
    with pytest.raises(LlamanasError, match="skip_attention must be true or false"):
        SearchSpace.from_dict({"skip_attention": "yes"}, a)
    with pytest.raises(LlamanasError, match="only skip both"):
        SearchSpace.from_dict({"layers": {"0": {"kv_groups": [0], "mlp_choices": [0]}}}, a)


def _zeroed(model, layer: int, block: str):
    """An oracle for a skipped block: the same model with that block's output projection zeroed."""
    import copy

    m = copy.deepcopy(model)
    lin = m.model.layers[layer].self_attn.o_proj if block == "attn" else m.model.layers[layer].mlp.down_proj
    with torch.no_grad():
        lin.weight.zero_()
        if lin.bias is not None:
            lin.bias.zero_()
    return m


def test_skipped_block_is_a_pass_through(family, ids):
    model = tiny_model(family)
    sn = SuperNet(model)
    a = sn.arch
    full = SubnetConfig.full(a)
    for layer, block in ((0, "attn"), (2, "mlp")):
        kv = tuple(0 if (i == layer and block == "attn") else a.num_kv_heads for i in range(4))
        mlp = tuple(0 if (i == layer and block == "mlp") else a.intermediate_size for i in range(4))
        with sn.subnet(SubnetConfig(full.layers, mlp, kv)):
            got = model(ids).logits
        torch.testing.assert_close(got, _zeroed(model, layer, block)(ids).logits, rtol=0, atol=1e-5)
    # switched back: the full network is unchanged
    ref = tiny_model(family)(ids).logits
    torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=0)


def test_generation_with_attention_free_layers(family, ids):
    """The KV cache holds only the layers that keep attention, the first one included."""
    model = tiny_model(family)
    sn = SuperNet(model)
    cfg = SubnetConfig((0, 1, 3), (96, 0, 48), (0, 2, 1))
    with sn.subnet(cfg):
        out = model.generate(ids[:1, :8], max_new_tokens=5, do_sample=False, pad_token_id=0)
        logits = model(out[:, :-1]).logits
    assert out.shape[1] == 13
    assert torch.equal(logits[0, 7:].argmax(-1), out[0, 8:])


def test_extracted_skipped_blocks_equal_supernet(family, ids, tmp_path):
    model = tiny_model(family)
    sn = SuperNet(model)
    for k, cfg in enumerate(
        [SubnetConfig((0, 1, 2, 3), (96, 0, 48, 96), (0, 2, 1, 2)), SubnetConfig((1, 3), (0, 96), (2, 0))]
    ):
        path = extract(sn, cfg, tmp_path / f"sub{k}")
        loaded = AutoModelForCausalLM.from_pretrained(path).eval()
        with sn.subnet(cfg):
            expected = model(ids).logits
            gen_ref = model.generate(ids[:1, :6], max_new_tokens=4, do_sample=False, pad_token_id=0)
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-4)
        assert sum(p.numel() for p in loaded.parameters()) == cfg.num_params(sn.arch)
        gen = loaded.generate(ids[:1, :6], max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(gen, gen_ref)


def test_kv_bytes_is_an_objective():
    from llamanas.search.objectives import KINDS, MIN, resolve

    assert KINDS["kv_bytes"].direction == MIN
    (acc, kv) = resolve(("accuracy", "kv_bytes"), ("arc_easy",), "hf")
    assert kv.name == "kv_bytes"
    sp = SearchSpace.from_arch(tiny_arch(num_layers=3), min_depth=1)
    lo, hi = Counts(sp).range("kv_bytes")
    assert lo == 0.0 and hi == 3 * tiny_arch().kv_bytes_per_token(2)  # lo: a bound, per layer its least
