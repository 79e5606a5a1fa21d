"""Pipelines over the stages: `compress` (model -> smaller model, GGUF and model card) and its recipe."""
