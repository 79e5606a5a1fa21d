"""A narrower residual stream (``SubnetConfig.hidden``): ordering, the super-network's forward, extraction."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import llamanas  # noqa: F401 - registers the llamanas_* model types
from llamanas.deploy.extract import extract
from llamanas.errors import LlamanasError
from llamanas.supernet.compensation import repair_weights
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.importance import order_residual, residual_scores
from llamanas.supernet.subnet import SubnetConfig
from tests.conftest import tiny_model, tiny_tokenizer


def _batches(n=3, seq=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (2, seq), generator=g) for _ in range(n)]


def test_residual_ordering_keeps_the_function_and_sorts_the_channels(family, ids):
    model = tiny_model(family)
    before = model(ids).logits
    perm = order_residual(model, _batches())
    assert sorted(perm) == list(range(64)) and perm != list(range(64))
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-4)
    scores = residual_scores(model, _batches())
    assert torch.all(scores[:-1] >= scores[1:] - 1e-9)  # most important first
    if model.config.tie_word_embeddings:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_config_with_hidden_round_trips_and_is_checked():
    cfg = SubnetConfig((0, 1), (48, 96), (2, 1), hidden=48)
    assert SubnetConfig.from_json(cfg.to_json()) == cfg and json.loads(cfg.to_json())["hidden"] == 48
    assert "hidden" not in SubnetConfig((0,), (48,), (2,)).to_dict()
    sn = SuperNet(tiny_model("llama"))
    with pytest.raises(LlamanasError, match="hidden 80 exceeds the model's hidden size 64"):
        SubnetConfig((0,), (48,), (2,), hidden=80).check(sn.arch)
    with pytest.raises(LlamanasError, match="'hidden' must be a positive"):
        SubnetConfig((0,), (48,), (2,), hidden=0)
    # 16 fewer residual channels: 16 fewer columns or rows in every matrix, norm, embedding (tied: once).
    full, narrow = SubnetConfig.full(sn.arch), SubnetConfig.full(sn.arch)
    narrow = SubnetConfig(full.layers, full.mlp, full.kv_groups, hidden=48)
    a = sn.arch
    per_layer = 16 * (
        a.num_heads * a.head_dim * 2 + 2 * a.num_kv_heads * a.head_dim + 3 * a.intermediate_size + 2
    )
    assert full.num_params(a) - narrow.num_params(a) == a.num_layers * per_layer + 16 * (a.vocab_size + 1)
    assert narrow.macs_per_token(a) < full.macs_per_token(a)


@pytest.mark.parametrize("uniform", [True, False])
def test_narrow_subnet_runs_in_place_and_extracts_equal(family, ids, tmp_path, uniform):
    model = tiny_model(family)
    order_residual(model, _batches())
    sn = SuperNet(model)
    full_logits = model(ids).logits
    cfg = (
        SubnetConfig((0, 1, 3), (48, 48, 48), (1, 1, 1), hidden=40)
        if uniform
        else SubnetConfig((0, 1, 2, 3), (24, 96, 0, 48), (2, 1, 2, 0), hidden=48)
    )
    with sn.subnet(cfg):
        narrow = model(ids).logits
    assert not torch.allclose(narrow, full_logits, atol=1e-3)
    torch.testing.assert_close(model(ids).logits, full_logits, rtol=0, atol=0)  # switched back exactly
    path = extract(sn, cfg, tmp_path / "n")
    config = json.loads((path / "config.json").read_text())
    assert config["hidden_size"] == cfg.hidden and config["head_dim"] == sn.arch.head_dim
    assert config["model_type"] == (family if uniform else f"llamanas_{family}")
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.testing.assert_close(loaded(ids).logits, narrow, rtol=0, atol=1e-4)
    assert sum(p.numel() for p in loaded.parameters()) == cfg.num_params(sn.arch)


def test_full_width_hidden_is_the_full_network(ids):
    model = tiny_model("llama")
    sn = SuperNet(model)
    full = SubnetConfig.full(sn.arch)
    expected = model(ids).logits
    with sn.subnet(SubnetConfig(full.layers, full.mlp, full.kv_groups, hidden=64)):
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)


def test_compensation_and_repair_keep_the_narrow_streams_rows(family, ids, tmp_path):
    """Bias compensation runs in place and extracts equal; least-squares repair of a narrow stream is the
    full stream's repair cut to its first rows (each output row is its own fit)."""
    model = tiny_model(family)
    order_residual(model, _batches())
    sn = SuperNet(model)
    comp = sn.compensate(_batches())
    cfg = SubnetConfig((0, 1, 2, 3), (24, 96, 0, 48), (2, 1, 2, 0), hidden=48)
    with sn.subnet(cfg):
        expected = model(ids).logits
    path = extract(sn, cfg, tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    assert config["hidden_size"] == 48 and config["layer_output_bias"] is True
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-4)
    assert loaded.model.layers[0].mlp.down_proj.bias.shape == (48,)
    assert loaded.model.layers[0].mlp.down_proj.bias.abs().sum() > 0  # compensated, not a zero bias

    wide = SubnetConfig(cfg.layers, cfg.mlp, cfg.kv_groups)
    narrow_fit = repair_weights(model, cfg, _batches(), comp)
    wide_fit = repair_weights(model, wide, _batches(), comp)
    assert set(narrow_fit) == set(wide_fit) and len(narrow_fit) == 6  # 3 sliced blocks, weight and bias each
    for name, t in narrow_fit.items():
        assert t.shape[0] == 48
        torch.testing.assert_close(t, wide_fit[name][:48], rtol=0, atol=1e-6)
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(" ".join(f"w{(i * j + j) % 126}" for j in range(60)) for i in range(1, 10)))
    path = extract(sn, cfg, tmp_path / "r", tiny_tokenizer(), repair=True, calibration=calib)
    repaired = AutoModelForCausalLM.from_pretrained(path).eval()
    assert repaired.config.hidden_size == 48 and torch.isfinite(repaired(ids).logits).all()
    assert not torch.equal(
        repaired.model.layers[0].mlp.down_proj.weight, loaded.model.layers[0].mlp.down_proj.weight
    )
    assert sum(p.numel() for p in repaired.parameters()) == sum(p.numel() for p in loaded.parameters())


def test_narrow_subnet_bytes_and_int8_and_space_refusal(ids):
    from llamanas.supernet.precision import apply_precision, model_bytes, policy_bytes
    from llamanas.supernet.slicing import build_extracted

    model = tiny_model("qwen2")
    sn = SuperNet(model)
    cfg = SubnetConfig((0, 2, 3), (96, 48, 48), (2, 1, 2), bits=(8, 4, 16), hidden=48)
    small = apply_precision(
        build_extracted(model, SubnetConfig(cfg.layers, cfg.mlp, cfg.kv_groups, hidden=48)), cfg.bits
    )
    assert (
        model_bytes(small)
        == policy_bytes(sn.arch, cfg)
        < policy_bytes(sn.arch, SubnetConfig(cfg.layers, cfg.mlp, cfg.kv_groups, cfg.bits))
    )
    assert torch.isfinite(small(ids).logits).all()
    with pytest.raises(LlamanasError, match=r"hidden 48 is not a choice of this space; allowed: \[64\]"):
        sn.space.encode(SubnetConfig(cfg.layers, cfg.mlp, cfg.kv_groups, hidden=48))


def test_cli_extract_and_measure_a_narrow_subnet(tiny_dir, tmp_path, ids):
    """Through the CLI: the residual stream is ordered when --subnet narrows it, and the checkpoint is the
    super-network's narrow sub-network."""
    from typer.testing import CliRunner

    from llamanas.cli.app import app
    from llamanas.supernet.elastic import load_supernet

    sub = '{"layers": [0, 1, 2, 3], "mlp": [96, 48, 48, 96], "kv_groups": [2, 1, 2, 2], "hidden": 48}'
    r = CliRunner().invoke(
        app, ["extract", "--model", str(tiny_dir), "--subnet", sub, "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 0, r.output
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "x").eval()
    assert loaded.config.hidden_size == 48
    sn, _ = load_supernet(str(tiny_dir), residual=True)
    with sn.subnet(SubnetConfig.from_json(sub)) as m:
        torch.testing.assert_close(loaded(ids).logits, m(ids).logits, rtol=0, atol=1e-4)
    r = CliRunner().invoke(
        app, ["measure", "--model", str(tiny_dir), "--subnet", sub, "--json", "--repeats", "1"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["params"] == SubnetConfig.from_json(sub).num_params(sn.arch)


def test_hidden_gene_encodes_counts_and_samples():
    import numpy as np

    from llamanas.model.arch import Arch
    from llamanas.search.counts import Counts
    from llamanas.search.predictors import Encoder
    from llamanas.supernet.precision import policy_bytes
    from llamanas.supernet.space import SearchSpace

    arch = Arch.from_hf(tiny_model("qwen2").config)
    plain = SearchSpace.from_dict({"bits": [4, 8, 16]}, arch)
    space = SearchSpace.from_dict({"hidden_choices": [0.5, 0.75], "bits": [4, 8, 16]}, arch)
    assert space.hidden_choices == (32, 48, 64) and space.size() == 3 * plain.size()
    assert "hidden_choices" not in plain.to_dict() and SearchSpace.from_saved(space.to_dict()) == space
    assert space.variable_names[-1] == "hidden" and space.largest().hidden is None
    assert space.smallest().hidden == 32
    counts, rng = Counts(space), np.random.default_rng(0)
    cfgs = [space.sample(rng) for _ in range(40)]
    assert {c.hidden for c in cfgs} == {None, 32, 48}
    X = np.stack([space.encode(c) for c in cfgs])
    assert [space.decode(x) for x in X] == cfgs
    got = counts(X)
    for i, c in enumerate(cfgs):
        assert got["params"][i] == c.num_params(arch) and got["macs"][i] == c.macs_per_token(arch)
        assert got["bytes"][i] == policy_bytes(arch, c)
    lo, hi = counts.range("params")  # a bound where attention can be skipped; exact without
    assert lo <= space.smallest().num_params(arch) and hi == space.largest().num_params(arch)
    narrow = SearchSpace.from_dict({"hidden_choices": [0.5], "skip_attention": False}, arch)
    assert Counts(narrow).range("params")[0] == narrow.smallest().num_params(arch)
    features = Encoder(space)(X)
    assert Encoder(space).names[-1] == "hidden_frac"
    assert sorted(set(features[:, -1])) == [0.5, 0.75, 1.0]
    with pytest.raises(LlamanasError, match="hidden_choices: size 80 exceeds"):
        SearchSpace.from_dict({"hidden_choices": [80]}, arch)


def test_search_with_a_hidden_gene_on_the_tiny_model(tiny_dir, tmp_path):
    """A search over a space with hidden choices runs on the residual-ordered super-network, and its
    members keep their hidden width through the store and `llamanas space`."""
    from typer.testing import CliRunner

    from llamanas.cli.app import app
    from llamanas.model.arch import Arch
    from llamanas.model.load import load_config
    from llamanas.search.args import SearchArgs
    from llamanas.search.run import load_run, search

    space_file = tmp_path / "hidden.yaml"
    space_file.write_text(
        "min_depth: 4\nmlp_choices: [0.5, 1.0]\nkv_groups: [1, 2]\nhidden_choices: [0.5, 0.75]\n"
    )
    r = CliRunner().invoke(app, ["space", "--model", str(tiny_dir), "--space", str(space_file)])
    assert r.exit_code == 0 and "hidden size" in r.output and "32, 48, 64" in r.output
    args = SearchArgs(
        model=str(tiny_dir), objectives=("params", "macs"), algorithm="linas", evaluations=8, population=4,
        inner_generations=10, predictor="ridge", space=str(space_file), out=str(tmp_path / "run"),
    )  # fmt: skip
    res = search(args)
    view = load_run(res.run_dir)
    assert len(view.evaluated) == 8 and view.info["space"]["hidden_choices"] == [32, 48, 64]
    assert any(e.config.hidden == 32 for e in view.evaluated)  # the smallest member is narrow
    arch = Arch.from_hf(load_config(str(tiny_dir)))
    assert all(e.values["params"] == e.config.num_params(arch) for e in view.evaluated)
