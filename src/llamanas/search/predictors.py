"""Light regressors that predict a measured value (accuracy, NLL, latency...) from a sub-network config.

LINAS fits one predictor per measured objective on every real evaluation so far and lets NSGA-II search
the predictors instead of the super-network. Two pieces:

- ``Encoder``: config (integer vector of ``SearchSpace.encode``) -> feature matrix. The features describe
  the *decoded* config, so two vectors that decode to the same sub-network get the same features (the
  MLP/KV genes of a skipped layer are ignored). Per layer: kept (0/1), MLP fraction and KV fraction (0 when
  skipped) or, with ``kind="onehot"``, one column per choice; then derived features that carry most of the
  signal with few samples: depth fraction, parameter fraction, MAC fraction and mean widths.
- ``Predictor``: ridge, RBF-kernel SVR and gradient boosting from scikit-learn; ``auto`` picks the
  best of the three or their error-weighted average by out-of-fold error (K-fold cross-validation).

``kendall_tau`` and ``mape`` report how well predictions rank and match new real evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from llamanas.errors import LlamanasError, unknown
from llamanas.search.counts import Counts
from llamanas.supernet.space import SearchSpace

ENCODINGS = ("ordinal", "onehot")


class Encoder:
    """Integer vectors (rows) -> float features; ``names`` labels the columns."""

    def __init__(self, space: SearchSpace, kind: str = "ordinal"):
        if kind not in ENCODINGS:
            raise unknown("encoding", kind, ENCODINGS)
        self.space, self.kind = space, kind
        self.counts = Counts(space)
        a = space.arch
        n = a.num_layers
        width = max(len(m) for m in space.mlp_choices)
        kwidth = max(len(k) for k in space.kv_choices)
        # value[i, j] = fraction of the full size of choice j at layer i (padding cells unused).
        self.mlp_frac = np.zeros((n, width))
        self.kv_frac = np.zeros((n, kwidth))
        for i in range(n):
            self.mlp_frac[i, : len(space.mlp_choices[i])] = (
                np.array(space.mlp_choices[i]) / a.intermediate_size
            )
            self.kv_frac[i, : len(space.kv_choices[i])] = np.array(space.kv_choices[i]) / a.num_kv_heads
        self.ranges = {k: self.counts.range(k) for k in ("params", "macs", "bytes", "kv_bytes")}
        # Precision genes (joint search): each kept layer's bits / 16, and the stored bytes.
        self.bits_frac = None
        if space.bits_choices:
            self.bits_frac = np.zeros((n, max(len(b) for b in space.bits_choices)))
            for i, bs in enumerate(space.bits_choices):
                self.bits_frac[i, : len(bs)] = np.array(bs) / 16
        names = []
        if kind == "ordinal":
            for i in range(n):
                names += [f"keep.{i}", f"mlp_frac.{i}", f"kv_frac.{i}"]
        else:
            for i in range(n):
                names.append(f"keep.{i}")
                names += [f"mlp.{i}={m}" for m in space.mlp_choices[i]]
                names += [f"kv.{i}={g}" for g in space.kv_choices[i]]
        # Block skipping (size 0) is already a 0 fraction above; the shares of layers that keep each
        # block say it directly, as the counts say what a skipped block saves.
        names += ["depth_frac", "params_frac", "macs_frac", "mean_mlp_frac", "mean_kv_frac"]
        names += ["attention_frac", "mlp_block_frac", "kv_bytes_frac"]
        if self.bits_frac is not None:
            names += [f"bits_frac.{i}" for i in range(n)] + ["bytes_frac", "mean_bits_frac"]
        if space.hidden_choices:
            names.append("hidden_frac")  # the residual stream's width
        self.names = tuple(names)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=int))
        keep = self.counts.keep(X).astype(float)  # (rows, layers)
        mi, ki = self.counts.widths(X)
        n = self.space.arch.num_layers
        layer = np.arange(n)[None, :]
        mlp = self.mlp_frac[layer, mi] * keep
        kv = self.kv_frac[layer, ki] * keep
        cols = []
        if self.kind == "ordinal":
            cols.append(np.stack([keep, mlp, kv], axis=2).reshape(len(X), -1))
        else:
            for i in range(n):
                cols.append(keep[:, i : i + 1])
                m_hot = (mi[:, i : i + 1] == np.arange(len(self.space.mlp_choices[i]))[None, :]) * keep[
                    :, i : i + 1
                ]
                k_hot = (ki[:, i : i + 1] == np.arange(len(self.space.kv_choices[i]))[None, :]) * keep[
                    :, i : i + 1
                ]
                cols += [m_hot, k_hot]
        counts = self.counts(X)
        depth = keep.sum(axis=1)
        derived = [
            depth / n,
            _frac(counts["params"], self.ranges["params"]),
            _frac(counts["macs"], self.ranges["macs"]),
            mlp.sum(axis=1) / np.maximum(depth, 1),
            kv.sum(axis=1) / np.maximum(depth, 1),
            ((kv > 0) * keep).sum(axis=1) / n,
            ((mlp > 0) * keep).sum(axis=1) / n,
            _frac(counts["kv_bytes"], self.ranges["kv_bytes"]),
        ]
        cols.append(np.stack(derived, axis=1))
        if self.bits_frac is not None:
            bits = self.bits_frac[layer, self.counts.bits(X)] * keep
            bytes_frac = _frac(counts["bytes"], self.ranges["bytes"])
            cols += [bits, np.stack([bytes_frac, bits.sum(axis=1) / np.maximum(depth, 1)], axis=1)]
        if self.space.hidden_choices:
            widths = np.array(self.counts.hidden) / self.space.arch.hidden_size
            cols.append(widths[self.counts.hidden_index(X)][:, None])
        return np.concatenate(cols, axis=1).astype(float)


def _frac(v: np.ndarray, rng: tuple[float, float]) -> np.ndarray:
    lo, hi = rng
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


# ------------------------------------------------------------------------------------------------------
# Regressors
# ------------------------------------------------------------------------------------------------------


def _ridge(seed: int):
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))


def _svr(seed: int):
    # Targets are standardised before fitting, so C and epsilon are in units of the target's std.
    return make_pipeline(StandardScaler(), SVR(kernel="rbf", C=10.0, epsilon=0.02, gamma="scale"))


def _gbr(seed: int):
    return GradientBoostingRegressor(
        n_estimators=100, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=seed
    )


MODELS = {"ridge": _ridge, "svr": _svr, "gbr": _gbr}
KINDS = ("auto", "ensemble", *MODELS)
MIN_CV = 6  # fewer samples than this: no cross-validation, ridge only


@dataclass
class CVScore:
    """Out-of-fold quality of one candidate (targets in their own units)."""

    mse: float
    tau: float


class Predictor:
    """One regressor for one value, chosen among ridge/SVR/gradient boosting/their ensemble by K-fold CV.

    ``kind``: ``auto`` (lowest out-of-fold MSE among the three and the ensemble), ``ensemble`` (average
    weighted by 1/out-of-fold MSE), or one of ``ridge``, ``svr``, ``gbr``.
    """

    def __init__(self, kind: str = "auto", folds: int = 5, seed: int = 0):
        if kind not in KINDS:
            raise unknown("predictor", kind, KINDS)
        if folds < 2:
            raise LlamanasError(f"Cross-validation needs at least 2 folds; got {folds}.")
        self.kind, self.folds, self.seed = kind, folds, seed
        self.chosen: str | None = None
        self.cv: dict[str, CVScore] = {}
        self.models: dict[str, object] = {}
        self.weights: dict[str, float] = {}
        self.n_train = 0

    def fit(self, F: np.ndarray, y: np.ndarray) -> Predictor:
        F, y = np.asarray(F, dtype=float), np.asarray(y, dtype=float)
        if len(F) != len(y) or len(y) == 0:
            raise LlamanasError(
                f"Predictor needs as many targets as rows (got {len(F)} rows, {len(y)} targets)."
            )
        if not np.all(np.isfinite(y)):
            raise LlamanasError(
                "Predictor targets contain NaN or inf; every evaluation must give a finite value."
            )
        self.n_train = len(y)
        self.mu = float(y.mean())
        sd = float(y.std())
        self.sd = sd if sd > 0 else 1.0
        z = (y - self.mu) / self.sd
        self.cv = {}
        if len(y) < MIN_CV or sd == 0:
            names = ["ridge"] if self.kind in ("auto", "ensemble") else [self.kind]
            self.chosen = names[0]
        else:
            names = list(MODELS) if self.kind in ("auto", "ensemble") else [self.kind]
            oof = {name: self._oof(name, F, z) for name in names}
            for name, p in oof.items():
                self.cv[name] = _score(y, p * self.sd + self.mu)
            if len(names) > 1:
                w = {name: 1.0 / max(self.cv[name].mse, 1e-12) for name in names}
                total = sum(w.values())
                self.weights = {k: v / total for k, v in w.items()}
                ens = sum(self.weights[k] * oof[k] for k in names)
                self.cv["ensemble"] = _score(y, ens * self.sd + self.mu)
            if self.kind == "auto":
                self.chosen = min(self.cv, key=lambda k: (self.cv[k].mse, k))
            else:
                self.chosen = self.kind
        used = names if self.chosen == "ensemble" else [self.chosen]
        self.models = {name: MODELS[name](self.seed).fit(F, z) for name in used}
        return self

    def _oof(self, name: str, F: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros_like(z)
        folds = KFold(n_splits=min(self.folds, len(z)), shuffle=True, random_state=self.seed)
        for train, test in folds.split(F):
            out[test] = MODELS[name](self.seed).fit(F[train], z[train]).predict(F[test])
        return out

    def predict(self, F: np.ndarray) -> np.ndarray:
        if not self.models:
            raise LlamanasError("Predictor.predict called before fit.")
        F = np.atleast_2d(np.asarray(F, dtype=float))
        if self.chosen == "ensemble":
            z = sum(self.weights[k] * m.predict(F) for k, m in self.models.items())
        else:
            z = self.models[self.chosen].predict(F)
        return np.asarray(z) * self.sd + self.mu

    def summary(self) -> dict:
        """What was chosen and its out-of-fold quality (NaN where no CV was possible)."""
        cv = self.cv.get(self.chosen)
        return {
            "model": self.chosen,
            "n_train": self.n_train,
            "cv_mse": cv.mse if cv else math.nan,
            "cv_tau": cv.tau if cv else math.nan,
        }


def _score(y: np.ndarray, p: np.ndarray) -> CVScore:
    return CVScore(mse=float(np.mean((p - y) ** 2)), tau=kendall_tau(y, p))


def kendall_tau(a, b) -> float:
    """Kendall's tau-b between true and predicted values (NaN if either is constant or n < 2)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(kendalltau(a, b).statistic)


def mape(true, pred) -> float:
    """Mean absolute percentage error (as a fraction), over the non-zero true values."""
    true, pred = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    ok = true != 0
    if not ok.any():
        return math.nan
    return float(np.mean(np.abs(pred[ok] - true[ok]) / np.abs(true[ok])))
