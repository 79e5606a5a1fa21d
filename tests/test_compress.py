"""`llamanas compress`: the recipe rules, disjoint questions, and the whole pipeline on a tiny model (resume,
refusals, the model card)."""

from __future__ import annotations

import json

import pytest
from conftest import arc_available
from test_gguf import bpe_tokenizer, model_of
from test_latency import fake_time
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from llamanas.cli.app import app
from llamanas.deploy.speed import build_latency_table_for
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.load import load_config
from llamanas.pipeline import compress as C
from llamanas.pipeline.args import CompressArgs, confirm_questions, report_questions, selection_questions
from llamanas.pipeline.compress import compress
from llamanas.pipeline.recipe import NARROW, WIDE, Recipe, choose_recipe, smallest_fraction
from llamanas.search import warm_start
from llamanas.supernet.space import SearchSpace


def test_recipe_follows_the_target():
    arch = Arch.from_hf(load_config("default"))
    floor = smallest_fraction(arch, NARROW)
    assert 0.6 < floor < 0.65  # MLP 50%, 2 of 3 KV groups: about 64% of SmolLM2-135M
    narrow, wide = choose_recipe(0.8, arch), choose_recipe(0.5, arch)
    assert narrow.space["kv_groups"] == [2, 3] and narrow.space["mlp_choices"] == [0.5, 0.75, 1.0]
    assert wide.space["kv_groups"] == [1, 2, 3] and wide.space["mlp_choices"] == list(WIDE["mlp"])
    assert "not measured" in wide.why["space"] and "not measured" not in narrow.why["space"]
    # 70% fits no random member of the narrow space (the search starts from random ones): the wide space
    assert (
        choose_recipe(0.7, arch).space["kv_groups"] == [1, 2, 3]
        and "too close" in choose_recipe(0.7, arch).why["space"]
    )
    for r in (narrow, wide):
        space = SearchSpace.from_dict(r.space, arch)
        assert space.smallest().layers == tuple(range(arch.num_layers))  # every layer kept, no block skipped
        assert set(r.why) == {"importance", "warm_start", "space", "repair", "gguf_types", "finetune"}
        assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r  # a resumed run reads it back
    assert SearchSpace.from_dict(wide.space, arch).smallest().num_params(arch) < 0.5 * arch.num_params()
    with pytest.raises(LlamanasError, match="--target must be a fraction"):
        choose_recipe(1.0, arch)


def test_bad_settings_fail_before_loading():
    with pytest.raises(LlamanasError, match="Unknown task 'arc_eassy'"):
        CompressArgs(tasks=("arc_eassy",))
    with pytest.raises(
        LlamanasError, match="--target must be a fraction of the parameters in \\(0, 1\\); got 80"
    ):
        CompressArgs(target=80)
    with pytest.raises(LlamanasError, match="--evaluations must be >= 2; got 1"):
        CompressArgs(evaluations=1)
    with pytest.raises(LlamanasError, match="constrains accuracy, which the search maximises"):
        CompressArgs(target="accuracy>=0.5")
    with pytest.raises(LlamanasError, match="Cannot parse constraint 'fast'"):
        CompressArgs(target="fast")
    with pytest.raises(LlamanasError, match="--minutes must be > 0; got -2"):
        CompressArgs(minutes=-2)
    with pytest.raises(LlamanasError, match="--pick-tolerance must be >= 0; got -1"):
        CompressArgs(pick_tolerance=-1)
    r = CliRunner().invoke(app, ["compress", "--target", "1.5", "--out", "unused"])
    assert r.exit_code != 0 and "--target must be a fraction" in str(r.exception)


def test_selection_and_report_questions_are_disjoint():
    args = CompressArgs(tasks=("arc_easy", "piqa"), select_limit=100, report_limit=300, seed=3)
    assert selection_questions(args).split == "validation" and selection_questions(args).limit == 100
    arc = report_questions(args, "arc_easy")
    assert (arc.split, arc.limit, arc.offset, arc.seed) == ("test", 300, 0, 3)  # the held-out split
    piqa = report_questions(args, "piqa")  # no test answers: the rest of validation, after the selection
    assert (piqa.split, piqa.offset, piqa.seed) == (
        "validation",
        100 + 400,
        3,
    )  # after selection and confirmation
    confirm = confirm_questions(args)
    assert (confirm.split, confirm.offset, confirm.limit) == ("validation", 100, 400)  # after the selection


def test_targets_are_fractions_or_constraints():
    by_fraction, by_size, by_speed = (
        CompressArgs(target=t) for t in ("0.8", "params<=100M", "throughput>=120")
    )
    assert by_fraction.fraction == 0.8 and by_fraction.constraint(1000).text == "params<=800"
    assert by_size.fraction is None and by_size.constraint(1000).bound == 100e6 and not by_size.timed
    assert by_speed.timed and by_speed.constraint(1000).objective.name == "throughput"
    assert by_fraction.target_text(1000) == "<= 80% of 1,000 parameters"
    assert by_speed.target_text(1000) == "throughput>=120"


def test_command_reproduces_the_settings():
    args = CompressArgs(tasks=("arc_easy", "piqa"), target=0.7, out="small")
    assert (
        args.command() == "llamanas compress --model default --tasks arc_easy,piqa --target 0.7 --out small"
    )
    assert (
        CompressArgs(confirm=0).command()
        == "llamanas compress --model default --tasks arc_easy --target 0.8 --confirm 0 --out compressed"
    )
    assert "--minutes 30" in CompressArgs(minutes=30).command()


@pytest.fixture
def tiny_bpe(tmp_path):
    folder = tmp_path / "tiny-bpe"
    model_of().save_pretrained(folder)
    bpe_tokenizer().save_pretrained(folder)
    return folder


def test_compress_end_to_end_resumes_and_refuses(tiny_bpe, tmp_path, monkeypatch):
    if not arc_available():
        pytest.skip("task data not available offline")
    out = tmp_path / "c"
    args = CompressArgs(
        model=str(tiny_bpe),
        target=0.85,
        evaluations=4,
        population=2,
        select_limit=4,
        report_limit=6,
        confirm=2,
        confirm_limit=5,
        timing_rounds=1,
        warm_start_windows=3,
        out=str(out),
    )
    seen = {}
    real = warm_start.calibration_batches

    def batches(tokenizer, texts, n):
        seen["windows"] = n
        return real(tokenizer, texts, n)

    monkeypatch.setattr(warm_start, "calibration_batches", batches)
    lines: list[str] = []
    card = compress(args, C.Progress(say=lines.append))
    state = json.loads((out / "compress.json").read_text())
    assert list(state["stages"]) == list(C.STAGES)
    assert seen["windows"] == 3  # the sensitivity warm start measured on --warm-start-windows
    text = card.read_text()
    arch = Arch.from_hf(load_config(str(tiny_bpe)))
    pick = state["stages"]["pick"]
    assert pick["params"] <= 0.85 * arch.num_params()
    # the pick is made on the confirmation questions, which the selection never saw: the largest candidate
    # within the tolerance of the most accurate one there
    cands = pick["candidates"]
    assert (
        len(cands) >= 2 and str(pick["id"]) in cands and all(c["confirm"] is not None for c in cands.values())
    )
    assert cands[str(pick["most_accurate"])]["confirm"] == max(c["confirm"] for c in cands.values())
    close = [c for c in cands.values() if c["gap"][0] >= -pick["tolerance"] * c["gap"][1] - 1e-12]
    assert cands[str(pick["id"])] in close and pick["params"] == max(c["params"] for c in close)
    assert (
        pick["tolerance"] == args.pick_tolerance
        and pick["confirm_accuracy"] == cands[str(pick["id"])]["confirm"]
    )
    small = AutoModelForCausalLM.from_pretrained(out / "model")
    stored = state["stages"]["extract"]["params"]
    assert sum(p.numel() for p in small.parameters()) == stored
    assert not state["stages"]["plan"]["recipe"]["repair"] and stored == pick["params"]  # sliced, no biases
    assert (out / "model-q8_0.gguf").is_file() and (out / "model-f16.gguf").is_file()
    assert not list(out.glob(".*tmp*"))  # nothing half-written left
    results = state["stages"]["evaluate"]["results"]
    assert results["base"]["arc_easy"]["split"] == "test" and results["compressed"]["arc_easy"]["n"] == 6
    assert args.command() in text and "arc_easy accuracy (test, 6 questions)" in text
    assert f"{stored:,}" in text and "## Recipe" in text and "## Measured on" in text
    assert any(line.startswith("Recipe for") for line in lines)
    # A finished run: nothing is redone.
    monkeypatch.setattr(C, "search", lambda *a, **k: pytest.fail("search re-run"))
    monkeypatch.setattr(C, "load_supernet", lambda *a, **k: pytest.fail("super-network re-loaded"))
    assert compress(args, C.Progress(say=lines.append)) == card
    # Killed after extraction: the later stages run again, the earlier ones are taken from the record.
    del state["stages"]["evaluate"], state["stages"]["time"], state["stages"]["card"]
    (out / "compress.json").write_text(json.dumps(state))
    card.unlink()
    assert compress(args, C.Progress(say=lines.append)).is_file()
    # Other settings in the same folder, or a folder that is not a compression: refused.
    with pytest.raises(LlamanasError, match="other settings \\(target: '0.7' now vs '0.85' there\\)"):
        compress(CompressArgs(**{**args.to_dict(), "target": 0.7}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(LlamanasError, match="is not a compress folder"):
        compress(CompressArgs(**{**args.to_dict(), "out": str(tmp_path / "other")}))


def test_refuses_before_loading_when_the_model_cannot_fit(tiny_bpe, tmp_path, monkeypatch):
    import llamanas.model.device as device

    monkeypatch.setattr(device, "free_bytes", lambda dev: 1000)
    monkeypatch.setattr(C, "load_supernet", lambda *a, **k: pytest.fail("loaded although it cannot fit"))
    args = CompressArgs(model=str(tiny_bpe), out=str(tmp_path / "c"))
    with pytest.raises(LlamanasError, match="Not enough memory: ordering needs"):
        compress(args, C.Progress(say=lambda line: None))
    assert not (tmp_path / "c" / "compress.json").exists()


def test_a_speed_target_searches_on_llama_cpp_speed(tiny_bpe, tmp_path, monkeypatch):
    """--target 'throughput>=N': the search predicts llama.cpp decode speed from a latency table it builds
    first, and the chosen member meets the target by that prediction."""
    pytest.importorskip("llama_cpp")
    if not arc_available():
        pytest.skip("task data not available offline")

    def small_table(args, space, path):  # fewer timed configs than the default 32 + 8: a test budget
        # Speeds from the file sizes, not the clock: a busy machine cannot make the table predict 0 ms.
        return build_latency_table_for(
            args, space, path, n_configs=6, holdout=2, repeats=1, time_fn=fake_time([])
        )

    monkeypatch.setattr(C, "build_latency_table_for", small_table)
    out = tmp_path / "fast"
    args = CompressArgs(
        model=str(tiny_bpe),
        target="throughput>=50",
        evaluations=4,
        population=2,
        select_limit=4,
        report_limit=4,
        timing_rounds=0,
        out=str(out),
    )
    card = compress(args, C.Progress(say=lambda line: None))
    run = json.loads((out / "search" / "run.json").read_text())
    assert run["runtime"] == "llamacpp" and (out / "search" / "latency_table.json").is_file()
    assert run["args"]["constraints"] == ["throughput>=50"]
    pick = json.loads((out / "compress.json").read_text())["stages"]["pick"]
    assert pick["target"]["constraint"] == "throughput>=50" and pick["target"]["value"] >= 50
    text = card.read_text()
    assert "throughput>=50" in text and "not measured: --timing-rounds 0" in text


def test_card_says_why_a_less_accurate_candidate_was_kept():
    from llamanas.pipeline.card import _chosen_on

    pick = {
        "id": 2,
        "select_accuracy": 0.5,
        "confirm_accuracy": 0.4575,
        "most_accurate": 12,
        "tolerance": 2.0,
        "candidates": {
            "2": {"params": 120_801_600, "confirm": 0.4575, "gap": [-0.0325, 0.0215]},
            "12": {"params": 108_415_296, "confirm": 0.49, "gap": [0.0, 0.0]},
        },
    }
    text = _chosen_on(pick, CompressArgs(), {"split": "validation"})
    assert "re-scored on 400 further validation questions per task (0.458; selection 0.500)" in text
    assert "the largest within 2 paired standard errors of the most accurate" in text
    assert "(#12: 108,415,296 parameters, 0.490; this one -3.2 ± 2.1 points)" in text
    pick["most_accurate"] = 2
    assert _chosen_on(pick, CompressArgs(), {"split": "validation"}).endswith(", the most accurate there")
