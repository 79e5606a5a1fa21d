"""The super-network stage: search space, elastic layers, importance ordering, slicing, precision."""

from llamanas.supernet.elastic import SUPERNET_FILE, ElasticLinear, SuperNet, load_supernet
from llamanas.supernet.space import SearchSpace, SubnetConfig

__all__ = ["SUPERNET_FILE", "ElasticLinear", "SearchSpace", "SubnetConfig", "SuperNet", "load_supernet"]
