"""The evaluation stage: lm-eval-exact tasks, the packed scorer, and measurements of size and speed."""
