"""The search stage: objectives, predictors, the results store, workers and the LINAS / NSGA-II runs."""
