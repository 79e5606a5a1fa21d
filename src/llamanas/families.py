"""Model families: what llamanas needs to know about an HF architecture, as data.

All supported families share LLaMA's module layout (``model.layers[i].self_attn.{q,k,v,o}_proj`` and
``mlp.{gate,up,down}_proj``), so a family is only a name, its HF classes and whether its attention
projections carry biases. To add a family, add one ``Family`` row and a parity test on a tiny random
model (tests/test_supernet.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from llamanas.errors import LlamanasError


@dataclass(frozen=True)
class Family:
    model_type: str  # HF ``config.model_type``
    config_class: str  # name in ``transformers``
    model_class: str  # name in ``transformers``

    def classes(self):
        import transformers

        return getattr(transformers, self.config_class), getattr(transformers, self.model_class)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in [
        Family("llama", "LlamaConfig", "LlamaForCausalLM"),
        Family("mistral", "MistralConfig", "MistralForCausalLM"),
        Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM"),
    ]
}

# Extracted sub-networks with per-layer sizes are saved under these model types (see extract.py).
ELASTIC_PREFIX = "llamanas_"


def family_of(config: PretrainedConfig, source: str = "model") -> Family:
    """The family of an HF config, or a clear error that lists the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type and model_type.startswith(ELASTIC_PREFIX):
        model_type = model_type[len(ELASTIC_PREFIX) :]
    if model_type not in FAMILIES:
        raise LlamanasError(
            f"Model type {model_type!r} of {source} is not supported. "
            f"Supported model types: {', '.join(sorted(FAMILIES))}."
        )
    return FAMILIES[model_type]
