"""Exact sizes of integer-encoded configs, vectorised: the inner LINAS search never predicts what it can count.

``Counts`` computes params, bytes, MACs and KV-cache bytes of many configs at once with per-layer lookup
tables, and, given a llama.cpp latency table, predicted latency and throughput the same way.
"""

from __future__ import annotations

import numpy as np

from llamanas.errors import LlamanasError, unknown
from llamanas.supernet.precision import fixed_bytes, layer_bytes, policy_bytes
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig, layer_macs


class Counts:
    """Params, bytes and MACs per token of configs given as integer vectors (rows of X), exactly.

    Both are a constant (embeddings, LM head, final norm) plus a per-kept-layer cost that depends on the
    layer's MLP and KV choice, so one table lookup per layer does it; ``keep`` gives the kept layers. In a
    space with hidden choices every table and constant has one more axis first: the residual width.
    Bytes are ``params x dtype_bytes``, except in a space with precision genes (``bits``), where they are
    the stored bytes at each layer's precision (``quantize.policy_bytes``: 16-bit where not quantized).

    With a latency table (``search.latency.LatencyTable``, ``--runtime llamacpp``) it also gives
    ``latency`` (predicted prefill ms) and ``throughput`` (predicted decode tokens/s), the same way: a
    fixed time plus a per-kept-layer time looked up by the layer's widths and precision.
    """

    NAMES = ("params", "bytes", "macs", "kv_bytes")
    SPEED = ("latency", "throughput")

    def __init__(self, space: SearchSpace, dtype_bytes: int = 4, seq_len: int = 128, latency_table=None):
        self.space, self.dtype_bytes, self.seq_len = space, dtype_bytes, seq_len
        self.latency_table = latency_table
        # Per target: fixed ms per residual width, and [width, layer, mlp, kv, bits] ms of a kept layer.
        self.speed_base: dict[str, np.ndarray] = {}
        self.speed_tables: dict[str, np.ndarray] = {}
        if latency_table is not None:
            self.speed_base, self.speed_tables = latency_table.layer_costs(space)
        a = space.arch
        self.hidden = tuple(space.hidden_choices or (a.hidden_size,))
        nh = len(self.hidden)
        self.n_layers = a.num_layers
        self.mlp_max = np.array([len(m) - 1 for m in space.mlp_choices])
        self.kv_max = np.array([len(k) - 1 for k in space.kv_choices])
        cm, ck = int(self.mlp_max.max()) + 1, int(self.kv_max.max()) + 1
        # table[name][hidden index, layer, mlp index, kv index] = that layer's cost; unused cells stay 0.
        self.tables = {n: np.zeros((nh, a.num_layers, cm, ck)) for n in ("params", "macs", "kv_bytes")}
        # ok[layer, mlp index, kv index]: a cell a kept layer can be in (not both blocks skipped).
        self.ok = np.zeros((a.num_layers, cm, ck), dtype=bool)
        # A (0, 0) cell (both blocks skipped) costs 0: such a layer is not kept (``space.kept``).
        for hi, h in enumerate(self.hidden):
            for i in range(a.num_layers):
                for j, m in enumerate(space.mlp_choices[i]):
                    for k, g in enumerate(space.kv_choices[i]):
                        self.ok[i, j, k] = m > 0 or g > 0
                        self.tables["params"][hi, i, j, k] = a.layer_params(m, g, h)
                        self.tables["macs"][hi, i, j, k] = layer_macs(a, m, g, seq_len, h)
                        self.tables["kv_bytes"][hi, i, j, k] = a.kv_bytes_per_token(g)
        # The constant part per width: embeddings (+ untied head) and the final norm; the LM head's MACs.
        self.base = {
            "params": np.array([a.fixed_params(True, h) for h in self.hidden], dtype=float),
            "macs": np.array([a.vocab_size * h for h in self.hidden], dtype=float),
            "kv_bytes": np.zeros(nh),
        }
        # bytes[layer, mlp index, kv index, bits index]; one bits slot when the space has no precision genes.
        self.bits_max = np.array([len(b) - 1 for b in space.bits_choices], dtype=int)
        if space.bits_choices:
            cb = int(self.bits_max.max()) + 1
            self.tables["bytes"] = np.zeros((nh, a.num_layers, cm, ck, cb))
            for hi, h in enumerate(self.hidden):
                for i in range(a.num_layers):
                    for j, m in enumerate(space.mlp_choices[i]):
                        for k, g in enumerate(space.kv_choices[i]):
                            for b, bits in enumerate(space.bits_choices[i]):
                                self.tables["bytes"][hi, i, j, k, b] = layer_bytes(a, m, g, bits, hidden=h)
            self.base["bytes"] = np.array([fixed_bytes(a, h) for h in self.hidden], dtype=float)
        else:
            self.tables["bytes"] = (self.tables["params"] * dtype_bytes)[..., None]
            self.base["bytes"] = self.base["params"] * dtype_bytes
        self.depths = np.array(sorted(space.depth_choices)) if space.mode == "first_n" else None

    def keep(self, X: np.ndarray) -> np.ndarray:
        """(n, layers) bool: which layers each (repaired) row keeps."""
        return self.space.kept(np.atleast_2d(X))

    def widths(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mlp choice index, kv choice index), each (n, layers)."""
        genes = self.space.split_genes(np.atleast_2d(X))
        return genes["mlp"], genes["kv"]

    def hidden_index(self, X: np.ndarray) -> np.ndarray:
        """(n,) index of each row's residual width in ``self.hidden`` (all 0 without a hidden gene)."""
        X = np.atleast_2d(X)
        if not self.space.hidden_choices:
            return np.zeros(X.shape[0], dtype=int)
        return self.space.split_genes(X)["hidden"][:, 0]

    def bits(self, X: np.ndarray) -> np.ndarray:
        """(n, layers) precision choice index (all 0 in a space without precision genes)."""
        X = np.atleast_2d(X)
        if not self.space.bits_choices:
            return np.zeros((X.shape[0], self.n_layers), dtype=int)
        return self.space.split_genes(X)["bits"]

    def __call__(self, X: np.ndarray) -> dict[str, np.ndarray]:
        keep = self.keep(X)
        mi, ki = self.widths(X)
        hi = self.hidden_index(X)
        layer = np.arange(self.n_layers)[None, :]
        out = {}
        for name in ("params", "macs", "kv_bytes"):
            per_layer = self.tables[name][hi[:, None], layer, mi, ki]
            out[name] = self.base[name][hi] + (per_layer * keep).sum(axis=1)
        bi = self.bits(X)
        per_layer = self.tables["bytes"][hi[:, None], layer, mi, ki, bi]
        out["bytes"] = self.base["bytes"][hi] + (per_layer * keep).sum(axis=1)
        if self.latency_table is not None:
            ms = {
                t: self.speed_base[t][hi] + (table[hi[:, None], layer, mi, ki, bi] * keep).sum(axis=1)
                for t, table in self.speed_tables.items()
            }
            out["latency"] = ms["prefill_ms"]
            out["throughput"] = 1000.0 / ms["decode_ms"]
        return out

    @property
    def names(self) -> tuple[str, ...]:
        """The values this instance computes."""
        return self.NAMES + (self.SPEED if self.latency_table is not None else ())

    def of(self, cfg: SubnetConfig) -> dict[str, float]:
        """The exact counts of one config (the values stored with every evaluation)."""
        a = self.space.arch
        params = cfg.num_params(a)
        size = float(policy_bytes(a, cfg)) if self.space.bits_choices else float(params * self.dtype_bytes)
        out = {
            "params": float(params),
            "bytes": size,
            "macs": float(cfg.macs_per_token(a, self.seq_len)),
            "kv_bytes": float(cfg.kv_bytes(a)),
        }
        if self.latency_table is not None:
            out.update(self.latency_table.values(cfg))
        return out

    def range(self, name: str) -> tuple[float, float]:
        """(smallest, largest) value of a count over the whole space (costs grow with every choice)."""
        if name in self.SPEED and self.latency_table is not None:
            return self._speed_range(name)
        if name not in self.NAMES:
            if name in self.SPEED:
                raise LlamanasError(
                    f"{name!r} is computed only with a latency table (--runtime llamacpp --latency-table)."
                )
            raise unknown("count", name, self.NAMES)
        lows, highs = [], []
        for h, table in enumerate(self.tables[name]):  # each residual width: its cheapest and dearest
            lo_cost = np.array([self._valid(table, i).min() for i in range(self.n_layers)])
            hi_cost = np.array([self._valid(table, i).max() for i in range(self.n_layers)])
            lo, hi = self._extremes(float(self.base[name][h]), lo_cost, hi_cost)
            lows.append(lo)
            highs.append(hi)
        return min(lows), max(highs)

    def _speed_range(self, name: str) -> tuple[float, float]:
        """Range of ``latency`` (prefill ms) or ``throughput`` (1000 / decode ms) under the latency table:
        per layer the cheapest and dearest cell combination (layer costs are never negative)."""
        target = "prefill_ms" if name == "latency" else "decode_ms"
        lows, highs = [], []
        for h, table in enumerate(self.speed_tables[target]):  # each residual width
            lo_cost = np.array([self._valid(table, i).min() for i in range(self.n_layers)])
            hi_cost = np.array([self._valid(table, i).max() for i in range(self.n_layers)])
            lo, hi = self._extremes(float(self.speed_base[target][h]), lo_cost, hi_cost)
            lows.append(lo)
            highs.append(hi)
        lo, hi = min(lows), max(highs)
        # A table fitted on a few noisy timings can predict 0 ms for the smallest member: its throughput is
        # then unbounded, not a division error.
        return (lo, hi) if name == "latency" else (1000.0 / max(hi, 1e-9), 1000.0 / max(lo, 1e-9))

    def _valid(self, table: np.ndarray, i: int) -> np.ndarray:
        """Layer ``i``'s cells a kept layer can be in (flattened): its choices, not both blocks skipped."""
        ok = self.ok[i, : self.mlp_max[i] + 1, : self.kv_max[i] + 1]
        cells = table[i, : self.mlp_max[i] + 1, : self.kv_max[i] + 1]
        if cells.ndim == 3:  # bytes and speed tables have a bits axis
            nb = int(self.bits_max[i]) + 1 if len(self.bits_max) else 1
            return cells[..., :nb][ok].ravel()
        return cells[ok]

    def _extremes(self, base: float, lo_cost: np.ndarray, hi_cost: np.ndarray) -> tuple[float, float]:
        sp = self.space
        if self.depths is not None:
            lo = base + min(lo_cost[:d].sum() for d in self.depths)
            hi = base + max(hi_cost[:d].sum() for d in self.depths)
        else:
            forced = list(sp.always_keep)
            rest = sorted((c, i) for i, c in enumerate(lo_cost) if i not in forced)
            need = max(0, sp.min_depth - len(forced))
            lo = base + lo_cost[forced].sum() + sum(c for c, _ in rest[:need])
            hi = base + hi_cost.sum()
        return float(lo), float(hi)
