"""llamanas: one-shot neural architecture search for LLaMA-family language models.

The stages are subpackages, each importing only those below it (docs/design.md, checked by import-linter):
``model`` → ``supernet`` → ``evaluation`` → ``tuning`` / ``search`` → ``deploy`` → ``evidence`` → ``cli``.
Import from the module that defines a name (``llamanas.supernet.elastic.load_supernet``,
``llamanas.evaluation.evaluate.evaluate``, ``llamanas.search.run.search``); importing this package loads
only what every checkpoint reader needs.
"""

from importlib.metadata import PackageNotFoundError, version

import llamanas.model.hf_types  # noqa: F401 - registers the llamanas_<family> model types with the Auto classes

try:
    __version__ = version("llamanas")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0+unknown"
