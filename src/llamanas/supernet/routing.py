"""Routed low-rank adapters: sub-networks that share a frozen base but not all of their weights.

With one set of shared weights, sub-networks interfere and the smallest stay poor. Few-shot NAS,
Mixture-of-Supernets and LLM-QFA answer with a *routing rule*: here every decoder linear holds ``K``
low-rank experts (``A_k``: r x in, ``B_k``: out x r) on its frozen weight ``W``, and a router maps the
active sub-network's config to mixing weights ``m(cfg)`` over them, per layer:

    y = W[:o, :i] x + s * sum_k m_k(cfg) B_k[:o] A_k[:, :i] x            (s = alpha / r)

Routers (``ROUTERS``):

- ``split`` (few-shot NAS with gradient matching, Hu et al. 2022): one expert per choice of one gene, the
  gene whose sub-networks' gradients disagree most (``choose_split``); ``m`` is one-hot.
- ``mixture`` (Mixture-of-Supernets, Jawahar et al. 2023): ``m = softmax(MLP(architecture features))``, a
  router trained with the experts, so nearby architectures share weights and distant ones need not.
- ``precision`` (LLM-QFA's decoupled adapters, 2024): one expert per weight precision, chosen per layer
  by that layer's ``bits``, so the precisions of a joint architecture + precision search stop sharing (and
  fighting over) one adapter; ``m`` is one-hot per layer. Trained with the layer fake-quantized
  (``SuperNet.fake_quant``): the merged weight ``W + s B A`` is what gets quantized, in training as at
  extraction.

The experts live outside the HF model (the linears hold a plain reference), so the model's state dict and
checkpoints are unchanged. ``RoutedAdapters.merged(cfg)`` folds ``cfg``'s mixture into the weights for
extraction, so every extracted model, HF or GGUF, is a plain checkpoint.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llamanas.errors import LlamanasError, unknown
from llamanas.model.arch import Arch
from llamanas.model.families import decoder_linears
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

ROUTERS = ("split", "mixture", "precision")
ROUTING_FILE = "llamanas_routing.safetensors"
ROUTING_META = "llamanas_routing.json"


@dataclass(frozen=True)
class Gene:
    """One choice a split can follow: a layer's MLP width or KV groups (0 when the layer is dropped)."""

    kind: str  # "mlp" | "kv"
    layer: int

    def value(self, cfg: SubnetConfig) -> int:
        if self.layer not in cfg.layers:
            return 0
        pos = cfg.layers.index(self.layer)
        return int((cfg.mlp if self.kind == "mlp" else cfg.kv_groups)[pos])

    def choices(self, space: SearchSpace) -> tuple[int, ...]:
        own = space.mlp_choices if self.kind == "mlp" else space.kv_choices
        if space.mode == "first_n":
            droppable = self.layer >= min(space.depth_choices)
        else:
            droppable = self.layer not in space.always_keep and space.min_depth < space.arch.num_layers
        return tuple(sorted(set(own[self.layer]) | ({0} if droppable else set())))

    def __str__(self) -> str:
        return f"{self.kind}[{self.layer}]"


def candidate_genes(space: SearchSpace) -> list[Gene]:
    """The genes with more than one choice: what a split can follow."""
    genes = [Gene(k, i) for i in range(space.arch.num_layers) for k in ("mlp", "kv")]
    return [g for g in genes if len(g.choices(space)) > 1]


def arch_features(arch: Arch, cfg: SubnetConfig) -> torch.Tensor:
    """The mixture router's input: per layer the kept MLP and KV fractions (0 when dropped or skipped),
    then the residual fraction."""
    f = torch.zeros(2 * arch.num_layers + 1)
    for i, m, g in zip(cfg.layers, cfg.mlp, cfg.kv_groups, strict=True):
        f[2 * i] = m / arch.intermediate_size
        f[2 * i + 1] = g / arch.num_kv_heads
    f[-1] = cfg.width(arch) / arch.hidden_size
    return f


@dataclass
class RoutingSpec:
    """What a routed-adapter set is; saved beside its tensors (``ROUTING_META``)."""

    router: str
    experts: int
    rank: int = 16
    alpha: int = 32
    gene: str | None = None  # split: the gene it follows, "mlp[3]"
    choices: tuple[int, ...] = ()  # split: that gene's values, one expert each; precision: the bits
    router_hidden: int = 32  # mixture: the router MLP's width

    def __post_init__(self):
        if self.router not in ROUTERS:
            raise unknown("router", self.router, ROUTERS)
        if self.experts < 1 or self.rank < 1:
            raise LlamanasError(f"experts and rank must be >= 1; got {self.experts} and {self.rank}.")
        self.choices = tuple(int(c) for c in self.choices)

    def gene_of(self) -> Gene:
        kind, _, rest = (self.gene or "").partition("[")
        return Gene(kind, int(rest.rstrip("]")))


class Experts(nn.Module):
    """The K low-rank experts of one linear; ``mix`` (layers x K, set by ``RoutedAdapters.route``) and
    ``layer`` pick this linear's row."""

    def __init__(self, k: int, rank: int, n_in: int, n_out: int, scale: float, layer: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(k, rank, n_in))
        self.B = nn.Parameter(torch.zeros(k, n_out, rank))  # zero: every expert starts at the base
        for a in self.A:  # peft's LoRA init, each expert its own draw (a mixture needs them to differ)
            nn.init.kaiming_uniform_(a, a=5**0.5)
        self.scale, self.layer = scale, layer
        self.mix: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, active_in: int | None, active_out: int | None) -> torch.Tensor:
        m = self.mix[self.layer]
        used = torch.nonzero(m.detach()).flatten().tolist()  # one-hot routers run one expert
        A, B = self.A[used], self.B[used]
        if active_in is not None:
            A = A[:, :, :active_in]
        if active_out is not None:
            B = B[:, :active_out]
        z = torch.einsum("...i,kri->...kr", x.to(A.dtype), A) * m[used][:, None]
        return (self.scale * torch.einsum("...kr,kor->...o", z, B)).to(x.dtype)

    def delta(
        self, active_in: int | None = None, active_out: int | None = None, mix_row=None
    ) -> torch.Tensor:
        """The weight this linear gains (sliced like it) under mixing weights ``mix_row`` (K,; default: the
        routed ones): what extraction merges, and what a fake-quantized layer quantizes with its own."""
        m = self.mix[self.layer] if mix_row is None else mix_row
        A = self.A if active_in is None else self.A[:, :, :active_in]
        B = self.B if active_out is None else self.B[:, :active_out]
        return self.scale * torch.einsum("k,kor,kri->oi", m.to(A.dtype), B, A)


class MixtureRouter(nn.Module):
    """Architecture features -> softmax over experts (one row, the same for every layer)."""

    def __init__(self, n_features: int, k: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, k))
        nn.init.normal_(self.net[-1].weight, std=0.01)  # near-uniform at first, not exactly (symmetry)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(features), -1)


class RoutedAdapters(nn.Module):
    """Experts on every decoder linear of a super-network, and the router that mixes them."""

    def __init__(self, model, spec: RoutingSpec):
        super().__init__()
        self.spec, self.arch = spec, Arch.from_hf(model.config)
        scale = spec.alpha / spec.rank
        self.paths: list[str] = []
        experts = {}
        for site in decoder_linears(model):
            w = site.module.weight
            experts[site.path.replace(".", "/")] = Experts(
                spec.experts, spec.rank, w.shape[1], w.shape[0], scale, site.layer
            )
            self.paths.append(site.path)
        self.experts = nn.ModuleDict(experts)
        self.router = (
            MixtureRouter(2 * self.arch.num_layers + 1, spec.experts, spec.router_hidden)
            if spec.router == "mixture"
            else None
        )
        device = next(model.parameters()).device
        self.to(device)
        self._model = [model]  # not a submodule: the HF model stays the HF model

    # --- routing ------------------------------------------------------------------------------
    def mix(self, cfg: SubnetConfig) -> torch.Tensor:
        """(layers, K) mixing weights of ``cfg`` (differentiable for the mixture router)."""
        spec, L, device = self.spec, self.arch.num_layers, self.experts[self._key(0)].A.device
        if spec.router == "mixture":
            row = self.router(arch_features(self.arch, cfg).to(device))
            return row.expand(L, -1)
        m = torch.zeros(L, spec.experts, device=device)
        if spec.router == "precision":  # each kept layer's bits (the widest where a layer is left out)
            bits = dict(zip(cfg.layers, cfg.bits or (16,) * cfg.depth, strict=True))
            for i in range(L):
                b = bits.get(i, max(spec.choices))
                if b not in spec.choices:
                    raise LlamanasError(
                        f"bits {b} has no adapter; the adapters are for {list(spec.choices)}."
                    )
                m[i, spec.choices.index(b)] = 1.0
            return m
        value = spec.gene_of().value(cfg)  # split
        if value not in spec.choices:
            raise LlamanasError(
                f"{spec.gene} = {value} is not one of the split's parts {list(spec.choices)}."
            )
        m[:, spec.choices.index(value)] = 1.0
        return m

    def route(self, cfg: SubnetConfig | None) -> None:
        """Switch every linear to ``cfg``'s mixture (None: the base weights alone)."""
        m = None if cfg is None else self.mix(cfg)
        for e in self.experts.values():
            e.mix = m

    def _key(self, j: int) -> str:
        return self.paths[j].replace(".", "/")

    def attach(self, supernet) -> None:
        """Give every decoder linear of ``supernet`` its experts and route the active sub-network."""
        for site in decoder_linears(supernet.model):
            object.__setattr__(site.module, "routed", self.experts[site.path.replace(".", "/")])
        supernet.routing = self
        self.route(supernet.active)

    def detach(self, supernet) -> None:
        for site in decoder_linears(supernet.model):
            object.__setattr__(site.module, "routed", None)
        supernet.routing = None

    @contextmanager
    @torch.no_grad()
    def merged(self, supernet, cfg: SubnetConfig):
        """The full weights with ``cfg``'s mixture folded in and routing off, for slicing ``cfg`` out;
        the weights are restored exactly afterwards."""
        m = self.mix(cfg)
        saved = {}
        sites = {s.path: s.module for s in decoder_linears(supernet.model)}
        try:
            for path in self.paths:
                lin, e = sites[path], self.experts[path.replace(".", "/")]
                saved[path] = lin.weight.detach().clone()
                lin.weight += e.delta(mix_row=m[e.layer]).to(lin.weight.dtype)
                object.__setattr__(lin, "routed", None)
            yield
        finally:
            for path, w in saved.items():
                sites[path].weight.copy_(w)
                object.__setattr__(sites[path], "routed", self.experts[path.replace(".", "/")])

    # --- files --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(Path(folder) / ROUTING_FILE))
        (Path(folder) / ROUTING_META).write_text(json.dumps(asdict(self.spec), indent=2))

    @classmethod
    def load(cls, folder: str | Path, model) -> RoutedAdapters | None:
        """The routed adapters saved in ``folder`` for ``model``; None when it has none."""
        folder = Path(folder)
        if not (folder / ROUTING_META).is_file():
            return None
        spec = RoutingSpec(**json.loads((folder / ROUTING_META).read_text()))
        routed = cls(model, spec)
        routed.load_state_dict(load_file(str(folder / ROUTING_FILE)))
        return routed


# --- few-shot NAS: where to split ------------------------------------------------------------------


def gradient_disagreement(grads: np.ndarray, values: np.ndarray) -> float:
    """1 - mean pairwise cosine similarity of the mean gradients of the groups ``values`` forms (rows of
    ``grads`` are sub-networks' gradients); 0 when fewer than two groups are present."""
    groups = [grads[values == v].mean(0) for v in np.unique(values)]
    if len(groups) < 2:
        return 0.0
    g = np.stack(groups)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    sims = g @ g.T
    iu = np.triu_indices(len(groups), 1)
    return float(1.0 - sims[iu].mean())


def choose_split(grads: np.ndarray, cfgs: list[SubnetConfig], genes: list[Gene]) -> tuple[Gene, dict]:
    """The gene whose choices' sub-networks' gradients disagree most (gradient matching), and every
    candidate's score."""
    if not genes:
        raise LlamanasError("The search space has no choice to split on (every gene has one value).")
    scores = {str(g): gradient_disagreement(grads, np.array([g.value(c) for c in cfgs])) for g in genes}
    best = max(genes, key=lambda g: (scores[str(g)], -g.layer))
    return best, scores
