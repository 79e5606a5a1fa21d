"""The one walk over decoder linears follows the Family row, whatever the linears are called."""

import pytest
import torch

from llamanas.model.families import FAMILIES, Family, decoder_linears
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.precision import QuantLinear, apply_precision
from tests.conftest import tiny_model

LLAMA_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RENAMED = Family(
    "renamed",
    "LlamaConfig",
    "LlamaForCausalLM",
    attention="attn",
    mlp="ffn",
    attention_rows=("wq", "wk", "wv"),
    attention_cols=("wo",),
    mlp_rows=("w1", "w3"),
    mlp_cols=("w2",),
)
RENAMES = dict(zip(LLAMA_NAMES, RENAMED.linears, strict=True)) | {"self_attn": "attn", "mlp": "ffn"}


def renamed_model(monkeypatch):
    """A tiny LLaMA whose blocks and linears carry other names, under a family row that says so."""
    monkeypatch.setitem(FAMILIES, RENAMED.model_type, RENAMED)
    model = tiny_model("llama")
    model.config.model_type = RENAMED.model_type
    for layer in model.get_decoder().layers:
        for holder in (layer.self_attn, layer.mlp, layer):
            for old, new in RENAMES.items():
                if old in holder._modules:
                    holder._modules[new] = holder._modules.pop(old)
    return model


@pytest.mark.parametrize("name", list(FAMILIES))
def test_walk_finds_what_the_llama_loop_found(name):
    """For the supported families the walk yields the modules of the old ``(self_attn, mlp) x LINEARS``
    loop, in its order, with paths that name them in the model."""
    model = tiny_model(name)
    before = [
        (i, parent, n, getattr(parent, n))
        for i, layer in enumerate(model.get_decoder().layers)
        for parent in (layer.self_attn, layer.mlp)
        for n in LLAMA_NAMES
        if hasattr(parent, n)
    ]
    sites = list(decoder_linears(model))
    assert len(sites) == len(before) == 7 * len(model.get_decoder().layers)
    for site, (i, parent, n, module) in zip(sites, before, strict=True):
        assert (site.layer, site.name) == (i, n)
        assert site.parent is parent and site.module is module
        assert site.path == f"model.layers.{i}.{site.block}.{n}"
        assert model.get_submodule(site.path) is module


def test_walk_follows_a_family_with_other_names(monkeypatch):
    model = renamed_model(monkeypatch)
    sites = list(decoder_linears(model))
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    assert {s.path for s in sites} == linears and len(sites) == len(linears)
    assert [s.name for s in sites[:7]] == list(RENAMED.linears)
    assert {s.block for s in sites} == {"attn", "ffn"}
    assert all(model.get_submodule(s.path) is s.module for s in sites)

    apply_precision(model, [8, 16, 4, 8])
    quantized = {n: m.bits for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert quantized == {s.path: [8, 16, 4, 8][s.layer] for s in sites if s.layer != 1}


def test_lora_adapts_the_linears_of_a_family_with_other_names(monkeypatch):
    pytest.importorskip("peft")
    from llamanas.tuning.lora import attach_lora

    model = renamed_model(monkeypatch)
    supernet = SuperNet(model)
    paths = {s.path for s in decoder_linears(model)}
    attach_lora(supernet, r=2, alpha=4, dropout=0.0)
    adapted = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == paths
