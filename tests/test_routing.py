"""Routed low-rank adapters (few-shot splitting, mixture of super-networks) on tiny models: the routing rule,
extraction equal to the activated sub-network, files, and the gradient-matching split."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import llamanas  # noqa: F401 - registers the llamanas_* model types
from llamanas.deploy.extract import extract
from llamanas.errors import LlamanasError
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.routing import (
    Gene,
    RoutedAdapters,
    RoutingSpec,
    candidate_genes,
    choose_split,
    gradient_disagreement,
)
from llamanas.supernet.slicing import standalone
from llamanas.supernet.subnet import SubnetConfig
from tests.conftest import tiny_model, tiny_tokenizer

A = SubnetConfig((0, 1, 2, 3), (96, 48, 96, 24), (2, 1, 2, 2))
B = SubnetConfig((0, 1, 2, 3), (96, 96, 96, 24), (2, 1, 2, 2))  # A with layer 1's MLP at 96
C = SubnetConfig((0, 2, 3), (48, 48, 96), (1, 2, 1))  # layer 1 dropped


def _routed(family, spec: RoutingSpec):
    model = tiny_model(family)
    sn = SuperNet(model)
    routed = RoutedAdapters(model, spec)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking experts: B is zero at init
        for e in routed.experts.values():
            e.B.copy_(torch.randn(e.B.shape, generator=g) * 0.2)
    routed.attach(sn)
    return sn, routed


def _logits(sn, cfg, ids):
    with torch.no_grad(), sn.subnet(cfg):
        return sn.model(ids).logits


def test_split_routes_by_the_genes_value_and_extracts_equal(family, ids, tmp_path):
    spec = RoutingSpec("split", experts=3, rank=4, gene="mlp[1]", choices=(0, 48, 96))
    sn, routed = _routed(family, spec)
    assert (
        routed.mix(A)[:, 1].eq(1).all()
        and routed.mix(B)[:, 2].eq(1).all()
        and routed.mix(C)[:, 0].eq(1).all()
    )
    # Same architecture, different expert: the outputs differ from the base and between experts.
    base_a = _logits(sn, A, ids)
    routed.detach(sn)
    plain_a = _logits(sn, A, ids)
    routed.attach(sn)
    assert not torch.allclose(base_a, plain_a, atol=1e-3)
    weights = {n: p.detach().clone() for n, p in sn.model.named_parameters()}
    for k, cfg in enumerate((A, B, C)):
        expected = _logits(sn, cfg, ids)
        torch.testing.assert_close(standalone(sn, cfg)(ids).logits, expected, rtol=0, atol=1e-4)
        path = extract(sn, cfg, tmp_path / f"s{k}")
        loaded = AutoModelForCausalLM.from_pretrained(path).eval()
        assert not any(
            "routed" in n or "experts" in n for n, _ in loaded.named_parameters()
        )  # a plain checkpoint
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-4)
    for n, p in sn.model.named_parameters():  # merging for extraction leaves the weights as they were
        assert torch.equal(p, weights[n]), n
    with pytest.raises(LlamanasError, match=r"mlp\[1\] = 24 is not one of the split's parts \[0, 48, 96\]"):
        routed.mix(SubnetConfig((0, 1), (96, 24), (2, 2)))


def test_mixture_routes_by_the_architecture_and_extracts_equal(ids, tmp_path):
    spec = RoutingSpec("mixture", experts=3, rank=4, router_hidden=8)
    sn, routed = _routed("llama", spec)
    with torch.no_grad():
        for p in routed.router.parameters():
            p.normal_(0, 1.0)  # a trained-looking router
    ma, mb = routed.mix(A), routed.mix(B)
    assert ma.shape == (4, 3) and torch.allclose(ma.sum(-1), torch.ones(4))
    assert not torch.allclose(ma, mb, atol=1e-3)  # another architecture, another mixture
    expected = _logits(sn, B, ids)
    loaded = AutoModelForCausalLM.from_pretrained(extract(sn, B, tmp_path / "m")).eval()
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-4)
    # The router learns: a loss on one sub-network's output reaches its parameters.
    with sn.subnet(A):
        sn.model(ids).logits.square().mean().backward()
    assert routed.router.net[0].weight.grad.abs().sum() > 0
    assert all(e.B.grad is not None for e in routed.experts.values())


def test_routing_files_round_trip_and_load_supernet_attaches_them(tmp_path, ids):
    from llamanas.supernet.elastic import load_supernet, write_supernet_meta

    spec = RoutingSpec("split", experts=3, rank=4, gene="kv[2]", choices=(0, 1, 2))
    sn, routed = _routed("llama", spec)
    expected = _logits(sn, A, ids)
    folder = tmp_path / "sn"
    sn.model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    write_supernet_meta(folder, sn.space, {"args": {}})
    routed.save(folder)
    assert json.loads((folder / "llamanas_routing.json").read_text())["gene"] == "kv[2]"
    loaded, _ = load_supernet(str(folder), device="cpu", dtype="float32")
    assert loaded.routing is not None and loaded.routing.spec == spec
    torch.testing.assert_close(_logits(loaded, A, ids), expected, rtol=0, atol=1e-5)
    with pytest.raises(LlamanasError, match="routed adapters"):
        load_supernet(str(folder), device="cpu", dtype="float32", residual=True)


def test_gradient_matching_picks_the_gene_whose_groups_disagree():
    rng = np.random.default_rng(0)
    cfgs, grads = [], []
    shared = rng.normal(size=50)
    for _ in range(24):
        m1 = int(rng.choice([48, 96]))
        kv2 = int(rng.choice([1, 2]))
        cfgs.append(SubnetConfig((0, 1, 2, 3), (96, m1, 96, 96), (2, 2, kv2, 2)))
        sign = 1.0 if m1 == 96 else -1.0  # layer 1's MLP width flips half of the gradient
        g = shared.copy()
        g[:25] *= sign
        grads.append(g + 0.1 * rng.normal(size=50))
    genes = [Gene("mlp", 1), Gene("kv", 2), Gene("mlp", 0)]
    best, scores = choose_split(np.array(grads), cfgs, genes)
    assert best == Gene("mlp", 1)
    assert scores["mlp[1]"] > 0.5 > scores["kv[2]"] and scores["mlp[0]"] == 0.0  # one group: no disagreement
    assert gradient_disagreement(np.ones((4, 3)), np.array([0, 0, 1, 1])) == pytest.approx(0.0)
    with pytest.raises(LlamanasError, match="no choice to split on"):
        choose_split(np.array(grads), cfgs, [])


def test_candidate_genes_follow_the_space():
    model = tiny_model("llama")
    sn = SuperNet(model)
    genes = candidate_genes(sn.space)
    assert Gene("mlp", 1) in genes and Gene("kv", 1) in genes
    assert Gene("mlp", 1).choices(sn.space)[0] == 0  # the default space may drop the layer


def test_precision_adapters_follow_each_layers_bits_and_extract_equal(family, ids):
    """LLM-QFA's decoupled adapters: the layer's bits pick its expert; the fake-quantized super-network
    equals the extracted, really quantized sub-network (the merged weight is what is quantized)."""
    spec = RoutingSpec("precision", experts=3, rank=4, choices=(4, 8, 16))
    sn, routed = _routed(family, spec)
    cfg = SubnetConfig(A.layers, A.mlp, A.kv_groups, bits=(4, 8, 16, 4))
    m = routed.mix(cfg)
    assert m[:, 0].tolist() == [1, 0, 0, 1] and m[:, 1].tolist() == [0, 1, 0, 0] and m[2, 2] == 1
    with pytest.raises(LlamanasError, match="cannot switch on in place"):
        sn.activate(cfg)
    sn.fake_quant = True
    expected = _logits(sn, cfg, ids)
    sn.fake_quant = False
    extracted = standalone(sn, cfg)  # real INT4/INT8 layers (QuantLinear), adapters merged first
    assert type(extracted.model.layers[0].mlp.down_proj).__name__ == "QuantLinear"
    torch.testing.assert_close(extracted(ids).logits, expected, rtol=0, atol=1e-4)
    # Another precision for layer 0: another expert, another output.
    sn.fake_quant = True
    other = _logits(sn, SubnetConfig(A.layers, A.mlp, A.kv_groups, bits=(8, 8, 16, 4)), ids)
    assert not torch.allclose(other, expected, atol=1e-3)
    with pytest.raises(LlamanasError, match=r"bits 16 has no adapter; the adapters are for \[4, 8\]"):
        RoutedAdapters(sn.model, RoutingSpec("precision", experts=2, rank=2, choices=(4, 8))).mix(A)
