"""The super-network stage: search space, elastic layers, importance ordering, slicing, precision."""
