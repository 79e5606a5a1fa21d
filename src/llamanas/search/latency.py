"""A latency model of a deployment runtime (llama.cpp on the CPU), so a search can optimise the speed a
user sees there without timing every candidate.

HAT / DyNAS-T style: the time of a sub-network is a fixed cost (embeddings, LM head, the runtime's
overhead) plus one cost per kept layer, looked up by the layer's kind and width:

    time_ms = fixed + sum over kept layers of (mlp[<MLP size>(@bits)] + kv[<KV groups>(@bits)])

A space with a hidden-size gene (``hidden_choices``) adds cells per narrower residual width ``h``:
``mlp:<size>/<h>``, ``kv:<groups>/<h>``, and ``head:<h>``, the fixed cost at that width (embeddings and
LM head shrink with it), which replaces ``fixed``. Cells of different widths are never interpolated into
each other: every width is timed (``calibration_configs`` times the largest and smallest config at each).

Two such tables are fitted, one per target: ``prefill_ms`` (the whole prompt of ``prompt_tokens``) and
``decode_ms`` (one generated token). The cells are fitted by non-negative least squares on relative
errors over a few dozen timed configs (``fit_latency_table``), so no layer ever has a negative cost;
then the cheapest KV cell is moved into the MLP cells, so ``mlp:<size>`` reads as a layer with that MLP
and the cheapest attention, and ``kv:<groups>`` as the extra cost of more KV groups. Cells of the space
that no timed config used are interpolated in width from the timed ones (and listed in
``interpolated``). Held-out timed configs give the table's MAPE and Kendall tau, beside those of the
general predictors of ``search.predictors`` fitted on the same configs, for comparison.

The search reads a table as the values of two objectives (``search.objectives``): ``latency`` is the
predicted prefill time in ms, ``throughput`` the predicted decode speed in tokens/s (1000 /
``decode_ms``). ``Counts`` computes them for many integer-encoded configs at once (``layer_costs``).

Timing the calibration configs needs the runtime, so it lives in ``deploy.speed``; this module is data
and arithmetic only. A table is one JSON file (``save`` / ``load``); its ``digest`` (cells and timing
settings) keys the stored results of a search that uses it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from llamanas import config
from llamanas.errors import LlamanasError
from llamanas.search.predictors import Encoder, Predictor, kendall_tau, mape
from llamanas.search.store import write_json
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

FORMAT = "llamanas-latency-table"
VERSION = 1
TARGETS = ("prefill_ms", "decode_ms")
VALUES = ("latency", "throughput")  # the objective values a table gives


@dataclass(frozen=True)
class Timed:
    """One timed sub-network: prefill time of the whole prompt and time per decoded token, in ms."""

    config: SubnetConfig
    prefill_ms: float
    decode_ms: float

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "prefill_ms": self.prefill_ms, "decode_ms": self.decode_ms}

    @classmethod
    def from_dict(cls, d: dict) -> Timed:
        return cls(SubnetConfig.from_dict(d["config"]), float(d["prefill_ms"]), float(d["decode_ms"]))


def cell(kind: str, width: int, bits: int | None = None, hidden: int | None = None) -> str:
    """A table cell's name: ``mlp:256``, ``kv:2``; ``mlp:256@8`` with a layer precision; ``mlp:256/448`` in a
    residual stream narrowed to 448 channels; ``head:448``, the fixed cost at that width."""
    return (
        f"{kind}:{int(width)}"
        + (f"@{int(bits)}" if bits is not None else "")
        + (f"/{int(hidden)}" if hidden is not None else "")
    )


def _parse_cell(name: str) -> tuple[str, int, int | None, int | None]:
    kind, _, rest = name.partition(":")
    rest, _, hidden = rest.partition("/")
    width, _, bits = rest.partition("@")
    return kind, int(width), int(bits) if bits else None, int(hidden) if hidden else None


def narrowed(cfg: SubnetConfig, full: int | None) -> int | None:
    """``cfg``'s residual width when narrower than ``full`` (the model's), else None."""
    return cfg.hidden if cfg.hidden is not None and cfg.hidden != full else None


def layer_cells(cfg: SubnetConfig, full: int | None = None) -> list[tuple[str, str]]:
    """(MLP cell, KV cell) of each kept layer; ``full`` is the model's hidden size."""
    bits = cfg.bits or (None,) * cfg.depth
    h = narrowed(cfg, full)
    return [
        (cell("mlp", m, b, h), cell("kv", g, b, h))
        for m, g, b in zip(cfg.mlp, cfg.kv_groups, bits, strict=True)
    ]


def space_cells(space: SearchSpace) -> list[str]:
    """Every cell a config of ``space`` can use, sorted."""
    out = set()
    full = space.arch.hidden_size
    for h in [None] + [h for h in space.hidden_choices if h != full]:
        if h is not None:
            out.add(cell("head", h))
        for i in range(space.arch.num_layers):
            bits = space.bits_choices[i] if space.bits_choices else (None,)
            for b in bits:
                out.update(cell("mlp", m, b, h) for m in space.mlp_choices[i])
                out.update(cell("kv", g, b, h) for g in space.kv_choices[i])
    return sorted(out, key=_parse_cell_sort)


def _parse_cell_sort(name: str):
    kind, w, b, h = _parse_cell(name)
    return (kind, -1 if h is None else h, -1 if b is None else b, w)


def _design(cfgs: Sequence[SubnetConfig], cells: list[str], full: int) -> np.ndarray:
    """Rows: [1 at the full residual width, count of kept layers using each cell..., 1 in the row's
    ``head:<h>`` column at a narrower width]."""
    col = {c: j + 1 for j, c in enumerate(cells)}
    A = np.zeros((len(cfgs), len(cells) + 1))
    for r, cfg in enumerate(cfgs):
        h = narrowed(cfg, full)
        A[r, 0 if h is None else col[cell("head", h)]] = 1.0
        for mc, kc in layer_cells(cfg, full):
            A[r, col[mc]] += 1
            A[r, col[kc]] += 1
    return A


@dataclass
class LatencyTable:
    """Fitted per-layer costs (ms) of one runtime on one machine, with how it was timed and its error."""

    fixed: dict[str, float]  # target -> ms
    cells: dict[str, dict[str, float]]  # target -> cell -> ms per kept layer
    timing: dict = field(default_factory=dict)  # runtime, prompt_tokens, decode_tokens, threads, type...
    arch: dict = field(default_factory=dict)  # dimensions of the model the table was timed on
    calibration: list[dict] = field(default_factory=list)  # Timed.to_dict() + "split": train | test
    holdout: dict = field(default_factory=dict)  # per value: n, mape, kendall_tau (table and predictor)
    interpolated: list[str] = field(default_factory=list)  # cells no timed config used

    # --- values -----------------------------------------------------------------------------------
    def time_ms(self, cfg: SubnetConfig) -> dict[str, float]:
        """Predicted ``prefill_ms`` and ``decode_ms`` of one config."""
        full = self.arch.get("hidden_size")
        h = narrowed(cfg, full)
        wanted = {c for pair in layer_cells(cfg, full) for c in pair} | ({cell("head", h)} if h else set())
        missing = sorted(wanted - set(self.cells[TARGETS[0]]))
        if missing:
            raise LlamanasError(
                f"The latency table has no cost for {missing} (it covers {self.describe_cells()}); "
                f"build a table for this search space."
            )
        out = {}
        for t in TARGETS:
            costs = self.cells[t]
            base = self.fixed[t] if h is None else costs[cell("head", h)]
            out[t] = base + sum(costs[m] + costs[k] for m, k in layer_cells(cfg, full))
        return out

    def values(self, cfg: SubnetConfig) -> dict[str, float]:
        """The objective values: ``latency`` (prefill ms) and ``throughput`` (decode tokens/s)."""
        t = self.time_ms(cfg)
        return {"latency": t["prefill_ms"], "throughput": 1000.0 / t["decode_ms"]}

    def describe_cells(self) -> str:
        return ", ".join(sorted(self.cells[TARGETS[0]], key=_parse_cell_sort))

    def check_space(self, space: SearchSpace) -> None:
        """Raise unless every cell the space can use has a cost (and the model's dimensions match)."""
        a = space.arch
        dims = {"hidden_size": a.hidden_size, "num_heads": a.num_heads, "head_dim": a.head_dim}
        wrong = {k: (self.arch[k], v) for k, v in dims.items() if k in self.arch and self.arch[k] != v}
        if wrong:
            raise LlamanasError(
                "The latency table was timed on another model: "
                + ", ".join(f"{k} {t} (table) vs {s} (search)" for k, (t, s) in wrong.items())
                + "."
            )
        missing = [c for c in space_cells(space) if c not in self.cells[TARGETS[0]]]
        if missing:
            raise LlamanasError(
                f"The latency table has no cost for {missing} of this search space (it covers "
                f"{self.describe_cells()}); build a table for this space."
            )

    def layer_costs(self, space: SearchSpace) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Vectorised form for ``Counts``: per target, (fixed ms per residual width, an array
        [residual width index, layer, MLP choice index, KV choice index, bits choice index] of a kept
        layer's ms); the widths are ``space.hidden_choices``, or the model's alone."""
        self.check_space(space)
        full = space.arch.hidden_size
        widths = [None if h == full else h for h in (space.hidden_choices or (full,))]
        n = space.arch.num_layers
        cm = max(len(m) for m in space.mlp_choices)
        ck = max(len(k) for k in space.kv_choices)
        cb = max((len(b) for b in space.bits_choices), default=1)
        fixed, tables = {}, {}
        for t in TARGETS:
            costs, arr = self.cells[t], np.zeros((len(widths), n, cm, ck, cb))
            for hi, h in enumerate(widths):
                for i in range(n):
                    bits = space.bits_choices[i] if space.bits_choices else (None,)
                    for j, m in enumerate(space.mlp_choices[i]):
                        for k, g in enumerate(space.kv_choices[i]):
                            for b, bb in enumerate(bits):
                                arr[hi, i, j, k, b] = (
                                    costs[cell("mlp", m, bb, h)] + costs[cell("kv", g, bb, h)]
                                )
            fixed[t] = np.array([self.fixed[t] if h is None else costs[cell("head", h)] for h in widths])
            tables[t] = arr
        return fixed, tables

    # --- files ------------------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """Identity of the values this table gives (costs and timing settings), for the results store."""
        d = {"fixed": self.fixed, "cells": self.cells, "timing": self.timing}
        return config.digest(d)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "digest": self.digest,
            "model": "time_ms = fixed + sum over kept layers of (mlp[cell] + kv[cell])",
            "timing": self.timing,
            "arch": self.arch,
            "fixed": self.fixed,
            "cells": self.cells,
            "interpolated": self.interpolated,
            "holdout": self.holdout,
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "latency table") -> LatencyTable:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise LlamanasError(
                f"{where}: not a latency table (expected a JSON object with format {FORMAT!r}, written by "
                f"llamanas)."
            )
        if d.get("version") != VERSION:
            raise LlamanasError(
                f"{where}: latency table version {d.get('version')!r}; this llamanas reads {VERSION}."
            )
        for k in ("fixed", "cells"):
            if not isinstance(d.get(k), dict) or set(d[k]) != set(TARGETS):
                raise LlamanasError(f"{where}: {k!r} must give {list(TARGETS)}.")
        return cls(
            fixed={t: float(v) for t, v in d["fixed"].items()},
            cells={t: {c: float(v) for c, v in cs.items()} for t, cs in d["cells"].items()},
            timing=dict(d.get("timing", {})),
            arch=dict(d.get("arch", {})),
            calibration=list(d.get("calibration", [])),
            holdout=dict(d.get("holdout", {})),
            interpolated=list(d.get("interpolated", [])),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        p = Path(path)
        if not p.is_file():
            raise LlamanasError(f"Latency table {str(path)!r} does not exist.")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise LlamanasError(f"Latency table {str(p)!r} is not JSON: {e}") from None
        return cls.from_dict(d, str(p))


# ------------------------------------------------------------------------------------------------------
# Calibration configs and the fit
# ------------------------------------------------------------------------------------------------------


def calibration_configs(space: SearchSpace, n: int, seed: int = 0) -> list[SubnetConfig]:
    """``n`` distinct configs to time: the largest and the smallest, uniform configs at every MLP size, KV
    width and precision (so every cell is timed), then random ones. Fewer if the space is smaller."""
    if n < 1:
        raise LlamanasError(f"The number of calibration configs must be >= 1; got {n}.")
    big = space.largest()
    anchors = [big, space.smallest()]
    layers = big.layers

    def uniform(mlp_j=None, kv_j=None, bits_j=None) -> SubnetConfig:
        def pick(choices, j):
            return choices[min(j, len(choices) - 1)] if j is not None else max(choices)

        bits = None
        if space.bits_choices:
            bits = tuple(pick(space.bits_choices[i], bits_j) for i in layers)
        kv = [pick(space.kv_choices[i], kv_j) for i in layers]
        if kv[0] == 0:  # the first kept layer keeps its attention (supernet.space.FIRST_ATTENTION)
            kv[0] = max(space.kv_choices[layers[0]])
        return SubnetConfig(layers, tuple(pick(space.mlp_choices[i], mlp_j) for i in layers), tuple(kv), bits)

    anchors += [uniform(mlp_j=j) for j in range(max(len(m) for m in space.mlp_choices))]
    anchors += [uniform(kv_j=j) for j in range(max(len(k) for k in space.kv_choices))]
    anchors += [uniform(bits_j=j) for j in range(max((len(b) for b in space.bits_choices), default=0))]
    full = space.arch.hidden_size
    for h in (
        h for h in space.hidden_choices if h != full
    ):  # every narrower stream: its largest and smallest
        anchors += [replace(big, hidden=h), replace(space.smallest(), hidden=h)]
    out, seen = [], set()
    for cfg in anchors:
        if cfg.key() not in seen:
            seen.add(cfg.key())
            out.append(cfg)
    rng = np.random.default_rng(seed)
    tries = 0
    while len(out) < n and tries < 100 * n + 100:
        tries += 1
        cfg = space.sample(rng)
        if cfg.key() not in seen:
            seen.add(cfg.key())
            out.append(cfg)
    return out[:n]


def _nnls_relative(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative errors: min sum(((A x - y) / y)^2), x >= 0."""
    w = 1.0 / y
    x, _ = nnls(A * w[:, None], np.ones_like(y), maxiter=50 * A.shape[1])
    return x


def _interpolate(costs: dict[str, float], seen: set[str], wanted: list[str]) -> list[str]:
    """Fill the cells in ``wanted`` that no timed config used, by linear interpolation in width among the
    seen cells of the same kind, precision and residual width (flat beyond them). Returns the filled ones."""
    filled = []
    for c in wanted:
        if c in seen:
            continue
        kind, width, bits, hidden = _parse_cell(c)
        pts = sorted(
            (w, costs[s])
            for s in seen
            for (k, w, b, h) in [_parse_cell(s)]
            if (k, b, h) == (kind, bits, hidden)
        )
        if not pts or kind == "head":
            what = (
                f"had {width} residual channels"
                if kind == "head"
                else f"used a {kind} layer"
                + (f" at {bits} bits" if bits else "")
                + (f" with {hidden} residual channels" if hidden else "")
            )
            raise LlamanasError(
                f"No timed config {what}, so the cost of {c!r} cannot be estimated; time configs that "
                f"cover it (calibration_configs does)."
            )
        costs[c] = float(np.interp(width, [w for w, _ in pts], [v for _, v in pts]))
        filled.append(c)
    return filled


def fit_latency_table(
    train: Sequence[Timed],
    space: SearchSpace,
    test: Sequence[Timed] = (),
    timing: dict | None = None,
    compare_predictors: bool = True,
) -> LatencyTable:
    """Fit the table on ``train``; report its error on ``test`` (MAPE and Kendall tau of ``latency`` and
    ``throughput``, and of the ``auto`` predictor of ``search.predictors`` on the same data)."""
    if len(train) < 2:
        raise LlamanasError(f"A latency table needs at least 2 timed configs to fit; got {len(train)}.")
    for t in [*train, *test]:
        if not (t.prefill_ms > 0 and t.decode_ms > 0 and math.isfinite(t.prefill_ms + t.decode_ms)):
            raise LlamanasError(f"Timed config {t.config.key()} has a non-positive or non-finite time: {t}.")
    cfgs = [t.config for t in train]
    full = space.arch.hidden_size
    seen = {c for cfg in cfgs for pair in layer_cells(cfg, full) for c in pair}
    seen |= {cell("head", h) for cfg in cfgs if (h := narrowed(cfg, full))}
    seen = sorted(seen, key=_parse_cell_sort)
    A = _design(cfgs, seen, full)
    fixed, cells = {}, {}
    filled: list[str] = []
    for target in TARGETS:
        y = np.array([getattr(t, target) for t in train])
        x = _nnls_relative(A, y)
        costs = dict(zip(seen, (float(v) for v in x[1:]), strict=True))
        # Move the cheapest KV cell into every MLP cell (each layer has one of each): same predictions.
        kv = [c for c in seen if c.startswith("kv:")]
        shift = min(costs[c] for c in kv)
        for c in seen:
            costs[c] += shift if c.startswith("mlp:") else -shift if c.startswith("kv:") else 0.0
        filled = _interpolate(costs, set(seen), space_cells(space))
        fixed[target], cells[target] = float(x[0]), costs
    a = space.arch
    table = LatencyTable(
        fixed=fixed,
        cells=cells,
        timing=dict(timing or {}),
        arch={
            "num_layers": a.num_layers,
            "hidden_size": a.hidden_size,
            "intermediate_size": a.intermediate_size,
            "num_heads": a.num_heads,
            "num_kv_heads": a.num_kv_heads,
            "head_dim": a.head_dim,
            "vocab_size": a.vocab_size,
        },
        calibration=[{**t.to_dict(), "split": "train"} for t in train]
        + [{**t.to_dict(), "split": "test"} for t in test],
        interpolated=filled,
    )
    table.holdout = holdout_error(table, train, test, space, compare_predictors)
    return table


def _true_values(timed: Sequence[Timed]) -> dict[str, np.ndarray]:
    return {
        "latency": np.array([t.prefill_ms for t in timed]),
        "throughput": np.array([1000.0 / t.decode_ms for t in timed]),
    }


def holdout_error(
    table: LatencyTable,
    train: Sequence[Timed],
    test: Sequence[Timed],
    space: SearchSpace | None = None,
    compare_predictors: bool = True,
) -> dict:
    """Per value (``latency``, ``throughput``): n, MAPE and Kendall tau of the table on ``test``; with
    ``compare_predictors``, the same for ``search.predictors.Predictor('auto')`` fitted on ``train``."""

    if not test:
        return {}
    true = _true_values(test)
    pred = {v: np.array([table.values(t.config)[v] for t in test]) for v in VALUES}
    out = {
        v: {
            "n": len(test),
            "mape": finite_or_none(mape(true[v], pred[v])),
            "kendall_tau": finite_or_none(kendall_tau(true[v], pred[v])),
        }
        for v in VALUES
    }
    if compare_predictors and space is not None and len(train) >= 2:
        enc = Encoder(space)
        F_train = enc(np.array([space.encode(t.config) for t in train]))
        F_test = enc(np.array([space.encode(t.config) for t in test]))
        y_train = _true_values(train)
        for v in VALUES:
            p = Predictor("auto").fit(F_train, y_train[v])
            guess = p.predict(F_test)
            out[v]["predictor"] = {
                "model": p.chosen,
                "mape": finite_or_none(mape(true[v], guess)),
                "kendall_tau": finite_or_none(kendall_tau(true[v], guess)),
            }
    return out


def finite_or_none(x: float) -> float | None:
    """NaN (e.g. Kendall tau of one held-out config) as None: the table file stays standard JSON."""
    return None if x is None or not math.isfinite(x) else float(x)
