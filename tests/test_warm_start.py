"""Warm start of the search: block importance and sensitivity pick the first population's seeds."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from test_search import SPACE, SyntheticEvaluator, SyntheticSpec, args_for

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.search.files import RunFiles
from llamanas.search.run import load_run, search
from llamanas.search.warm_start import WARM_START_FILE, interleave, warm_start_configs
from llamanas.search.workers import EvalSettings, SupernetSpec
from llamanas.supernet.blocks import attention_configs, attention_order, block_influence_per_block
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig


def _batches(n=3, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 128, (2, seq), generator=g) for _ in range(n)]


def _calibration(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(f"w{(7 * i) % 126}" for i in range(3000)))
    return str(path)


def test_attention_seeds_skip_the_least_influential_blocks_first():
    model = tiny_model("llama", layers=4)
    with torch.no_grad():  # layer 2's attention adds nothing: the first to skip
        model.model.layers[2].self_attn.o_proj.weight.zero_()
    sn = SuperNet(model)  # the default space: attention blocks can be skipped
    influence = block_influence_per_block(sn.model, _batches())["attention"]
    order = attention_order(sn.space, influence)
    assert order[0] == 2 and 0 not in order and sorted(order) == [1, 2, 3]
    seeds = attention_configs(sn, _batches())
    # k = 1 and 2 of 4 layers (1/8 and 1/4 round to 1, 3/8 and 1/2 to 2); the rest is the largest sub-network
    assert [sum(g == 0 for g in c.kv_groups) for c in seeds] == [1, 2]
    assert seeds[0].kv_groups == (2, 2, 0, 2) and seeds[1].kv_groups[2] == 0
    assert all(c.mlp == sn.space.largest().mlp and c.kv_groups[0] > 0 for c in seeds)
    assert sn.active == SubnetConfig.full(sn.arch)  # the super-network is left as it was


def test_attention_seeds_need_a_space_that_skips_attention(tiny_dir, tmp_path):
    model = tiny_model("llama", layers=4)
    arch = Arch.from_hf(model.config)
    sn = SuperNet(model, SearchSpace.from_arch(arch, skip_attention=False))
    assert attention_configs(sn, _batches()) == []
    with pytest.raises(LlamanasError, match="skips none"):
        warm_start_configs(sn, tiny_tokenizer(), ["attention"], _calibration(tmp_path))
    with pytest.raises(LlamanasError, match="Unknown warm start 'sensitivty'. Did you mean 'sensitivity'"):
        warm_start_configs(sn, tiny_tokenizer(), ["sensitivty"], _calibration(tmp_path))


def test_the_evaluator_makes_seeds_of_its_space(tiny_dir, tmp_path):
    """The real evaluator: seeds from the loaded (ordered) super-network, in the driver's space."""
    from llamanas.model.load import load_config

    arch = Arch.from_hf(load_config(str(tiny_dir)))
    space = SearchSpace.from_arch(arch)
    spec = SupernetSpec(str(tiny_dir), space.to_dict(), EvalSettings(), calibration=_calibration(tmp_path))
    seeds = spec.build().warm_start(("sensitivity", "attention"))
    assert list(seeds) == ["sensitivity", "attention"]
    sens = [SubnetConfig.from_dict(d) for d in seeds["sensitivity"]]
    assert sens, "sensitivity made no seed"
    full = SubnetConfig.full(arch).num_params(arch)
    sizes = [c.num_params(arch) / full for c in sens]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] <= 0.9  # 90%, 80%, ... of the parameters
    for c in sens:
        space.validate(c)
        assert c.depth == arch.num_layers and 0 not in c.mlp and 0 not in c.kv_groups  # widths only
    attn = [SubnetConfig.from_dict(d) for d in seeds["attention"]]
    assert attn and all(space.validate(c) and 0 in c.kv_groups for c in attn)


class WarmEvaluator(SyntheticEvaluator):
    def warm_start(self, names):
        self.spec.calls.append(tuple(names))
        small = SubnetConfig(tuple(range(8)), (128,) * 8, (1,) * 8)
        mid = SubnetConfig(tuple(range(6)), (192,) * 6, (2,) * 6)
        return {"sensitivity": [small.to_dict(), mid.to_dict()], "attention": [mid.to_dict()]}


@dataclass
class WarmSpec(SyntheticSpec):
    calls: list = None

    def build(self, device=None):
        return WarmEvaluator(self)


def test_search_puts_seeds_after_the_anchors_and_resumes_without_remaking_them(tmp_path):
    spec = WarmSpec(calls=[])
    args = args_for(tmp_path, "linas", evaluations=12, warm_start=("sensitivity", "attention"))
    search(args, spec, SPACE)
    first = [e.config for e in load_run(args.run_dir).evaluated[:6]]
    seeds = interleave(json.loads((args.run_dir / WARM_START_FILE).read_text()))
    assert len(seeds) == 2  # mid appears once
    assert first[:4] == [SPACE.largest(), SPACE.smallest(), *seeds]
    assert spec.calls == [("sensitivity", "attention")]
    before = [e.config.key() for e in load_run(args.run_dir).evaluated]
    search(args, spec, SPACE)  # resumed: the seeds come from the run folder
    assert spec.calls == [("sensitivity", "attention")]
    assert [e.config.key() for e in load_run(args.run_dir).evaluated] == before
    assert RunFiles(args.run_dir).warm_start(("attention",)) is None  # made for other names: not reused
    # Without a warm start nothing is made, and the run's identity is the one runs had before the option.
    plain_args = args_for(tmp_path, "linas", name="plain", evaluations=12)
    plain = search(plain_args, SyntheticSpec(), SPACE)
    assert not (plain.run_dir / WARM_START_FILE).exists()
    assert "warm_start" not in plain_args.trajectory_dict() and "warm_start" in args.trajectory_dict()
    assert [e.config for e in load_run(plain.run_dir).evaluated[:2]] == first[:2]
    assert [e.config for e in load_run(plain.run_dir).evaluated[2:4]] != first[2:4]


def test_warm_start_needs_an_evaluator_that_makes_seeds(tmp_path):
    with pytest.raises(LlamanasError, match="has no warm start"):
        search(
            args_for(tmp_path, "random", evaluations=6, warm_start=("sensitivity",)), SyntheticSpec(), SPACE
        )
    with pytest.raises(LlamanasError, match="Unknown warm start 'blocks'"):
        search(args_for(tmp_path, "random", evaluations=6, warm_start=("blocks",)), SyntheticSpec(), SPACE)


def test_sensitivity_is_the_default_and_a_cold_run_folder_resumes_cold(tmp_path):
    """The default changed from cold to sensitivity: the command that made a cold run still resumes it."""
    from dataclasses import replace

    from llamanas.search.args import SearchArgs
    from llamanas.search.run import adopt_run
    from llamanas.search.warm_start import DEFAULT_WARM_START

    assert SearchArgs().warm_start == DEFAULT_WARM_START == ("sensitivity",)
    assert SearchArgs(warm_start=("none",)).warm_start == ()
    cold = args_for(tmp_path, "linas", name="old", evaluations=12)  # warm_start=(): a run made before
    search(cold, SyntheticSpec(), SPACE)
    today = replace(cold, warm_start=DEFAULT_WARM_START, evaluations=18)  # the same command, today's default
    assert adopt_run(today)[0].warm_start == ()
    longer = search(today, SyntheticSpec(), SPACE)  # no warm start asked of an evaluator that has none
    assert longer.evaluations == 18 and not (longer.run_dir / WARM_START_FILE).exists()
    # A warm start named on the command line is not overridden: the store refuses the other settings.
    with pytest.raises(LlamanasError, match="different settings"):
        search(replace(today, warm_start=("attention",)), SyntheticSpec(), SPACE)
    # A new folder takes today's default.
    assert adopt_run(replace(today, out=str(tmp_path / "new")))[0].warm_start == DEFAULT_WARM_START
