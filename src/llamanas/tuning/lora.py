"""LoRA on sliced linears: adapters (peft) that are sliced together with the weights they adapt, so
every sub-network trains its own part of them, and are merged into plain weights at the end."""

from __future__ import annotations

import functools
import warnings

from llamanas.errors import LlamanasError
from llamanas.model.families import decoder_linears
from llamanas.supernet.elastic import ElasticLinear, SuperNet


@functools.cache
def elastic_lora_class():
    """peft's ``lora.Linear`` whose adapter is sliced like the ElasticLinear it wraps.

    The base layer uses ``W[:active_out, :active_in]``; the adapter must add ``B[:active_out] @
    A[:, :active_in]`` so that the merged weight ``W + s·B·A`` sliced the same way gives the same
    sub-network. ``SuperNet.activate`` sets ``active_in``/``active_out`` on this wrapper; the properties
    pass them to the base layer and to ``lora_A`` (columns) and ``lora_B`` (rows), which are
    ElasticLinears too, so peft's own forward, merge and unload work unchanged.
    """
    try:
        from peft.tuners.lora import Linear as LoraLinear  # lazy: peft takes seconds to import; only --lora
    except ImportError:
        raise LlamanasError("--lora needs peft: pip install peft") from None

    class ElasticLoraLinear(LoraLinear):
        def __init__(self, base_layer, adapter_name: str, config, r: int, lora_alpha: int, **rest):
            if not isinstance(base_layer, ElasticLinear):
                raise TypeError(f"Unsupported layer type {type(base_layer)}; expected ElasticLinear.")
            super().__init__(base_layer, adapter_name, config=config, r=r, lora_alpha=lora_alpha, **rest)
            self._sync_adapters()

        def _sync_adapters(self) -> None:
            base = self.get_base_layer()
            for a in self.lora_A.values():  # (r, in): columns follow the base layer's input slice
                if not isinstance(a, ElasticLinear):
                    ElasticLinear.convert(a)
                a.active_in = base.active_in
            for b in self.lora_B.values():  # (out, r): rows follow the base layer's output slice
                if not isinstance(b, ElasticLinear):
                    ElasticLinear.convert(b)
                b.active_out = base.active_out

        @property
        def active_in(self) -> int | None:
            return self.get_base_layer().active_in

        @active_in.setter
        def active_in(self, value: int | None) -> None:
            self.get_base_layer().active_in = value
            self._sync_adapters()

        @property
        def active_out(self) -> int | None:
            return self.get_base_layer().active_out

        @active_out.setter
        def active_out(self, value: int | None) -> None:
            self.get_base_layer().active_out = value
            self._sync_adapters()

    return ElasticLoraLinear


def attach_lora(supernet: SuperNet, r: int = 16, alpha: int = 32, dropout: float = 0.05):
    """Wrap every decoder linear of ``supernet.model`` with a sliced LoRA adapter, in place.

    Only the adapters stay trainable. Returns the ``PeftModel`` (keep it for ``merge_lora``); keep
    calling ``supernet.model``, whose modules now hold the adapters.
    """
    try:
        from peft import LoraConfig, get_peft_model  # lazy: peft takes seconds to import; only --lora
    except ImportError:
        raise LlamanasError("--lora needs peft: pip install peft") from None
    # Exact module paths from the family walk, so peft adapts the linears the row names and nothing else.
    targets = [site.path for site in decoder_linears(supernet.model)]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    config._register_custom_module({ElasticLinear: elastic_lora_class()})  # peft's custom-layer hook
    with warnings.catch_warnings():  # peft calls a transformers API that v5 deprecates; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(supernet.model, config)
    if peft_model.get_base_model() is not supernet.model:
        raise LlamanasError("peft did not wrap the model in place; cannot attach LoRA to the super-network.")
    return peft_model


def merge_lora(supernet: SuperNet, peft_model) -> None:
    """Fold the adapters into the weights; ``supernet.model`` is a plain model again (all trainable)."""
    active = supernet.active
    supernet.reset()
    model = peft_model.merge_and_unload()
    if model is not supernet.model:
        raise LlamanasError("peft returned a different model object after merging.")
    for p in model.parameters():
        p.requires_grad_(True)
    supernet.activate(active)
