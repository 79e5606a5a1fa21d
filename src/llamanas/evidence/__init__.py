"""The evidence stage: baselines at matched sizes and the HTML report."""
