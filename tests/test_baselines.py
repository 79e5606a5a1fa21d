"""Pruning baselines at matched size: depth truncation, ShortGPT block influence, uniform MLP width."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from llamanas.errors import LlamanasError
from llamanas.evaluation.questions import Questions
from llamanas.evidence import baselines
from llamanas.evidence.args import BaselineArgs
from llamanas.evidence.baselines import (
    baseline_configs,
    block_influence,
    depth_truncation,
    read_baselines,
    run_baselines,
    shortgpt,
    uniform_width,
)
from llamanas.model.arch import Arch
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.subnet import SubnetConfig

# SmolLM2-135M's shape: 30 layers, tied 49152 x 576 embeddings (a fifth of the parameters).
SMOL = Arch(
    num_layers=30,
    hidden_size=576,
    intermediate_size=1536,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    vocab_size=49152,
    tie_word_embeddings=True,
)
TARGETS = (0.95, 0.9, 0.8, 0.7, 0.5)


def _full(arch):
    return SubnetConfig.full(arch).num_params(arch)


@pytest.mark.parametrize("target", TARGETS)
def test_depth_is_the_largest_prefix_within_the_target(target):
    cfg = depth_truncation(SMOL, target)
    assert cfg.layers == tuple(range(cfg.depth)) and set(cfg.mlp) == {1536} and set(cfg.kv_groups) == {3}
    assert cfg.num_params(SMOL) <= target * _full(SMOL)
    if cfg.depth < 30:  # one more layer would exceed the target
        longer = SubnetConfig(tuple(range(cfg.depth + 1)), (1536,) * (cfg.depth + 1), (3,) * (cfg.depth + 1))
        assert longer.num_params(SMOL) > target * _full(SMOL)


@pytest.mark.parametrize("target", TARGETS)
def test_width_is_the_widest_uniform_mlp_within_the_target(target):
    cfg = uniform_width(SMOL, target)
    assert cfg.depth == 30 and len(set(cfg.mlp)) == 1 and cfg.mlp[0] % 8 == 0
    budget = target * _full(SMOL)
    assert cfg.num_params(SMOL) <= budget
    wider = SubnetConfig(cfg.layers, (cfg.mlp[0] + 8,) * 30, cfg.kv_groups)
    assert wider.num_params(SMOL) > budget
    # Closeness: the gap is less than one step of 8 channels in every layer (30 x 3 x 576 x 8 params).
    assert budget - cfg.num_params(SMOL) < 30 * 3 * 576 * 8


def test_width_at_70_percent_of_smollm2():
    # Removing 30% (40.6M of 134.5M) from the 79.6M MLP parameters leaves ~49% of the MLP width.
    assert uniform_width(SMOL, 0.7).mlp[0] == 752


@pytest.mark.parametrize("target", TARGETS)
def test_shortgpt_drops_lowest_influence_layers_within_the_target(target):
    bi = [((i * 7) % 30) / 30 for i in range(30)]  # a permutation of distinct scores
    cfg = shortgpt(SMOL, bi, target)
    dropped = sorted(set(range(30)) - set(cfg.layers))
    assert cfg.num_params(SMOL) <= target * _full(SMOL)
    assert len(dropped) == 30 - depth_truncation(SMOL, target).depth  # same number of layers as truncation
    lowest = sorted(range(30), key=lambda i: bi[i])[: len(dropped)]
    assert dropped == sorted(lowest)


def test_infeasible_target_is_a_clear_error_and_a_note():
    with pytest.raises(
        LlamanasError, match=r"depth: no sub-network fits 10% .* smallest it can make has 2[0-9]\.\d%"
    ):
        depth_truncation(SMOL, 0.1)
    with pytest.raises(LlamanasError, match="width: no sub-network fits 10%"):
        uniform_width(SMOL, 0.1)
    with pytest.raises(LlamanasError, match=r"must lie in \(0, 1\]; got 1.5"):
        depth_truncation(SMOL, 1.5)
    specs = baseline_configs(SMOL, [0.9, 0.1], [0.5] * 30)
    assert [s.method for s in specs] == ["base", "depth", "shortgpt", "width", "depth", "shortgpt", "width"]
    assert all(s.config is not None for s in specs[:4])
    assert all(s.config is None and "no sub-network fits" in s.note for s in specs[4:])
    with pytest.raises(LlamanasError, match=r"Unknown baseline methods \['magnitude'\]"):
        baseline_configs(SMOL, [0.9], None, methods=["depth", "magnitude"])


def _batches(n=3, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 128, (2, seq), generator=g) for _ in range(n)]


def test_block_influence_finds_the_layer_that_does_nothing():
    model = tiny_model("llama", layers=4)
    with torch.no_grad():  # layer 2 adds zero to the residual stream: its output equals its input
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    bi = block_influence(model, _batches())
    assert len(bi) == 4
    assert bi[2] == pytest.approx(0.0, abs=1e-9)
    assert min(b for i, b in enumerate(bi) if i != 2) > 1e-3
    arch = Arch.from_hf(model.config)
    target = SubnetConfig((0, 1, 2), (96,) * 3, (2,) * 3).num_params(arch) / _full(arch)
    assert shortgpt(arch, bi, target).layers == (0, 1, 3)
    assert depth_truncation(arch, target).layers == (0, 1, 2)


def test_attention_influence_finds_the_attention_that_does_nothing():
    from llamanas.evidence.baselines import drop_attention
    from llamanas.supernet.blocks import block_influence_per_block, drop_attention_blocks

    model = tiny_model("llama", layers=4)
    with torch.no_grad():  # layer 1's attention adds zero; its MLP still works
        model.model.layers[1].self_attn.o_proj.weight.zero_()
    bi = block_influence_per_block(model, _batches())
    assert bi["attention"][1] == pytest.approx(0.0, abs=1e-9) and bi["mlp"][1] > 1e-3
    assert min(b for i, b in enumerate(bi["attention"]) if i != 1) > 1e-3
    arch = Arch.from_hf(model.config)
    one = drop_attention_blocks(arch, bi["attention"], 1)
    assert one.kv_groups == (2, 0, 2, 2) and one.mlp == (96,) * 4
    target = one.num_params(arch) / _full(arch)
    assert drop_attention(arch, bi["attention"], target) == one
    with pytest.raises(LlamanasError, match="one must stay"):
        drop_attention_blocks(arch, bi["attention"], 4)
    specs = baseline_configs(arch, [target], None, ["attention"], attention_influence=bi["attention"])
    assert specs[1].config == one


def test_block_influence_works_on_a_supernet_with_elastic_layers():
    model = tiny_model("mistral", layers=3)
    sn = SuperNet(model)
    bi = block_influence(sn.model, _batches(1))
    assert len(bi) == 3 and all(0 < b < 2 for b in bi)


@dataclass
class FakeResult:
    metrics: dict
    stderr: dict
    chance: float = 0.25

    def to_dict(self):
        return {
            "metrics": self.metrics,
            "stderr": self.stderr,
            "chance": self.chance,
            "n": 50,
            "split": "validation",
        }


def test_run_baselines_writes_json_and_csv(tmp_path, monkeypatch):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(" ".join(f"w{(i * j) % 120}" for j in range(40)) for i in range(1, 6)))
    loaded = []

    def loader(name, **kw):
        model = tiny_model("llama", layers=4, seed=0 if name == "base-model" else 1)
        loaded.append(name)
        return SuperNet(model), tiny_tokenizer()

    calls = []

    def evaluate_fn(model, tokenizer, tasks, questions):
        kw = questions.to_dict()
        depth = len(model.get_decoder().layers)
        width = model.get_decoder().layers[0].mlp.gate_proj.active_out or 96
        calls.append((depth, width, kw))
        return {t: FakeResult({"acc": 0.25 + 0.05 * depth + width / 1e4}, {"acc": 0.01}) for t in tasks}

    monkeypatch.setattr(baselines, "load_supernet", loader)
    monkeypatch.setattr(baselines, "evaluate", evaluate_fn)
    run = run_baselines(
        BaselineArgs(
            model="base-model",
            tasks=("taskA", "taskB"),
            sizes=(0.9, 0.75),
            out=str(tmp_path / "out"),
            supernet="tuned",
            questions=Questions(split="validation", limit=20),
            calibration=str(calib),
            calibration_samples=4,
            seq_len=16,
        )
    )
    assert loaded == ["base-model", "tuned"]
    assert len(run.rows) == 2 * (1 + 3 * 2)
    assert {r.source for r in run.rows} == {"base", "supernet"} and set(run.block_influence) == {
        "base",
        "supernet",
    }
    assert all(
        kw == {"split": "validation", "limit": 20, "num_fewshot": None, "seed": 0, "offset": 0}
        for *_, kw in calls
    )
    full = run.full_params
    for r in run.rows:
        assert r.params <= r.target * full and r.fraction == pytest.approx(r.params / full)
        assert set(r.results) == {"taskA", "taskB"}
    base = [r for r in run.rows if r.method == "base"]
    assert [r.params for r in base] == [full, full]
    width = next(r for r in run.rows if r.method == "width" and r.target == 0.75)
    assert (len(width.config["layers"]), width.config["mlp"][0]) in {(d, w) for d, w, _ in calls}
    # Files: JSON round trip and a CSV row per baseline with one column per task metric.
    again = read_baselines(tmp_path / "out")
    assert again.to_dict() == json.loads(json.dumps(run.to_dict()))
    with open(tmp_path / "out" / "baselines.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(run.rows)
    assert {"taskA/acc", "taskA/acc_stderr", "taskB/acc"} <= set(rows[0])
    assert float(rows[0]["taskA/acc"]) == pytest.approx(run.rows[0].results["taskA"]["metrics"]["acc"])


def test_read_baselines_missing_file_is_clear(tmp_path):
    with pytest.raises(LlamanasError, match="No baselines file"):
        read_baselines(tmp_path)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--sizes", "0.9,1.5"], "1.5"),
        (["--sizes", "0.9,big"], "big"),
        (["--methods", "width,magic"], "magic"),
        (["--importance", "grad"], "grad"),
        (["--calibration-samples", "0"], "--calibration-samples"),
        (["--limit", "0"], "--limit"),
        (["--recover"], "--supernet"),
        (["--tasks", "no_such_task"], "no_such_task"),
    ],
)
def test_cli_baselines_rejects_bad_values_before_loading(flags, says, monkeypatch):
    from typer.testing import CliRunner

    from llamanas.cli.app import app

    monkeypatch.setattr(baselines, "load_supernet", lambda *a, **k: pytest.fail("loaded before the check"))
    r = CliRunner().invoke(app, ["baselines", "--tasks", "arc_easy", "--out", "/tmp/x", *flags])
    assert r.exit_code != 0
    assert isinstance(r.exception, LlamanasError) and says in str(r.exception)


def test_cli_baselines_options_are_the_args_fields(monkeypatch, tmp_path):
    """Every BaselineArgs field the command shows reaches run_baselines as given (one declaration)."""
    from typer.testing import CliRunner

    from llamanas.cli import commands_evidence
    from llamanas.cli.app import app

    seen = []

    def fake_run(args, progress=None):
        seen.append(args)
        progress(0, 2, "base full model")  # the command's progress bar takes the calls
        progress(2, 2, "done")
        q = args.questions.to_dict()
        return baselines.BaselineRun(
            args.model, None, list(args.tasks), **q, sizes=[], full_params=1, block_influence={}, rows=[]
        )

    monkeypatch.setattr(commands_evidence, "run_baselines", fake_run)
    flags = ["--tasks", "arc_easy,piqa", "--out", str(tmp_path), "--sizes", "0.8,0.7"]
    flags += ["--methods", "width,sensitivity", "--split", "validation", "--limit", "50", "--offset", "100"]
    flags += ["--calibration-samples", "8", "--importance", "wanda", "--compensate", "--seed", "3"]
    r = CliRunner().invoke(app, ["baselines", *flags])
    assert r.exit_code == 0, r.output
    (args,) = seen
    assert args.tasks == ("arc_easy", "piqa") and args.sizes == (0.8, 0.7)
    assert args.methods == ("width", "sensitivity") and args.calibration_samples == 8
    assert args.importance == "wanda" and args.compensate and args.out == str(tmp_path)
    assert args.questions == Questions(split="validation", limit=50, seed=3, offset=100)
    assert args.seq_len == 128 and args.width_multiple == 8  # not on the command line
    help_text = CliRunner().invoke(app, ["baselines", "--help"]).output
    assert "--calibration-samples" in help_text and "--seq-len" not in help_text


def test_recovered_baselines_get_the_supernets_fine_tuning_budget(tiny_dir, tmp_path, monkeypatch):
    """recover=True prunes the original model, fine-tunes each baseline with the super-network's recorded
    budget, and evaluates the fine-tuned pruned model."""
    from llamanas.tuning.args import TuneArgs
    from llamanas.tuning.tune import finetune

    data = tmp_path / "alpaca.json"
    data.write_text(
        json.dumps(
            [
                {"instruction": f"w{i} w{i + 1}", "input": "", "output": f"w{i + 2} w{i + 3} w{i + 4}"}
                for i in range(20)
            ]
        )
    )
    tune = TuneArgs(
        data=str(data),
        out=str(tmp_path / "sn"),
        model=str(tiny_dir),
        steps=3,
        batch_size=4,
        lr=1e-2,
        eval_size=0,
    )
    finetune(tune, progress=False)
    seen = []

    def evaluate_fn(model, tokenizer, tasks, questions):
        layers = model.get_decoder().layers
        seen.append(
            (
                len(layers),
                layers[0].mlp.gate_proj.weight.shape[0],
                float(layers[0].mlp.up_proj.weight.detach().sum()),
            )
        )
        return {t: FakeResult({"acc": 0.3}, {"acc": 0.01}) for t in tasks}

    real_load = baselines.load_supernet
    monkeypatch.setattr(baselines, "load_supernet", lambda name, **kw: real_load(name, order=False))
    monkeypatch.setattr(baselines, "evaluate", evaluate_fn)
    run = run_baselines(
        BaselineArgs(
            model=str(tiny_dir),
            tasks=("taskA",),
            sizes=(0.75,),
            out=str(tmp_path / "out"),
            supernet=str(tmp_path / "sn"),
            methods=("depth", "width"),
            recover=True,
        )
    )
    rec = [r for r in run.rows if r.source == "recovered"]
    assert [r.method for r in rec] == ["base", "depth", "width"]
    for r in rec:
        name = "base" if r.method == "base" else f"{r.method}-0.75"
        meta = json.loads(
            (tmp_path / "out" / "recovered" / name / "tuned" / "llamanas_supernet.json").read_text()
        )
        args = meta["training"]["args"]
        assert meta["training"]["steps"] == 3 and args["strategy"] == "full" and args["lr"] == 1e-2
        assert args["data"] == str(data) and args["batch_size"] == 4
        pruned = SubnetConfig.from_dict(r.config)
        cfg = json.loads((tmp_path / "out" / "recovered" / name / "tuned" / "config.json").read_text())
        assert cfg["num_hidden_layers"] == pruned.depth
    # The recovered rows evaluated fine-tuned weights of the pruned shapes (depth: fewer layers, width:
    # narrower MLPs), not the original ones sliced.
    depth_row = next(r for r in rec if r.method == "depth")
    width_row = next(r for r in rec if r.method == "width")
    # Evaluation order: the base model's three rows, the three recovered ones, then the super-network's.
    recovered = [(d, w) for d, w, _ in seen[3:6]]
    assert recovered == [(4, 96), (len(depth_row.config["layers"]), 96), (4, width_row.config["mlp"][0])]
    assert width_row.config["mlp"][0] < 96 and len(depth_row.config["layers"]) < 4
    assert seen[3][2] != seen[0][2]  # the full model was fine-tuned too (plain fine-tuning, same budget)
    with pytest.raises(LlamanasError, match="no fine-tuning record"):
        run_baselines(
            BaselineArgs(
                model=str(tiny_dir),
                tasks=("taskA",),
                sizes=(0.75,),
                out=str(tmp_path / "o2"),
                supernet=str(tiny_dir),
                recover=True,
            )
        )


def test_sensitivity_baseline_at_matched_size(tmp_path):
    from llamanas.supernet.sensitivity import Sensitivity

    specs = baseline_configs(SMOL, [0.8], None, methods=["sensitivity"])
    assert specs[1].config is None and "sensitivity needs" in specs[1].note
    # Later layers are cheap to cut: the allocation cuts them first, within the target.
    sens = Sensitivity(
        3.0,
        [
            {m: (1536 - m) / 1536 * (1.0 if i < 20 else 0.01) for m in (384, 768, 1152, 1536)}
            for i in range(30)
        ],
        [{g: (3 - g) * 5.0 for g in (1, 2, 3)} for _ in range(30)],
    )
    spec = baseline_configs(SMOL, [0.9], None, methods=["sensitivity"], sensitivity=sens)[1]
    cfg = spec.config
    assert spec.method == "sensitivity" and cfg.num_params(SMOL) <= 0.9 * _full(SMOL)
    assert cfg.depth == 30 and set(cfg.kv_groups) == {3}
    assert all(m == 1536 for m in cfg.mlp[:20]) and min(cfg.mlp[20:]) == 384


def test_run_baselines_with_sensitivity(tmp_path, monkeypatch):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(" ".join(f"w{(i * j) % 120}" for j in range(40)) for i in range(1, 6)))

    def loader(name, **kw):
        return SuperNet(tiny_model("llama", layers=4)), tiny_tokenizer()

    def evaluate_fn(model, tokenizer, tasks, questions):
        return {t: FakeResult({"acc": 0.3}, {"acc": 0.01}) for t in tasks}

    monkeypatch.setattr(baselines, "load_supernet", loader)
    monkeypatch.setattr(baselines, "evaluate", evaluate_fn)
    run = run_baselines(
        BaselineArgs(
            model="base-model",
            tasks=("taskA",),
            sizes=(0.9,),
            out=str(tmp_path / "out"),
            methods=("width", "sensitivity"),
            calibration=str(calib),
            calibration_samples=4,
            seq_len=16,
        )
    )
    assert [r.method for r in run.rows] == ["base", "width", "sensitivity"]
    row = run.rows[2]
    assert row.params <= 0.9 * run.full_params and row.note == ""
    assert set(run.sensitivity) == {"base"} and len(run.sensitivity["base"]["mlp"]) == 4
    assert read_baselines(tmp_path / "out").to_dict() == json.loads(json.dumps(run.to_dict()))


def test_run_baselines_checks_the_importance_name_first(monkeypatch):
    monkeypatch.setattr(baselines, "load_supernet", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(LlamanasError, match="Unknown importance score 'grad'"):
        run_baselines(BaselineArgs(model="base-model", tasks=("taskA",), sizes=(0.9,), importance="grad"))


def test_baselines_report_progress_and_resume_after_an_interruption(tmp_path, monkeypatch):
    """Each baseline is announced with how many are done and how many there are; an interrupted run's
    finished rows are kept and re-used by the same command, and forgotten once baselines.json is written."""
    monkeypatch.setattr(
        baselines,
        "load_supernet",
        lambda name, **kw: (SuperNet(tiny_model("llama", layers=4)), tiny_tokenizer()),
    )
    calls = []

    def evaluate_fn(model, tokenizer, tasks, questions):
        if len(calls) == crash_at[0]:
            raise KeyboardInterrupt
        depth = len(model.get_decoder().layers)
        calls.append(depth)
        return {t: FakeResult({"acc": 0.25 + 0.05 * depth}, {"acc": 0.01}) for t in tasks}

    monkeypatch.setattr(baselines, "evaluate", evaluate_fn)
    args = BaselineArgs(
        tasks=("taskA",), sizes=(0.9, 0.75), methods=("depth", "width"), out=str(tmp_path / "out")
    )
    crash_at = [3]
    heard = []
    with pytest.raises(KeyboardInterrupt):
        run_baselines(args, lambda done, total, label: heard.append((done, total, label)))
    assert heard == [
        (0, 5, "base full model"),
        (1, 5, "base depth at 90%"),
        (2, 5, "base width at 90%"),
        (3, 5, "base depth at 75%"),
    ]
    assert (tmp_path / "out" / baselines.PARTIAL_FILE).is_file()
    crash_at = [None]
    heard.clear()
    run = run_baselines(args, lambda done, total, label: heard.append((done, total, label)))
    assert len(calls) == 5  # three rows re-used, two evaluated now
    assert heard[-1] == (5, 5, "done") and len(heard) == 6
    assert [r.results["taskA"]["metrics"]["acc"] for r in run.rows] == pytest.approx(
        [0.25 + 0.05 * d for d in (4, 3, 4, 2, 4)]
    )
    assert not (tmp_path / "out" / baselines.PARTIAL_FILE).exists()
    # other settings never re-use another run's rows
    crash_at = [None]
    run_baselines(BaselineArgs(**{**args.__dict__, "sizes": (0.9,)}))
    assert len(calls) == 5 + 3


@pytest.mark.parametrize("target", [0.9, 0.8, 0.7])
def test_hidden_is_the_widest_residual_stream_within_the_target(target):
    from llamanas.evidence.baselines import hidden_slice

    cfg = hidden_slice(SMOL, target)
    full = SubnetConfig.full(SMOL)
    assert cfg.layers == full.layers and cfg.mlp == full.mlp and cfg.kv_groups == full.kv_groups
    assert cfg.hidden % 64 == 0 and cfg.num_params(SMOL) <= target * _full(SMOL)
    wider = SubnetConfig(cfg.layers, cfg.mlp, cfg.kv_groups, hidden=cfg.hidden + 64)
    assert wider.num_params(SMOL) > target * _full(SMOL)


def test_run_baselines_orders_the_residual_stream_for_the_hidden_baseline(tmp_path, monkeypatch):
    seen = {}

    def loader(name, **kw):
        seen.update(kw)
        return SuperNet(tiny_model("llama", layers=4, hidden=128, inter=192)), tiny_tokenizer()

    def evaluate_fn(model, tokenizer, tasks, questions):
        return {t: FakeResult({"acc": 0.3}, {"acc": 0.01}) for t in tasks}

    monkeypatch.setattr(baselines, "load_supernet", loader)
    monkeypatch.setattr(baselines, "evaluate", evaluate_fn)
    run = run_baselines(BaselineArgs(model="m", tasks=("taskA",), sizes=(0.8,), methods=("hidden",)))
    assert seen["residual"] is True
    row = run.rows[1]
    assert row.method == "hidden" and row.config["hidden"] == 64 and row.params <= 0.8 * run.full_params
