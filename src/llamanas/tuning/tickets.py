"""SuperTickets (You et al., ECCV 2022): prune weights inside the super-network while it trains, and keep
the ticket.

Every decoder linear loses its smallest-magnitude weights on the cubic schedule of Zhu & Gupta (2017), from
``start`` to ``end`` (fractions of the steps) up to ``sparsity``, re-pruned every ``every`` steps; a pruned
weight never comes back (masks only shrink) and stays zero through the remaining steps, because the mask
is applied again after every optimizer step. The weights are saved with their zeros, so every sub-network
the search later picks carries the ticket, and so does every extracted checkpoint or GGUF file. Magnitudes
are compared within each linear, so every layer keeps the same fraction.
"""

from __future__ import annotations

import torch

from llamanas.model.families import decoder_linears


def cubic_sparsity(step: int, steps: int, sparsity: float, start: float, end: float) -> float:
    """The target sparsity after ``step`` of ``steps``: 0 before ``start``, ``sparsity`` from ``end`` on,
    ``sparsity * (1 - (1 - progress)^3)`` between."""
    t0, t1 = start * steps, end * steps
    if step <= t0:
        return 0.0
    if step >= t1 or t1 <= t0:
        return sparsity
    return sparsity * (1.0 - (1.0 - (step - t0) / (t1 - t0)) ** 3)


class Tickets:
    """The pruning masks of a model's decoder linears and their schedule."""

    def __init__(self, model, steps: int, sparsity: float, start: float, end: float, every: int):
        self.model, self.steps = model, steps
        self.sparsity, self.start, self.end, self.every = sparsity, start, end, every
        self.masks: dict[str, torch.Tensor] = {}  # path -> bool (True: kept); none before the first prune

    def _weights(self) -> dict[str, torch.Tensor]:
        return {site.path: site.module.weight for site in decoder_linears(self.model)}

    @torch.no_grad()
    def step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): prune when it is a pruning step, then zero what is pruned."""
        due = step >= self.start * self.steps and (step % self.every == 0 or step >= self.end * self.steps)
        target = cubic_sparsity(step, self.steps, self.sparsity, self.start, self.end)
        weights = self._weights()
        if due and target > 0 and target > self.achieved() + 1e-9:
            for path, w in weights.items():
                mask = self.masks.get(path, torch.ones_like(w, dtype=torch.bool))
                k = int(round(target * w.numel()))
                if k > 0:
                    # The k smallest magnitudes, pruned ones (0) first: masks only shrink.
                    score = w.detach().abs().float().masked_fill(~mask, -1.0).flatten()
                    cut = torch.topk(score, k, largest=False).indices
                    mask = mask.flatten().clone()
                    mask[cut] = False
                    mask = mask.view_as(w)
                self.masks[path] = mask
        for path, mask in self.masks.items():
            weights[path].mul_(mask)

    def achieved(self) -> float:
        """The fraction of the decoder linears' weights pruned so far."""
        if not self.masks:
            return 0.0
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total

    def state_dict(self) -> dict:
        return {"masks": {k: v.cpu() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.model.parameters()).device
        self.masks = {k: v.to(device) for k, v in state["masks"].items()}
