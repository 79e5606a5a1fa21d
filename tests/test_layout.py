"""The package layout's promises: a stage imports only what it needs; the README's Python example runs."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    return set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )


def test_lower_stages_do_not_load_the_search_stage():
    loaded = _loaded_after("import llamanas.model.families")
    assert "pymoo" not in loaded and "llamanas.search" not in loaded and "llamanas.evaluation" not in loaded
    loaded = _loaded_after("import llamanas.supernet.elastic")
    assert "pymoo" not in loaded and "llamanas.search.run" not in loaded


def test_readme_python_example_imports():
    from llamanas.deploy.extract import extract
    from llamanas.evaluation.evaluate import evaluate
    from llamanas.evaluation.questions import Questions
    from llamanas.supernet.elastic import load_supernet

    assert callable(extract) and callable(evaluate) and callable(load_supernet) and Questions().offset == 0


def test_old_flat_paths_are_gone():
    import importlib

    import pytest

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("llamanas.evaluate")
