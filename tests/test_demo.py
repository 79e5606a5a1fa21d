"""`llamanas demo` is `llamanas compress` on the default model with a small budget."""

from pathlib import Path

from typer.testing import CliRunner

from llamanas.cli import commands_pipeline
from llamanas.cli.app import app
from llamanas.cli.demo import DemoArgs, demo_args


def test_demo_is_compress_with_a_small_budget():
    c = demo_args(DemoArgs())
    assert (
        c.model == "default" and c.tasks == ("arc_easy",) and c.fraction == 0.8 and c.warm_start_windows == 4
    )
    assert (c.evaluations, c.select_limit, c.report_limit, c.out) == (12, 50, 200, "runs/demo")
    assert c.timing_rounds >= 2  # speeds on the card are timed alternately, more than once


def test_demo_command_runs_compress(monkeypatch, tmp_path):
    seen = {}

    def fake(args, progress):
        seen["args"] = args
        progress.say("[1/9] plan")
        card = tmp_path / "README.md"
        card.write_text("card")
        return card

    monkeypatch.setattr(commands_pipeline, "compress_fn", fake)
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--evaluations", "6"])
    assert r.exit_code == 0, r.output
    assert seen["args"].out == str(tmp_path / "d") and seen["args"].evaluations == 6
    assert "Model card" in r.output and str(Path(tmp_path / "README.md").resolve()) in r.output.replace(
        "\n", ""
    )
