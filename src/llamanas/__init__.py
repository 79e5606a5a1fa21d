"""llamanas: one-shot neural architecture search for LLaMA-family language models.

The stages are subpackages, each importing only those below it (docs/design.md, checked by import-linter):
``model`` → ``supernet`` → ``evaluation`` → ``tuning`` / ``search`` → ``deploy`` → ``evidence`` → ``cli``.
The names below are the public Python API; the CLI mirrors it. Stage functions whose names are also
module paths (``llamanas.evaluate.evaluate``, ``llamanas.extract.extract``, ``llamanas.search.search``)
are imported from those paths, as in the README.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

import llamanas.model.hf_types  # noqa: F401 - registers the llamanas_<family> model types
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.load import load_model
from llamanas.search.run import SearchArgs, load_run
from llamanas.supernet.elastic import SuperNet, load_supernet
from llamanas.supernet.space import SearchSpace, SubnetConfig

__version__ = "0.1.0"
__all__ = [
    "Arch",
    "LlamanasError",
    "SearchArgs",
    "SearchSpace",
    "SubnetConfig",
    "SuperNet",
    "__version__",
    "load_model",
    "load_run",
    "load_supernet",
]

# Module paths of llamanas 0.1's flat layout, so that code written against them keeps working.
_MOVED = {
    "families": "model.families",
    "models": "model.load",
    "data": "model.data",
    "space": "supernet.space",
    "importance": "supernet.importance",
    "tasks": "evaluation.tasks",
    "evaluate": "evaluation.evaluate",
    "measure": "evaluation.measure",
    "sampling": "tuning.sampling",
    "tune": "tuning.tune",
    "objectives": "search.objectives",
    "predictors": "search.predictors",
    "store": "search.store",
    "workers": "search.workers",
    "extract": "deploy.extract",
    "quantize": "deploy.quantize",
    "baselines": "evidence.baselines",
    "report": "evidence.report",
    "demo": "cli.demo",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import llamanas.evaluate`` returns the module that now lives at ``llamanas.evaluation.evaluate``."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix(__name__ + ".")
        if old in _MOVED and old != fullname:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_MOVED[spec.name.removeprefix(__name__ + '.')]}")

    def exec_module(self, module) -> None:  # already executed under its new name
        pass


sys.meta_path.append(_OldPaths())
