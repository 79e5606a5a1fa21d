"""llamanas: one-shot neural architecture search for LLaMA-family language models."""

from llamanas import extract as _extract  # noqa: F401  - registers the llamanas_* model types
from llamanas.errors import LlamanasError
from llamanas.space import Arch, SearchSpace, SubnetConfig
from llamanas.supernet import SuperNet

__version__ = "0.1.0"
__all__ = ["Arch", "LlamanasError", "SearchSpace", "SubnetConfig", "SuperNet", "__version__"]
