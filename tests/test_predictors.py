"""Config encoding and the scikit-learn predictors (fit quality, cross-validated choice)."""

import math

import numpy as np
import pytest
from conftest import tiny_arch

from llamanas.errors import LlamanasError
from llamanas.search.predictors import Encoder, Predictor, kendall_tau, mape
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

ARCH = tiny_arch(4)
SPACE = SearchSpace.from_arch(ARCH, min_depth=2)  # mlp 64/128/192/256, kv 1/2


def test_ordinal_features_by_hand():
    enc = Encoder(SPACE)
    cfg = SubnetConfig((0, 2), (64, 256), (1, 2))
    f = enc(SPACE.encode(cfg)[None])[0]
    assert len(f) == len(enc.names) == 3 * 4 + 8
    assert enc.names[:3] == ("keep.0", "mlp_frac.0", "kv_frac.0")
    per_layer = f[:12].reshape(4, 3)
    np.testing.assert_allclose(per_layer, [[1, 0.25, 0.5], [0, 0, 0], [1, 1.0, 1.0], [0, 0, 0]])
    lo, hi = SPACE.smallest().num_params(ARCH), SPACE.largest().num_params(ARCH)
    depth, params, _, mean_mlp, mean_kv, attn, mlp_blocks, _ = f[12:]
    assert depth == 0.5 and attn == 0.5 and mlp_blocks == 0.5
    assert params == pytest.approx((cfg.num_params(ARCH) - lo) / (hi - lo))
    assert (mean_mlp, mean_kv) == (pytest.approx(0.625), pytest.approx(0.75))


def test_features_describe_the_decoded_config():
    enc = Encoder(SPACE)
    x = SPACE.encode(SubnetConfig((0, 2), (64, 256), (1, 2)))
    y = x.copy()
    y[4 + 1], y[8 + 3] = 0, 0  # genes of skipped layers 1 and 3 change, the sub-network does not
    assert SPACE.decode(x) == SPACE.decode(y)
    np.testing.assert_array_equal(enc(x[None]), enc(y[None]))


def test_onehot_features():
    enc = Encoder(SPACE, kind="onehot")
    cfg = SubnetConfig((0, 1, 3), (64, 128, 256), (1, 2, 2))
    f = dict(zip(enc.names, enc(SPACE.encode(cfg)[None])[0], strict=True))
    assert f["keep.0"] == 1 and f["mlp.0=64"] == 1 and f["mlp.0=128"] == 0 and f["kv.0=1"] == 1
    assert f["keep.2"] == 0 and sum(v for k, v in f.items() if k.startswith(("mlp.2", "kv.2"))) == 0
    assert f["mlp.3=256"] == 1 and f["kv.3=2"] == 1 and f["depth_frac"] == 0.75
    with pytest.raises(LlamanasError, match="Unknown encoding 'binary'"):
        Encoder(SPACE, kind="binary")


def _data(n, fn, seed=0):
    rng = np.random.default_rng(seed)
    enc = Encoder(SPACE)
    X = np.array([SPACE.encode(SPACE.sample(rng)) for _ in range(n)])
    F = enc(X)
    return F, fn(F)


def linear(F):
    return 0.3 + 0.4 * F[:, -4] + 0.1 * F[:, -2]  # params fraction and mean MLP width


def step(F):
    return np.where(F[:, -5] > 0.6, 1.0, 0.0) + 0.3 * (F[:, -2] > 0.5)  # depth threshold: not linear


def test_predictor_fits_linear_target():
    F, y = _data(120, linear)
    Ft, yt = _data(60, linear, seed=1)
    p = Predictor("auto").fit(F, y)
    pred = p.predict(Ft)
    assert kendall_tau(yt, pred) > 0.9 and mape(yt, pred) < 0.05
    assert p.chosen == min(p.cv, key=lambda k: (p.cv[k].mse, k))
    assert set(p.cv) == {"ridge", "svr", "gbr", "ensemble"}
    assert p.summary()["model"] == p.chosen and p.summary()["n_train"] == 120


def test_cv_prefers_nonlinear_models_for_steps():
    F, y = _data(120, step)
    p = Predictor("auto").fit(F, y)
    assert p.chosen != "ridge"
    assert p.cv["gbr"].mse < p.cv["ridge"].mse
    Ft, yt = _data(60, step, seed=1)
    assert kendall_tau(yt, p.predict(Ft)) > 0.7


@pytest.mark.parametrize("kind", ["ridge", "svr", "gbr", "ensemble"])
def test_each_kind(kind):
    F, y = _data(40, linear)
    p = Predictor(kind).fit(F, y)
    assert p.chosen == kind
    assert kendall_tau(y, p.predict(F)) > 0.8
    assert p.predict(F).shape == (40,)


def test_small_and_constant_samples():
    F, y = _data(4, linear)
    p = Predictor("auto").fit(F, y)
    assert p.chosen == "ridge" and p.cv == {} and math.isnan(p.summary()["cv_mse"])
    p = Predictor("auto").fit(F, np.full(4, 0.25))
    np.testing.assert_allclose(p.predict(F), 0.25)


def test_predictor_errors():
    with pytest.raises(
        LlamanasError, match="Unknown predictor 'xgb'.*Available: auto, ensemble, ridge, svr, gbr"
    ):
        Predictor("xgb")
    with pytest.raises(LlamanasError, match="NaN"):
        Predictor().fit(np.zeros((3, 2)), [1.0, float("nan"), 2.0])
    with pytest.raises(LlamanasError, match="before fit"):
        Predictor().predict(np.zeros((1, 2)))


def test_tau_and_mape():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert mape([1.0, 2.0, 0.0], [1.1, 1.8, 5.0]) == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["ordinal", "onehot"])
def test_precision_genes_become_features(kind):
    space = SearchSpace.from_dict({"min_depth": 2, "bits": [4, 8, 16]}, ARCH)
    enc = Encoder(space, kind)
    cfg = SubnetConfig((0, 2), (256, 64), (2, 1), (4, 16))
    f = dict(zip(enc.names, enc(space.encode(cfg))[0], strict=True))
    assert f["bits_frac.0"] == 0.25 and f["bits_frac.1"] == 0.0 and f["bits_frac.2"] == 1.0
    assert f["mean_bits_frac"] == pytest.approx((0.25 + 1.0) / 2)
    lo, hi = enc.ranges["bytes"]
    assert 0.0 < f["bytes_frac"] < 1.0 and hi > lo
    same_arch = SubnetConfig(cfg.layers, cfg.mlp, cfg.kv_groups, (16, 16))
    g = dict(zip(enc.names, enc(space.encode(same_arch))[0], strict=True))
    assert g["params_frac"] == f["params_frac"] and g["bytes_frac"] > f["bytes_frac"]
