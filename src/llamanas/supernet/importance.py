"""Importance ordering of MLP channels and KV groups.

Sub-networks keep the first k channels of each layer, so before slicing we permute every layer's
channels from most to least important. A permutation of hidden channels (and of whole attention-head
groups) does not change what the full network computes; only which channels a slice keeps.

Three scores (``IMPORTANCES``), chosen with ``order_model(..., importance=)``:

- ``rms`` (default; activation-based, in the spirit of Minitron). MLP channel c: root-mean-square of its
  activation ``act(gate(x)) * up(x)`` (the input of ``down_proj``) over calibration tokens. KV group g:
  sum over its query heads of the RMS of the head's attention output (the input of ``o_proj``), so whole
  groups are ranked and GQA stays valid.
- ``wanda`` (activation x weight, Sun et al. 2023, per channel): the channel's activation RMS times the
  norm of its ``down_proj`` column; for a KV group, the RMS norm of its heads' outputs times the norm of
  its ``o_proj`` columns.
- ``taylor`` (first-order Taylor, LLM-Pruner, Ma et al. 2023): ``|w * dL/dw|`` of the calibration LM loss,
  summed over the channel's weights (its ``gate``/``up`` rows and ``down`` column; for a group its
  q/k/v rows, biases included, and ``o_proj`` columns) and over calibration batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.data import ALPACA_DEMO, find_data, load_alpaca
from llamanas.model.families import family_of


@dataclass
class Ordering:
    """Per-layer permutations (most important first); ``apply`` writes them into the weights."""

    mlp: list[list[int]]
    kv_groups: list[list[int]]
    importance: str = "rms"  # the score it was made from (IMPORTANCES)

    def to_dict(self) -> dict:
        return {"mlp": self.mlp, "kv_groups": self.kv_groups, "importance": self.importance}

    @classmethod
    def from_dict(cls, d: dict) -> Ordering:
        return cls(mlp=d["mlp"], kv_groups=d["kv_groups"], importance=d.get("importance", "rms"))

    def apply(self, model) -> None:
        """Permute the weights in place (the full network's function is unchanged)."""
        arch = Arch.from_hf(model.config)
        family = family_of(model.config)
        rep, hd = arch.heads_per_group, arch.head_dim
        for layer, mp, gp in zip(model.get_decoder().layers, self.mlp, self.kv_groups, strict=True):
            # Query rows come in heads of hd rows, heads in groups of ``rep``; K/V rows in groups of hd.
            gp = torch.tensor(gp, dtype=torch.long)
            q = (gp[:, None] * (rep * hd) + torch.arange(rep * hd)).flatten()
            kv = (gp[:, None] * hd + torch.arange(hd)).flatten()
            rows, cols = family.rows_and_cols(q, kv, torch.tensor(mp, dtype=torch.long))
            for name, lin in family.linears_of(layer).items():
                if name in rows:
                    _permute_rows(lin, rows[name])
                else:
                    _permute_cols(lin, cols[name])


# In place: the weights of a freshly loaded checkpoint are private memory maps of its files, so writing
# into them costs nothing extra, while new tensors would keep every page mapped twice (2x the weights
# in resident memory at 1B-7B; docs/benchmarks.md, scale table).
def _permute_rows(lin, idx: torch.Tensor) -> None:
    lin.weight.data.copy_(lin.weight.data[idx])
    if lin.bias is not None:
        lin.bias.data.copy_(lin.bias.data[idx])


def _permute_cols(lin, idx: torch.Tensor) -> None:
    lin.weight.data.copy_(lin.weight.data[:, idx])


IMPORTANCES = ("rms", "wanda", "taylor")
DEFAULT_IMPORTANCE = "rms"


def check_importance(name: str) -> str:
    """``name`` if it is an importance score, else a LlamanasError naming it and the allowed ones."""
    if name not in IMPORTANCES:
        raise LlamanasError(f"Unknown importance score {name!r}. Allowed: {', '.join(IMPORTANCES)}.")
    return name


def measure_importance(
    model, batches: list[torch.Tensor], importance: str = DEFAULT_IMPORTANCE
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer importance scores: (MLP channel scores, KV-group scores), from calibration batches."""
    check_importance(importance)
    if importance == "taylor":
        return _taylor_scores(model, batches)
    mlp_scores, head_rms = _activation_rms(model, batches)
    arch = Arch.from_hf(model.config)
    groups = lambda h: h.reshape(arch.num_kv_heads, arch.heads_per_group)  # noqa: E731
    if importance == "rms":
        return mlp_scores, [groups(h).sum(-1) for h in head_rms]
    # wanda: activation norm x weight norm of the columns that read it.
    family = family_of(model.config)
    (attn_out,), (mlp_out,) = family.attention_cols, family.mlp_cols
    mlp, kv = [], []
    for layer, m, h in zip(model.get_decoder().layers, mlp_scores, head_rms, strict=True):
        linears = family.linears_of(layer)
        down = linears[mlp_out].weight.detach().double().cpu()  # (hidden, intermediate)
        o = linears[attn_out].weight.detach().double().cpu()  # (hidden, heads * hd)
        mlp.append(m * down.norm(dim=0))
        o_groups = (o**2).sum(0).reshape(arch.num_kv_heads, -1).sum(-1).sqrt()
        kv.append(groups(h**2).sum(-1).sqrt() * o_groups)
    return mlp, kv


@torch.inference_mode()
def calibration_progress(batches, what: str):
    """``batches`` with a progress bar (ETA included) on stderr: calibration passes take minutes on a CPU."""
    return tqdm(batches, desc=f"{what} (calibration windows)", leave=False)


def output_inputs(model, batches, on_mlp, on_attn, what: str) -> int:
    """Run calibration ``batches`` through ``model`` and call ``on_mlp(i, x)`` / ``on_attn(i, x)`` with the
    inputs of layer ``i``'s MLP output projection (its channels, (tokens, intermediate)) and attention
    output projection (the heads' outputs, (tokens, heads x head_dim)); returns the number of tokens.
    Importance scores and bias compensation are both statistics of these inputs."""
    family = family_of(model.config)
    (attn_out,), (mlp_out,) = family.attention_cols, family.mlp_cols

    def hook(fn, i):
        return lambda _module, args: fn(i, args[0].detach().reshape(-1, args[0].shape[-1]))

    handles = []
    for i, layer in enumerate(model.get_decoder().layers):
        linears = family.linears_of(layer)
        handles.append(linears[mlp_out].register_forward_pre_hook(hook(on_mlp, i)))
        handles.append(linears[attn_out].register_forward_pre_hook(hook(on_attn, i)))
    tokens = 0
    try:
        device = next(model.parameters()).device
        for ids in calibration_progress(batches, what):
            model(input_ids=ids.to(device), use_cache=False)
            tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise LlamanasError(f"{what} needs calibration text; got none.")
    return tokens


def _activation_rms(model, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: RMS over calibration tokens of each MLP channel, and of each attention head's output."""
    arch = Arch.from_hf(model.config)
    layers = model.get_decoder().layers
    mlp_sq = [torch.zeros(arch.intermediate_size, dtype=torch.float64) for _ in layers]
    head_sq = [torch.zeros(arch.num_heads, dtype=torch.float64) for _ in layers]

    def on_mlp(i, x):  # (tokens, intermediate)
        mlp_sq[i] += (x.double() ** 2).sum(0).cpu()

    def on_attn(i, x):  # (tokens, heads x head_dim)
        head_sq[i] += (x.double().reshape(-1, arch.num_heads, arch.head_dim) ** 2).sum(-1).sum(0).cpu()

    count = [output_inputs(model, batches, on_mlp, on_attn, "Importance ordering")]
    mlp_scores = [(s / count[0]).sqrt() for s in mlp_sq]
    head_rms = [(s / count[0]).sqrt() for s in head_sq]
    return mlp_scores, head_rms


def _taylor_scores(model, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """LLM-Pruner's first-order scores: sum over batches and a channel's weights of ``|w * dL/dw|``.

    Only the decoder linears take gradients (no optimizer, nothing stored but the scores), and the
    gradients are cleared after each batch.
    """
    arch = Arch.from_hf(model.config)
    family = family_of(model.config)
    rep, hd, groups = arch.heads_per_group, arch.head_dim, arch.num_kv_heads
    layers = [family.linears_of(layer) for layer in model.get_decoder().layers]
    params = list(model.parameters())
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    linears = [lin for ls in layers for lin in ls.values()]
    for lin in linears:
        for p in lin.parameters():
            p.requires_grad_(True)
    mlp = [torch.zeros(arch.intermediate_size, dtype=torch.float64) for _ in layers]
    kv = [torch.zeros(groups, dtype=torch.float64) for _ in layers]
    query, *key_value = family.attention_rows

    def wg(p) -> torch.Tensor:
        return (p.detach().double() * p.grad.double()).abs().cpu()

    device = next(model.parameters()).device
    tokens = 0
    try:
        with torch.enable_grad():
            for ids in calibration_progress(batches, "taylor importance"):
                ids = ids.to(device)
                model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
                tokens += ids.numel()
                for i, ls in enumerate(layers):
                    for name, lin in ls.items():
                        if lin.weight.grad is None:
                            continue
                        w = wg(lin.weight)
                        b = wg(lin.bias) if lin.bias is not None and lin.bias.grad is not None else None
                        if name in family.mlp_rows:
                            mlp[i] += w.sum(1) + (b if b is not None else 0)
                        elif name in family.mlp_cols:
                            mlp[i] += w.sum(0)
                        elif name in family.attention_cols:
                            kv[i] += w.sum(0).reshape(groups, rep * hd).sum(-1)
                        else:  # query rows come in groups of rep * hd, key/value rows in groups of hd
                            per = rep * hd if name == query else hd
                            kv[i] += w.sum(1).reshape(groups, per).sum(-1)
                            if b is not None:
                                kv[i] += b.reshape(groups, per).sum(-1)
                model.zero_grad(set_to_none=True)
    finally:
        model.zero_grad(set_to_none=True)
        for p, r in zip(params, was, strict=True):
            p.requires_grad_(r)
    if tokens == 0:
        raise LlamanasError("Importance ordering needs calibration text; got none.")
    return mlp, kv


def compute_ordering(model, batches: list[torch.Tensor], importance: str = DEFAULT_IMPORTANCE) -> Ordering:
    mlp_scores, group_scores = measure_importance(model, batches, importance)
    # Stable sort, descending: ties keep their original order, so the result is reproducible.
    desc = lambda s: torch.sort(-s, stable=True).indices.tolist()  # noqa: E731
    return Ordering([desc(s) for s in mlp_scores], [desc(s) for s in group_scores], importance)


# --- calibration text ------------------------------------------------------------------------------

BUILTIN = Path(__file__).with_name("calibration.txt")


def default_calibration() -> Path:
    """The calibration file used when none is given: the Alpaca demo data when the shared data folder is
    found (the data InstaTune trains on), else the short built-in text."""
    return Path(find_data(ALPACA_DEMO) or BUILTIN)


def calibration_texts(path: str | Path | None = None) -> list[str]:
    """Texts for ordering: an Alpaca-format JSON/JSONL file or a .txt file.

    Default: the Alpaca demo data when the shared data folder is found (the data InstaTune trains on),
    else a short built-in text.
    """
    p = Path(path) if path else default_calibration()
    if not p.is_file():
        raise LlamanasError(f"Calibration file {str(path)!r} does not exist.")
    if p.suffix in (".json", ".jsonl"):
        return [r.prompt + r.response for r in load_alpaca(p)]
    return [t.strip() for t in p.read_text().split("\n\n") if t.strip()]


def calibration_batches(
    tokenizer, texts: list[str], num_samples: int = 64, seq_len: int = 128, seed: int = 0
):
    """Pack texts into ``num_samples`` sequences of ``seq_len`` tokens (no padding), deterministically."""
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    # Windows may overlap when the text is short; starts are drawn without replacement.
    n = min(num_samples, max(0, len(ids) - seq_len + 1))
    if n == 0:
        raise LlamanasError(f"Calibration text is too short: {len(ids)} tokens, need at least {seq_len}.")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randperm(len(ids) - seq_len + 1, generator=g)[:n].sort().values
    t = torch.tensor(ids)
    rows = torch.stack([t[s : s + seq_len] for s in starts.tolist()])
    return list(rows.split(8))


def order_model(
    model,
    tokenizer,
    calibration: str | Path | None = None,
    num_samples: int = 64,
    seq_len: int = 128,
    importance: str = DEFAULT_IMPORTANCE,
):
    """Measure importance (``IMPORTANCES``) on calibration text and permute ``model`` in place; returns
    the Ordering."""
    check_importance(importance)  # fail before the work
    batches = calibration_batches(tokenizer, calibration_texts(calibration), num_samples, seq_len)
    ordering = compute_ordering(model, batches, importance)
    ordering.apply(model)
    return ordering


def save_ordering(ordering: Ordering, path: str | Path) -> None:
    Path(path).write_text(json.dumps(ordering.to_dict()))


# --- the residual stream ---------------------------------------------------------------------------


def _norms(model) -> list[torch.nn.Module]:
    """Every RMSNorm on the residual stream: each layer's two, then the final one."""
    family = family_of(model.config)
    layers = model.get_decoder().layers
    per_layer = [getattr(layer, n) for layer in layers for n in (family.attention_norm, family.mlp_norm)]
    return [*per_layer, model.get_decoder().norm]


def residual_scores(model, batches: list[torch.Tensor]) -> torch.Tensor:
    """Per residual channel: the mean magnitude of every RMSNorm's output over calibration tokens, summed over
    the norms (Minitron's embedding-channel score: activations after the LayerNorms, aggregated over layers,
    so a channel that any block reads strongly ranks high)."""
    arch = Arch.from_hf(model.config)
    total = torch.zeros(arch.hidden_size, dtype=torch.float64)
    tokens = [0]

    def hook(module, args, out):
        total.add_(out.detach().double().abs().reshape(-1, out.shape[-1]).sum(0).cpu())

    handles = [n.register_forward_hook(hook) for n in _norms(model)]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids in calibration_progress(batches, "residual importance"):
                model(input_ids=ids.to(device), use_cache=False)
                tokens[0] += ids.numel()
    finally:
        for h in handles:
            h.remove()
    if tokens[0] == 0:
        raise LlamanasError("Residual-channel importance needs calibration text; got none.")
    return total / tokens[0]


def order_residual(model, batches: list[torch.Tensor]) -> list[int]:
    """Permute the residual stream's channels from most to least important (``residual_scores``), in place,
    so a sub-network's ``hidden`` keeps the first channels. Every matrix that reads or writes the stream,
    the embeddings, every RMSNorm and the LM head are permuted together: RMSNorm is indifferent to channel
    order, so the full network computes the same function (up to float summation order). Tied embeddings
    stay tied (one tensor). Returns the permutation (new position -> old channel)."""
    perm = torch.sort(-residual_scores(model, batches), stable=True).indices
    family = family_of(model.config)
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed.copy_(embed[:, perm.to(embed.device)])
        head = model.get_output_embeddings().weight
        if head.data_ptr() != embed.data_ptr():
            head.copy_(head[:, perm.to(head.device)])
        for norm in _norms(model):
            norm.weight.copy_(norm.weight[perm.to(norm.weight.device)])
        rows = family.attention_rows + family.mlp_rows  # read the stream: its channels are their inputs
        for layer in model.get_decoder().layers:
            for name, lin in family.linears_of(layer).items():
                idx = perm.to(lin.weight.device)
                if name in rows:
                    _permute_cols(lin, idx)
                else:
                    _permute_rows(lin, idx)
    return perm.tolist()
