"""Evaluation settings, the real super-network evaluator on a tiny model, pools, the Ray path and the CLI."""

import hashlib
import json
import math
import sys
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from llamanas.cli.app import app
from llamanas.errors import LlamanasError
from llamanas.evaluation.questions import Questions
from llamanas.model.arch import Arch
from llamanas.model.load import load_config
from llamanas.search.args import SearchArgs
from llamanas.search.run import load_run, search
from llamanas.search.workers import EvalSettings, LocalPool, Outcome, SupernetSpec, make_pool
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

runner = CliRunner()


def test_eval_settings_round_trip_and_hash():
    s = EvalSettings(tasks=("arc_easy", "piqa"), limit=50, timing=False)
    assert EvalSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.hash() == EvalSettings(tasks=("piqa", "arc_easy"), limit=50).hash()  # task order: same values
    assert s.hash() == EvalSettings(tasks=("arc_easy", "piqa"), limit=50, repeats=9).hash()  # not timed
    assert s.hash() != EvalSettings(tasks=("arc_easy", "piqa"), limit=51).hash()
    assert s.hash() != EvalSettings(tasks=("arc_easy", "piqa"), limit=50, split="test").hash()
    timed = EvalSettings(timing=True)
    assert timed.hash() != EvalSettings(timing=True, repeats=9).hash()
    with pytest.raises(LlamanasError, match=r"Unknown evaluation settings \['shots'\]"):
        EvalSettings.from_dict({"shots": 5})


def test_eval_settings_are_questions_plus_what_is_measured():
    s = EvalSettings(tasks=("piqa",), split="test", limit=9, num_fewshot=2, seed=4, offset=3, timing=True)
    assert s.questions() == Questions(split="test", limit=9, num_fewshot=2, seed=4, offset=3)
    assert EvalSettings(limit=9).hash() != EvalSettings(limit=9, offset=9).hash()
    # offset 0 and proxy_windows 0 leave the key of stores written before they existed unchanged
    d = {
        k: v
        for k, v in EvalSettings(limit=9).to_dict().items()
        if k not in ("offset", "runtime", "latency_table", "proxy_windows")
    }
    d.pop("compensate")
    for k in ("prefill_tokens", "gen_tokens", "repeats"):
        d.pop(k)
    old = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert EvalSettings(limit=9).hash() == old
    with pytest.raises(LlamanasError, match="--offset must be >= 0"):
        EvalSettings(offset=-1)


# ------------------------------------------------------------------------------------------------------
# A tiny random LLaMA as the evaluated super-network (no tokenizer or data needed): "accuracy" is next-token
# top-1 accuracy and "gold_nll" the mean next-token NLL on fixed random tokens.
# ------------------------------------------------------------------------------------------------------


# This module stays importable without conftest (Ray actors unpickle its specs in a fresh process), so it
# keeps its own tiny model and data check instead of conftest's tiny_model / arc_available.
def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


class TinyEvaluator:
    def __init__(self):
        from llamanas.model.load import fingerprint

        self.supernet = SuperNet(tiny_llama())
        self.fp = fingerprint(self.supernet.model)
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 128, (4, 24), generator=g)

    def fingerprint(self):
        return self.fp

    def reference(self):
        return {"gold_nll:tiny": (0.0, math.log(128))}

    @torch.inference_mode()
    def evaluate(self, cfg) -> Outcome:
        with self.supernet.subnet(cfg) as model:
            logits = model(self.ids).logits[:, :-1].float()
        target = self.ids[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 128), target.reshape(-1)).item()
        acc = (logits.argmax(-1) == target).float().mean().item()
        # Rounded: Ray actors run torch on 1 thread, this process on 2; the last bits may differ.
        return Outcome({"gold_nll:tiny": round(nll, 5), "acc:tiny": round(acc, 5)}, "random", 92)


class TinySpec:
    def build(self, device=None):
        return TinyEvaluator()


TINY_SPACE = SearchSpace.from_arch(SuperNet(tiny_llama()).arch, min_depth=2)


def tiny_args(tmp_path, name, **kw):
    base = dict(
        model="tiny",
        tasks=("tiny",),
        objectives=("gold_nll", "params"),
        algorithm="linas",
        evaluations=16,
        population=4,
        inner_generations=30,
        predictor="ridge",
        warm_start=(),
        out=str(tmp_path / name),
    )
    return SearchArgs(**{**base, **kw})


def test_local_pool_in_order():
    pool = make_pool(TinySpec(), workers=1)
    assert isinstance(pool, LocalPool)
    cfgs = [SubnetConfig((0, 1), (48, 96), (1, 2)), SubnetConfig.full(SuperNet(tiny_llama()).arch)]
    results = list(pool.imap_unordered(cfgs))
    assert [i for i, _ in results] == [0, 1]
    small, full = results[0][1].values, results[1][1].values
    assert small["gold_nll:tiny"] != full["gold_nll:tiny"] and 0 <= small["acc:tiny"] <= 1
    assert pool.fingerprint() == TinyEvaluator().fingerprint()
    with pytest.raises(LlamanasError, match="--workers must be >= 1; got 0"):
        make_pool(TinySpec(), workers=0)


# ------------------------------------------------------------------------------------------------------
# The real evaluator and the CLI on a saved tiny model folder (conftest's tiny_dir)
# ------------------------------------------------------------------------------------------------------


def test_supernet_evaluator_counts_and_timing(tiny_dir):
    space = SearchSpace.from_arch(SuperNet(tiny_llama()).arch)
    spec = SupernetSpec(str(tiny_dir), space.to_dict(), EvalSettings(timing=True, gen_tokens=4, repeats=2))
    ev = spec.build()
    ref = ev.reference()
    assert set(ref) == {"latency", "throughput"} and ref["latency"][1] > 0 and ref["throughput"][1] > 0
    out = ev.evaluate(SubnetConfig((0, 1), (48, 96), (1, 2)))
    assert out.values["latency"] > 0 and out.values["throughput"] > 0 and out.seconds > 0


def _arc_available() -> bool:
    try:
        from llamanas.evaluation.tasks import load_docs

        return len(load_docs("arc_easy", "validation")) > 0
    except Exception:  # noqa: BLE001 - any missing data source means: skip
        return False


@pytest.mark.skipif(not _arc_available(), reason="ARC-Easy data not available offline")
def test_search_cli_with_real_evaluator(tiny_dir, tmp_path):
    out = tmp_path / "run"
    common = [
        "--model",
        str(tiny_dir),
        "--tasks",
        "arc_easy",
        "--limit",
        "6",
        "--data-seed",
        "3",
        "--out",
        str(out),
    ]
    args = [
        "search",
        *common,
        "--objectives",
        "gold_nll,params",
        "--algorithm",
        "linas",
        "--evaluations",
        "6",
    ]
    args += [
        "--population",
        "3",
        "--inner-generations",
        "10",
        "--predictor",
        "ridge",
        "--constraint",
        "params<=1B",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "Pareto front" in r.output and "gold_nll (min)" in r.output
    view = load_run(out)
    assert len(view.evaluated) == 6
    e = view.evaluated[0]
    assert e.measured["n:arc_easy"] == 6 and e.measured["gold_nll:arc_easy"] > 0
    assert 0 <= e.measured["acc:arc_easy"] <= 1 and "acc_norm:arc_easy" in e.measured
    info = json.loads((out / "run.json").read_text())
    assert info["settings"]["split"] == "validation" and info["settings"]["limit"] == 6
    assert info["settings"]["seed"] == 3 and info["args"]["seed"] == 0  # subset seed apart from search seed
    # The default warm start: sensitivity seeds made on the tiny model, saved, and in the first population.
    seeds = json.loads((out / "warm_start.json").read_text())
    assert info["args"]["warm_start"] == ["sensitivity"] and list(seeds) == ["sensitivity"]
    assert SubnetConfig.from_dict(seeds["sensitivity"][0]) in [e.config for e in view.evaluated[:3]]
    # The gold-NLL hypervolume bound is a uniform guess over the vocabulary: ln(128) per gold token.
    lo, hi = info["bounds"]["gold_nll"]
    assert (
        lo == 0.0
        and hi > math.log(128)
        and (hi / math.log(128)) == pytest.approx(round(hi / math.log(128), 6))
    )
    with sqlite_rows(out / "results.sqlite") as rows:
        assert {row[0] for row in rows} == {"validation"}
    # front prints a table with ids; extract takes RUN_DIR:ID.
    r = runner.invoke(app, ["front", str(out)])
    assert r.exit_code == 0, r.output
    first = view.front[0].id
    assert f"\n│ {first:>2} │" in r.output.replace("┃", "│") or f" {first} " in r.output
    r = runner.invoke(app, ["front", str(out), "--json"])
    members = json.loads(r.stdout)
    assert [m["id"] for m in members] == [m.id for m in view.front]
    dest = tmp_path / "small"
    r = runner.invoke(
        app, ["extract", "--model", str(tiny_dir), "--subnet", f"{out}:{first}", "--out", str(dest)]
    )
    assert r.exit_code == 0, r.output
    saved = json.loads((dest / "llamanas_subnet.json").read_text())
    assert SubnetConfig.from_dict(saved["subnet"]) == view.member(first).config
    # Resuming the finished run evaluates nothing and prints the same front.
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "0 run now, 6 from the store" in r.output.replace("\n", " ")


@pytest.mark.skipif(not _arc_available(), reason="ARC-Easy data not available offline")
def test_gold_nll_reference_is_a_uniform_guess(tiny_dir):
    """The hypervolume bound of gold_nll is what a model that predicts every token uniformly scores."""
    space = SearchSpace.from_arch(SuperNet(tiny_llama()).arch)
    settings = EvalSettings(tasks=("arc_easy",), limit=5)
    ev = SupernetSpec(str(tiny_dir), space.to_dict(), settings, order=False).build()
    low, high = ev.reference()["gold_nll:arc_easy"]
    with torch.no_grad():
        ev.supernet.model.get_output_embeddings().weight.zero_()  # logits 0: uniform over the vocabulary
    out = ev.evaluate(SubnetConfig.full(space.arch))
    assert low == 0.0 and out.values["gold_nll:arc_easy"] == pytest.approx(high, rel=1e-6)
    assert high > math.log(128)  # answers have several tokens
    assert out.values["n:arc_easy"] == 5 and out.values["chance:arc_easy"] == pytest.approx(0.25, abs=0.05)
    assert out.values["acc_stderr:arc_easy"] >= 0 and out.split == "validation" and out.n_items == 5


def test_quantized_subnets_are_scored_as_extracted_and_quantized(tiny_dir, tmp_path):
    """A config with per-layer bits is scored on the extracted model at those bits, not on 16-bit slices."""
    from llamanas.deploy.extract import extract
    from llamanas.deploy.quantize import load_quantized
    from llamanas.evaluation.evaluate import score
    from llamanas.supernet.precision import QuantLinear, apply_precision
    from llamanas.supernet.slicing import standalone

    space = SearchSpace.from_dict({"bits": [4, 8, 16]}, SuperNet(tiny_llama()).arch)
    settings = EvalSettings(tasks=("arc_easy",), limit=6)
    ev = SupernetSpec(str(tiny_dir), space.to_dict(), settings, order=False).build()
    cfg = SubnetConfig((0, 1, 3), (48, 96, 24), (1, 2, 2), (4, 16, 8))
    with pytest.raises(LlamanasError, match="below 16 bits"):
        ev.supernet.activate(cfg)
    got = ev.evaluate(cfg).values["gold_nll:arc_easy"]
    plain = SubnetConfig(cfg.layers, cfg.mlp, cfg.kv_groups)
    with ev.supernet.subnet(plain) as model:
        sliced = score(model, ev.prepared)["arc_easy"].metrics["gold_nll"]
    expected = score(apply_precision(standalone(ev.supernet, plain), cfg.bits), ev.prepared)
    assert got == pytest.approx(expected["arc_easy"].metrics["gold_nll"], rel=1e-6)
    assert got != pytest.approx(sliced, rel=1e-6)  # the 4-bit layer changes the scores
    path = extract(ev.supernet, cfg, tmp_path / "q")
    model, _ = load_quantized(path)
    layers = model.get_decoder().layers
    assert [isinstance(la.mlp.up_proj, QuantLinear) for la in layers] == [True, False, True]
    assert [getattr(la.mlp.up_proj, "bits", 16) for la in layers] == [4, 16, 8]


class sqlite_rows:
    def __init__(self, path):
        import sqlite3

        self.db = sqlite3.connect(path)

    def __enter__(self):
        return self.db.execute("SELECT split FROM evaluations").fetchall()

    def __exit__(self, *exc):
        self.db.close()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--objectives", "params,sped"], "Unknown objective 'sped'"),
        (
            ["--objectives", "params,macs", "--constraint", "params<=10"],
            "Constraint 'params<=10' cannot be met",
        ),
        (["--algorithm", "grid", "--objectives", "params,macs"], "Unknown algorithm 'grid'"),
    ],
)
def test_search_cli_errors(tiny_dir, tmp_path, extra, message):
    r = runner.invoke(
        app, ["search", "--model", str(tiny_dir), "--evaluations", "4", "--out", str(tmp_path / "r"), *extra]
    )
    assert r.exit_code != 0
    assert message in str(r.exception) + r.output


def test_front_cli_errors(tmp_path):
    r = runner.invoke(app, ["front", str(tmp_path)])
    assert r.exit_code != 0 and "is not a search run directory" in str(r.exception)


def test_counts_only_search_needs_no_tasks(tiny_dir, tmp_path):
    """params/macs objectives: the evaluator loads the model but scores nothing; no data is needed."""
    args = SearchArgs(
        model=str(tiny_dir),
        objectives=("params", "macs"),
        algorithm="random",
        evaluations=5,
        population=5,
        out=str(tmp_path / "r"),
    )
    r = search(args)
    view = load_run(r.run_dir)
    arch = SearchSpace.from_saved(view.info["space"]).arch
    assert all(set(e.measured) == {"params", "bytes", "macs", "kv_bytes"} for e in view.evaluated)
    assert [e.measured["params"] for e in view.evaluated] == [
        e.config.num_params(arch) for e in view.evaluated
    ]
    assert r.front and r.front[0].values["params"] == min(e.measured["params"] for e in view.evaluated)


# Last in the file: Ray's processes take a while to exit after shutdown and would slow later tests.
@pytest.mark.ray
def test_ray_workers_equal_sequential(tmp_path):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    seq = search(tiny_args(tmp_path, "sequential"), TinySpec(), TINY_SPACE)
    par = search(tiny_args(tmp_path, "ray", workers=2), TinySpec(), TINY_SPACE)
    assert par.computed == seq.computed == 16
    assert not ray.is_initialized()  # the local Ray we started is shut down
    workers = {e.config.key(): e for e in load_run(par.run_dir).evaluated}
    a, b = load_run(seq.run_dir), load_run(par.run_dir)
    assert [(e.seq, e.config, e.measured) for e in a.evaluated] == [
        (e.seq, e.config, e.measured) for e in b.evaluated
    ]
    assert [m.id for m in seq.front] == [m.id for m in par.front] and len(workers) == 16
    assert seq.hypervolume == par.hypervolume
    for name in ("front.csv", "hypervolume.csv", "predictors.csv"):
        assert (seq.run_dir / name).read_text() == (par.run_dir / name).read_text()
    from llamanas.search.store import Store

    with Store(par.run_dir / "results.sqlite") as s:
        used = {r.worker for _, r in s.run_records(1)}
    assert len(used) == 2  # both actors evaluated


def test_search_defaults_to_the_width_space_and_an_old_run_resumes_in_its_own(tiny_dir, tmp_path):
    """--space unset: width-only for a new run (no layer or block drops); a run folder made in the full space
    (the default before) resumes there, with the same store key."""
    from llamanas.search.run import resolve_space

    arch = Arch.from_hf(load_config(str(tiny_dir)))

    def counts_only(name, **kw):
        return SearchArgs(
            model=str(tiny_dir), objectives=("params", "macs"), algorithm="random", evaluations=4,
            population=4, out=str(tmp_path / name), **kw,
        )  # fmt: skip

    space = resolve_space(counts_only("new"))
    assert space == SearchSpace.from_file("width", arch) and space.min_depth == arch.num_layers
    assert all(0 not in ms for ms in space.mlp_choices) and all(0 not in ks for ks in space.kv_choices)
    assert SearchSpace.from_file("full", arch) == SearchSpace.from_arch(arch) != space
    old = counts_only("old")
    search(replace(old, space="full"))  # as the run was made before: the full space
    assert resolve_space(old) == SearchSpace.from_arch(arch)
    r = search(replace(old, evaluations=6))  # the same command without --space resumes it
    assert r.evaluations == 6 and r.computed == 2
    with pytest.raises(LlamanasError, match=r"a space by name is one of: width, full"):
        SearchSpace.from_file("narrow", arch)
