"""The cheap proxy (KL from the full network on calibration windows) and LINAS's proxy screen."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from test_search import SPACE, SyntheticEvaluator, SyntheticSpec, args_for, synthetic_accuracy

from llamanas.errors import LlamanasError
from llamanas.evaluation.proxy import KLProxy
from llamanas.model.arch import Arch
from llamanas.model.load import load_config
from llamanas.search.run import search
from llamanas.search.store import Store
from llamanas.search.workers import EvalSettings, Outcome, SupernetSpec
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig


def _batches(n=2, seq=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 128, (3, seq), generator=g) for _ in range(n)]


def test_proxy_is_the_kl_from_the_full_network_and_the_loss_on_the_windows():
    sn = SuperNet(tiny_model("llama", layers=3))
    batches = _batches()
    proxy = KLProxy(sn, batches)
    full = proxy(SubnetConfig.full(sn.arch))
    assert full["kl"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        ref = [F.log_softmax(sn.model(input_ids=b).logits[:, :-1].float(), -1) for b in batches]
        loss = sum(float(sn.model(input_ids=b, labels=b).loss) for b in batches) / len(batches)
    assert full["calib_nll"] == pytest.approx(loss, rel=1e-5)
    cfg = SubnetConfig((0, 2), (48, 24), (1, 2))
    got = proxy(cfg)
    with sn.subnet(cfg) as model, torch.no_grad():
        sub = [F.log_softmax(model(input_ids=b).logits[:, :-1].float(), -1) for b in batches]
    # KL(full || sub) per predicted token, as torch computes it
    kl = sum(F.kl_div(s, r, log_target=True, reduction="sum") for s, r in zip(sub, ref, strict=True))
    tokens = sum(r.shape[0] * r.shape[1] for r in ref)
    assert got["kl"] == pytest.approx(float(kl) / tokens, rel=1e-4) and got["kl"] > 0.01
    assert sn.active == SubnetConfig.full(sn.arch)  # left as it was
    with pytest.raises(LlamanasError, match="windows must be >= 1; got 0"):
        KLProxy.from_text(sn, None, 0)


def test_the_evaluator_records_the_proxy_only_when_asked_and_keys_the_store_by_it(tiny_dir, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(f"w{(7 * i) % 126}" for i in range(2000)))
    space = SearchSpace.from_arch(Arch.from_hf(load_config(str(tiny_dir))))
    cfg = space.smallest()
    plain = SupernetSpec(str(tiny_dir), space.to_dict(), EvalSettings(), order=False).build()
    assert "kl" not in plain.evaluate(cfg).values
    with pytest.raises(LlamanasError, match="no proxy"):
        plain.proxy(cfg)
    settings = EvalSettings(proxy_windows=2)
    ev = SupernetSpec(str(tiny_dir), space.to_dict(), settings, order=False, calibration=str(calib)).build()
    values = ev.evaluate(cfg).values
    assert values["kl"] > 0 and values["kl"] == ev.proxy(cfg)["kl"]
    assert ev.proxy(space.largest())["kl"] == pytest.approx(0.0, abs=1e-6)
    # proxy_windows 0 keeps the keys of stores made before the proxy; windows change the key
    assert EvalSettings().hash() == EvalSettings(proxy_windows=0).hash()
    assert settings.hash() != EvalSettings().hash() != EvalSettings(proxy_windows=4).hash()


class ProxyEvaluator(SyntheticEvaluator):
    """A synthetic evaluator whose proxy knows the accuracy exactly (kl = 1 - acc)."""

    def evaluate(self, cfg) -> Outcome:
        out = super().evaluate(cfg)
        out.values.update(self.proxy(cfg))
        return out

    def proxy(self, cfg):
        self.spec.proxied.append(cfg.key())
        return {"kl": 1.0 - synthetic_accuracy(cfg), "calib_nll": 2.0}


@dataclass
class ProxySpec(SyntheticSpec):
    proxied: list = None

    def build(self, device=None):
        return ProxyEvaluator(self)


def _run(tmp_path, name, **kw):
    spec = ProxySpec(proxied=[])
    args = args_for(tmp_path, name=name, evaluations=30, population=6, proxy_windows=4, **kw)
    result = search(args, spec, SPACE)
    with Store(args.store_path) as store:
        quality = [r for r in store.quality(1) if r["objective"] == "accuracy"]
    return spec, args, result, quality


def test_linas_screen_ranks_candidates_with_the_proxy_and_resumes_without_it(tmp_path):
    spec, args, result, quality = _run(tmp_path, "screen", screen=3)
    # four LINAS loops, each screening 3 x 6 candidates; every real evaluation records the proxy too
    assert len(spec.proxied) == 30 + 4 * 18
    plain, _, plain_result, plain_quality = _run(tmp_path, "plain")
    assert len(plain.proxied) == 30  # recorded with the evaluations, never screened
    # With a proxy that knows the accuracy, the screened predictors miss new evaluations by less and the
    # front is better for the same budget of real evaluations.
    mean_mape = lambda rows: sum(r["mape"] for r in rows) / len(rows)  # noqa: E731
    assert len(quality) == len(plain_quality) == 4
    assert mean_mape(quality) < 0.8 * mean_mape(plain_quality)
    assert result.hypervolume[-1][1] > plain_result.hypervolume[-1][1]
    # a resumed run replays its batches from the store: no proxy call, no evaluation
    again = ProxySpec(proxied=[])
    assert search(args, again, SPACE).computed == 0 and again.proxied == []


def test_screen_settings_are_checked_before_loading(tmp_path):
    with pytest.raises(LlamanasError, match="--screen 3 ranks candidates by the proxy: set --proxy-windows"):
        args_for(tmp_path, screen=3).check()
    with pytest.raises(LlamanasError, match="--screen is a LINAS option; --algorithm is 'nsga2'"):
        args_for(tmp_path, algorithm="nsga2", screen=3, proxy_windows=4).check()
    with pytest.raises(LlamanasError, match="--proxy-windows must be >= 0; got -1"):
        args_for(tmp_path, proxy_windows=-1).check()
    plain = args_for(tmp_path)
    assert "screen" not in plain.trajectory_dict() and "proxy_windows" not in plain.trajectory_dict()
    assert args_for(tmp_path, screen=2, proxy_windows=4).trajectory_dict()["screen"] == 2
