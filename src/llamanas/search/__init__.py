"""The search stage: objectives, predictors, the results store, workers and the LINAS / NSGA-II runs."""

from llamanas.search.run import SearchArgs, load_run, parse_member_ref, search

__all__ = ["SearchArgs", "load_run", "parse_member_ref", "search"]
