"""The deployment stage: standalone checkpoints (extraction) and quantized checkpoints."""
