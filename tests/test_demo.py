"""The demo pipeline end to end on a tiny model: every stage writes its output and the report exists."""

import json

import pytest
from conftest import arc_available
from rich.console import Console

from llamanas.cli.demo import DemoArgs, run_demo
from llamanas.model.data import ALPACA_DEMO, find_data


@pytest.mark.skipif(not (arc_available() and find_data(ALPACA_DEMO)), reason="offline data not available")
def test_demo_runs_every_stage_on_a_tiny_model(tiny_dir, tmp_path):
    out = tmp_path / "demo"
    args = DemoArgs(
        model=str(tiny_dir), limit=4, evaluations=4, population=2, finetune_steps=2, size=0.9, out=str(out)
    )
    path = run_demo(args, Console(quiet=True), lambda view, title: title)
    assert path == out / "search" / "report.html" and path.stat().st_size > 10_000
    training = json.loads((out / "supernet" / "llamanas_supernet.json").read_text())["training"]
    assert (
        training["steps"] == 2 and training["args"]["strategy"] == "alternate" and training["args"]["distill"]
    )
    run = json.loads((out / "search" / "run.json").read_text())
    assert run["args"]["model"] == str(out / "supernet") and run["args"]["evaluations"] == 4
    extracted = json.loads((out / "extracted" / "llamanas_subnet.json").read_text())
    quant = json.loads((out / "extracted-int8" / "llamanas_quant.json").read_text())
    assert quant["method"] == "int8" and quant["subnet"] == extracted["subnet"]
    assert quant["bytes"] < 2 * extracted["params"]
    baselines = json.loads((out / "baselines" / "baselines.json").read_text())
    assert {r["source"] for r in baselines["rows"]} == {"base", "supernet"}
    assert (out / "search" / "front_int8.json").is_file()
