import time

import numpy as np
import pytest
import torch

from llamanas.model.families import FAMILIES
from llamanas.supernet.elastic import ElasticLinear, SuperNet
from llamanas.supernet.importance import calibration_batches, compute_ordering
from llamanas.supernet.slicing import build_extracted
from llamanas.supernet.subnet import SubnetConfig
from tests.conftest import FAMILY_KW, tiny_model


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_rows_name_the_linears_of_its_models(name):
    """Every Family row's block and linear names are those of a real (tiny) model of the family."""
    assert set(FAMILY_KW) == set(FAMILIES)  # every family has a tiny test config
    family = FAMILIES[name]
    for layer in tiny_model(name).get_decoder().layers:
        linears = {n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        block = {n: family.attention for n in family.attention_rows + family.attention_cols}
        block |= {n: family.mlp for n in family.mlp_rows + family.mlp_cols}
        assert linears == {f"{block[n]}.{n}" for n in family.linears}
        found = family.linears_of(layer)
        assert list(found) == list(family.linears)
        assert all(found[n] is layer.get_submodule(f"{block[n]}.{n}") for n in family.linears)
        assert all((found[n].bias is not None) == family.qkv_bias for n in family.attention_rows)


def test_full_subnet_reproduces_hf_logits(family, ids):
    model = tiny_model(family)
    ref = model(ids).logits
    sn = SuperNet(model)
    with sn.subnet(SubnetConfig.full(sn.arch)):
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert all(isinstance(layer.mlp.down_proj, ElasticLinear) for layer in sn.layers)
    # state dict keys are unchanged by the conversion
    assert "model.layers.0.mlp.down_proj.weight" in model.state_dict()


def test_activation_copies_no_weights(ids):
    model = tiny_model("llama")
    sn = SuperNet(model)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    cfg = SubnetConfig((0, 2), (48, 96), (1, 2))
    with sn.subnet(cfg):
        model(ids)
        assert len(model.model.layers) == 2
        # kept layer 2 now runs second, with its own (uncopied) weights
        assert (
            model.model.layers[1].mlp.up_proj.weight.data_ptr() == ptrs["model.layers.2.mlp.up_proj.weight"]
        )
        assert {p.data_ptr() for p in model.parameters()} <= set(ptrs.values())
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs


def test_subnet_equals_naive_sliced_model(family, ids):
    """A sub-network computes what a model built from the sliced weights computes."""
    model = tiny_model(family)
    sn = SuperNet(model)
    rng = np.random.default_rng(0)
    for _ in range(4):
        cfg = sn.space.sample(rng)
        with sn.subnet(cfg):
            a = model(ids).logits
        b = build_extracted(model, cfg)(ids).logits
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_switching_is_cheap_and_restores():
    model = tiny_model("llama", layers=8)
    sn = SuperNet(model)
    rng = np.random.default_rng(0)
    cfgs = [sn.space.sample(rng) for _ in range(50)]
    t = time.perf_counter()
    for c in cfgs:
        sn.activate(c)
    per_switch = (time.perf_counter() - t) / len(cfgs)
    sn.reset()
    assert len(model.model.layers) == 8
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(8))
    assert per_switch < 0.5  # loose sanity bound, not a benchmark


def test_generation_with_skipped_layers(ids):
    """The KV cache must work when layers are skipped (layer indices are renumbered)."""
    model = tiny_model("qwen2")
    sn = SuperNet(model)
    cfg = SubnetConfig((1, 3), (96, 48), (2, 1))
    with sn.subnet(cfg):
        out = model.generate(ids[:1, :8], max_new_tokens=5, do_sample=False, pad_token_id=0)
        # greedy continuation equals the argmax of a full forward over the generated prefix
        logits = model(out[:, :-1]).logits
    assert out.shape[1] == 13
    assert torch.equal(logits[0, 7:].argmax(-1), out[0, 8:])


def test_ordering_is_a_permutation(family, ids):
    model = tiny_model(family)
    ref = model(ids).logits
    batches = [torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(2))]
    ordering = compute_ordering(model, batches)
    ordering.apply(model)
    torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-4)
    assert sorted(ordering.mlp[0]) == list(range(96))
    assert sorted(ordering.kv_groups[0]) == [0, 1]


def test_ordering_puts_important_channels_first(ids):
    """Channels with zeroed output weights never fire usefully; ordering must put them last."""
    model = tiny_model("llama")
    dead = torch.arange(0, 96, 2)  # even channels
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[dead] = 0.0  # activation of even channels is exactly 0
    ordering = compute_ordering(model, [ids])
    for perm in ordering.mlp:
        assert set(perm[:48]) == set(range(1, 96, 2))


def test_ordering_improves_slices_on_structured_model(ids):
    """With dead channels, a 50% slice after ordering is exact; without ordering it is not."""
    model = tiny_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[48:] = 0.0
            layer.mlp.up_proj.weight[:48] *= 1.0
    # scramble so the dead channels are spread, then order
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight.data = layer.mlp.gate_proj.weight.data[perm]
            layer.mlp.up_proj.weight.data = layer.mlp.up_proj.weight.data[perm]
            layer.mlp.down_proj.weight.data = layer.mlp.down_proj.weight.data[:, perm]
    full = model(ids).logits
    sn = SuperNet(model)
    half = SubnetConfig(tuple(range(4)), (48,) * 4, (2,) * 4)
    with sn.subnet(half):
        unordered = (model(ids).logits - full).abs().max().item()
    compute_ordering(model, [ids]).apply(model)
    with sn.subnet(half):
        ordered = (model(ids).logits - full).abs().max().item()
    assert ordered < 1e-4 < unordered


def test_calibration_batches_deterministic():
    class Tok:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 100 + 1 for c in text]}

    texts = ["hello world " * 20, "another text " * 30]
    a = calibration_batches(Tok(), texts, num_samples=5, seq_len=16)
    b = calibration_batches(Tok(), texts, num_samples=5, seq_len=16)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert sum(x.shape[0] for x in a) == 5 and a[0].shape[1] == 16


@pytest.mark.parametrize("importance", ["wanda", "taylor"])
def test_other_importance_scores_are_permutations(family, ids, importance):
    model = tiny_model(family)
    ref = model(ids).logits
    batches = [torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(2))]
    ordering = compute_ordering(model, batches, importance)
    assert ordering.importance == importance
    ordering.apply(model)
    torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-4)
    assert sorted(ordering.mlp[1]) == list(range(96)) and sorted(ordering.kv_groups[1]) == [0, 1]
    # gradients were only borrowed: none left behind, requires_grad as before
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_wanda_and_taylor_see_the_weights_rms_does_not(ids):
    """Channels whose down_proj columns are zero fire but contribute nothing: activation RMS cannot tell,
    activation x weight and the gradient scores rank them last."""
    from llamanas.supernet.importance import Ordering

    model = tiny_model("llama")
    silent = torch.arange(0, 96, 2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, silent] = 0.0
            layer.self_attn.o_proj.weight[:, :32] = 0.0  # KV group 0's heads write nothing
    for importance in ("wanda", "taylor"):
        ordering = compute_ordering(model, [ids], importance)
        for perm, groups in zip(ordering.mlp, ordering.kv_groups, strict=True):
            assert set(perm[:48]) == set(range(1, 96, 2)), importance
            assert groups == [1, 0], importance
        assert Ordering.from_dict(ordering.to_dict()) == ordering
    rms = compute_ordering(model, [ids], "rms")
    assert any(set(perm[:48]) != set(range(1, 96, 2)) for perm in rms.mlp)
    assert Ordering.from_dict({"mlp": rms.mlp, "kv_groups": rms.kv_groups}).importance == "rms"  # old files


def test_unknown_importance_is_a_clear_error(ids):
    from llamanas.errors import LlamanasError
    from llamanas.supernet.importance import order_model

    model = tiny_model("llama")
    with pytest.raises(
        LlamanasError, match=r"Unknown importance score 'magnitude'. Allowed: rms, wanda, taylor"
    ):
        compute_ordering(model, [ids], "magnitude")
    with pytest.raises(LlamanasError, match="'magnitude'"):
        order_model(model, tokenizer=None, importance="magnitude")  # fails before reading any text
