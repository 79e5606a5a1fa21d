"""Instruction data as training batches: token ids with the prompt masked out, padded micro-batches in
a seeded order, and a held-out split."""

from __future__ import annotations

import numpy as np
import torch

from llamanas.errors import LlamanasError
from llamanas.model.data import Example

IGNORE = -100  # label of tokens without loss (prompt and padding)


def encode(examples: list[Example], tokenizer, max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per example: prompt, response, EOS, truncated to ``max_length``.

    Examples whose prompt fills ``max_length`` have no response token left and are dropped.
    """
    prompts = tokenizer([e.prompt for e in examples])["input_ids"]
    responses = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for p, r in zip(prompts, responses, strict=True):
        ids = (p + r + eos)[:max_length]
        if len(ids) > len(p):
            out.append((ids, len(p)))
    if not out:
        raise LlamanasError(
            f"No example has a response token within max_length={max_length}; raise --max-length."
        )
    return out


def collate(items: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); labels are IGNORE on prompt and padding."""
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for row, (ids, plen) in enumerate(items):
        t = torch.tensor(ids)
        input_ids[row, : len(ids)] = t
        mask[row, : len(ids)] = 1
        labels[row, plen : len(ids)] = t[plen:]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class Batches:
    """Length-sorted micro-batches (little padding on CPU), visited in a seeded order per epoch.

    The micro-batch of global index i is a pure function of (seed, i), so resuming needs only the
    step counter, and process r of W takes indices i * W + r.
    """

    def __init__(self, encoded: list[tuple[list[int], int]], batch_size: int, pad_id: int, seed: int = 0):
        order = sorted(range(len(encoded)), key=lambda k: (len(encoded[k][0]), k))
        self.batches = [
            [encoded[k] for k in order[s : s + batch_size]] for s in range(0, len(order), batch_size)
        ]
        self.pad_id, self.seed = pad_id, seed
        self._epoch, self._perm = -1, np.arange(0)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        epoch, pos = divmod(i, len(self.batches))
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))
        return collate(self.batches[int(self._perm[pos])], self.pad_id)

    def __iter__(self):
        """Each batch once, in length order (for evaluation)."""
        return (collate(b, self.pad_id) for b in self.batches)


def split_examples(examples: list[Example], eval_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out) with a seeded shuffle."""
    if eval_size >= len(examples):
        raise LlamanasError(
            f"eval_size={eval_size} leaves no training data: the data has {len(examples)} records."
        )
    perm = np.random.default_rng(seed).permutation(len(examples))
    held = {int(k) for k in perm[:eval_size]}
    return [e for k, e in enumerate(examples) if k not in held], [examples[k] for k in sorted(held)]
