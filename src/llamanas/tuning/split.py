"""Where few-shot NAS splits the super-network: gradient matching before the first step.

One shared low-rank adapter is put on the frozen base; each of ``samples`` sampled sub-networks computes
its gradient of that adapter on the same training batches. For every gene the sub-networks are grouped by
its value, and the gene whose groups' mean gradients agree least (``routing.choose_split``) is the one a
single set of weights serves worst: the split gives each of its choices its own adapter. (Hu et al. measure
the gradients of the warmed-up super-network's weights; here, the adapter's, which are what trains.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llamanas.supernet.routing import RoutedAdapters, RoutingSpec, candidate_genes, choose_split
from llamanas.tuning.losses import response_logits


def split_spec(
    supernet, batches, sampler, samples: int, rank: int, alpha: int, forward
) -> tuple[RoutingSpec, dict]:
    """The ``split`` routing spec for ``supernet`` and the disagreement score of every candidate gene.

    ``batches``: training batches (dicts on the model's device); ``sampler``: draws the sub-networks
    (``sample(0)``), the largest and smallest included; ``forward(batch) -> logits`` of the active one."""
    probe = RoutedAdapters(
        supernet.model, RoutingSpec("mixture", experts=1, rank=rank, alpha=alpha, router_hidden=1)
    )
    probe.attach(supernet)
    cfgs = [sampler.largest(), sampler.smallest(0)] + [sampler.sample(0) for _ in range(samples - 2)]
    grads = []
    try:
        for cfg in cfgs:
            for e in probe.experts.values():
                e.B.grad = None
            for batch in batches:
                supernet.activate(cfg)  # a fresh mixture each backward (its graph is freed by it)
                loss = F.cross_entropy(*response_logits(forward(batch), batch["labels"]))
                (loss / len(batches)).backward()
            # A layer the sub-network drops has no gradient: zero, as it asks nothing of that adapter.
            g = [torch.zeros_like(e.B) if e.B.grad is None else e.B.grad for e in probe.experts.values()]
            grads.append(torch.cat([x.flatten() for x in g]).double().cpu().numpy())
    finally:
        probe.detach(supernet)
        supernet.reset()
    gene, scores = choose_split(np.stack(grads), cfgs, candidate_genes(supernet.space))
    choices = gene.choices(supernet.space)
    spec = RoutingSpec("split", experts=len(choices), rank=rank, alpha=alpha, gene=str(gene), choices=choices)
    return spec, scores
