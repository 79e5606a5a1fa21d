"""The model stage: supported families as data, loading (default GGUF, folders, hub ids), HF types."""
