"""The package layout's promises: old module paths still import, the root exports the public API."""

from __future__ import annotations

import importlib

import pytest

import llamanas


@pytest.mark.parametrize("old,new", sorted(llamanas._MOVED.items()))
def test_flat_module_paths_still_import(old, new):
    assert importlib.import_module(f"llamanas.{old}") is importlib.import_module(f"llamanas.{new}")


def test_readme_imports():
    from llamanas.evaluate import evaluate
    from llamanas.extract import extract

    from llamanas.evaluation.evaluate import evaluate as evaluate_new
    from llamanas.supernet import load_supernet

    assert evaluate is evaluate_new and extract.__module__ == "llamanas.deploy.extract"
    assert load_supernet is llamanas.load_supernet
    assert set(llamanas.__all__) <= set(dir(llamanas))


def test_unknown_old_path_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("llamanas.no_such_module")
