"""The fine-tuning stage: InstaTune (sub-network sampling schedules, distillation, LoRA, resume)."""
