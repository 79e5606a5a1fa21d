"""A cheap proxy for a sub-network's accuracy: how far its next-token distribution moves from the full
network's on a few fixed windows of calibration text.

``kl`` is the mean per-token KL(full || sub) of the next-token distributions (Minitron and Puzzle rank
candidates this way; Dutta et al., 2024, "Accuracy is Not All You Need", find that it tracks answer flips
better than accuracy does); ``calib_nll`` is the sub-network's mean next-token loss on the same windows.
Both come from one forward pass of the sub-network over the windows; the full network's log-probabilities
are computed once and kept (windows x tokens x vocabulary floats: 100 MB for 4 windows of 128 tokens of
the default model's 49k vocabulary). How well they rank sub-networks, and what they cost next to a real
evaluation, is measured by ``bench/bench_proxy.py`` (docs/benchmarks.md, "A cheap proxy").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from llamanas.errors import LlamanasError
from llamanas.supernet.importance import calibration_batches, calibration_texts
from llamanas.supernet.slicing import subnet_model
from llamanas.supernet.subnet import SubnetConfig

PROXY_INPUTS = ("kl",)  # what the search's proxy screen feeds its predictors
PROXY_SEED = 1  # window starts: not the ordering's or the warm start's windows (seed 0)


class KLProxy:
    """``proxy(cfg) -> {"kl": ..., "calib_nll": ...}`` for sub-networks of one super-network."""

    def __init__(self, supernet, batches: Sequence[torch.Tensor]):
        if not batches:
            raise LlamanasError("The proxy needs calibration windows; got none.")
        self.supernet = supernet
        device = next(supernet.model.parameters()).device
        self.batches = [b.to(device) for b in batches]
        self.reference = [self._logprobs(m, ids) for m, ids in self._with(SubnetConfig.full(supernet.arch))]

    @classmethod
    def from_text(cls, supernet, tokenizer, windows: int, calibration: str | None = None, seq_len: int = 128):
        """On ``windows`` windows of ``seq_len`` tokens of the calibration text ordering uses."""
        if windows < 1:
            raise LlamanasError(f"Proxy windows must be >= 1; got {windows}.")
        texts = calibration_texts(calibration)
        return cls(supernet, calibration_batches(tokenizer, texts, windows, seq_len, seed=PROXY_SEED))

    def _with(self, cfg: SubnetConfig):
        """Yield each batch with ``cfg``'s model active (the model object is yielded alongside)."""
        with subnet_model(self.supernet, cfg) as model:
            for ids in self.batches:
                yield model, ids

    @staticmethod
    @torch.inference_mode()
    def _logprobs(model, ids: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        return F.log_softmax(logits.float(), dim=-1)

    @torch.inference_mode()
    def __call__(self, cfg: SubnetConfig) -> dict[str, float]:
        kl, nll, tokens = 0.0, 0.0, 0
        for (model, ids), ref in zip(self._with(cfg), self.reference, strict=True):
            logq = self._logprobs(model, ids)
            kl += float((ref.exp() * (ref - logq)).sum())
            nll -= float(logq.gather(-1, ids[:, 1:, None]).sum())
            tokens += ref.shape[0] * ref.shape[1]
        return {"kl": kl / tokens, "calib_nll": nll / tokens}
