"""Multi-fidelity LINAS (--halving): candidates scored on the first questions, the best promoted to all of
them; the low rung is stored, counted in questions, replayed on resume, and the settings are checked."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import pytest
from conftest import arc_available
from test_search import SPACE, SyntheticEvaluator, SyntheticSpec, args_for, synthetic_accuracy
from test_workers import tiny_llama

from llamanas.errors import LlamanasError
from llamanas.search.run import search
from llamanas.search.store import Store
from llamanas.search.workers import EvalSettings, Outcome, SupernetSpec
from llamanas.supernet.elastic import SuperNet
from llamanas.supernet.space import SearchSpace

FULL, LOW = 30, 10  # questions per evaluation on the full subset and on the low rung (--halving 3)


def low_accuracy(cfg) -> float:
    """What the first questions say: the accuracy, lower (other questions), with a little noise."""
    noise = (zlib.crc32(cfg.key().encode()) % 1000) / 1000 - 0.5
    return synthetic_accuracy(cfg) - 0.1 + 0.01 * noise


class RungEvaluator(SyntheticEvaluator):
    def evaluate(self, cfg, limit=None) -> Outcome:
        if limit is None:
            out = super().evaluate(cfg)
            return Outcome(out.values, "validation", FULL)
        if self.spec.fail_after is not None and self.calls >= self.spec.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.spec.rungs.append((cfg.key(), limit))
        acc = low_accuracy(cfg)
        return Outcome(
            {"acc:syn": acc, "gold_nll:syn": 5.0 * (1.0 - acc), "n:syn": limit}, "validation", limit
        )


@dataclass
class RungSpec(SyntheticSpec):
    rungs: list = None

    def build(self, device=None):
        return RungEvaluator(self)


def _search(tmp_path, name, **kw):
    spec = RungSpec(log=[], rungs=[], fail_after=kw.pop("fail_after", None))
    args = args_for(tmp_path, name=name, limit=FULL, **kw)
    return spec, args, search(args, spec, SPACE)


def test_halving_scores_candidates_on_the_low_rung_and_promotes_the_best(tmp_path):
    spec, args, r = _search(tmp_path, "halving", halving=3)
    # 30 evaluations: the first population of 6, then 4 loops; each loop scores 3 x 6 candidates on
    # the first 10 questions and evaluates 6 of them on all 30.
    assert r.evaluations == len(spec.log) == 30
    # (a candidate proposed again in a later loop is read back from the store, not scored again)
    scored = [k for k, _ in spec.rungs]
    assert {limit for _, limit in spec.rungs} == {LOW} and len(scored) == len(set(scored))
    assert 3 * 18 < len(scored) <= 4 * 18
    promoted = set(spec.log[6:])
    assert promoted <= set(scored)  # every later evaluation was promoted from a rung
    assert r.questions[-1] == 30 * FULL + len(scored) * LOW  # the cost counts the low rungs, once each
    assert r.questions[5] == 6 * FULL and r.questions[6] == 6 * FULL + 18 * LOW + FULL
    with Store(args.store_path) as store:
        low_hash = EvalSettings(tasks=("syn",), limit=LOW).hash()
        assert len(store.get_many("synthetic", low_hash, scored)) == len(scored)
    # With a low rung that ranks well, the front at the same number of full evaluations beats plain LINAS's.
    _, _, plain = _search(tmp_path, "plain")
    assert r.hypervolume[-1][1] > plain.hypervolume[-1][1]
    assert plain.questions[-1] == 30 * FULL


def test_halving_resumes_without_scoring_a_rung_again(tmp_path):
    spec = RungSpec(log=[], rungs=[], fail_after=40)  # dies inside loop 2's rung
    args = args_for(tmp_path, name="crashed", limit=FULL, halving=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        search(args, spec, SPACE)
    done = list(spec.rungs)
    assert 18 < len(done) < 36
    again = RungSpec(log=[], rungs=[])
    r = search(args, again, SPACE)
    assert not {k for k, _ in again.rungs} & {k for k, _ in done}  # nothing scored twice
    _, _, ref = _search(tmp_path, "clean", halving=3)
    assert [m.id for m in r.front] == [m.id for m in ref.front]
    assert r.questions == ref.questions and r.hypervolume == ref.hypervolume


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(halving=3, algorithm="nsga2"), "--halving is a LINAS option; --algorithm is 'nsga2'"),
        (dict(halving=1), "--halving must be 0 (off) or >= 2; got 1"),
        (dict(halving=-2), "--halving must be >= 0; got -2"),
        (dict(halving=40), "set --limit to at least 40 (got 30)"),
    ],
)
def test_halving_settings_are_checked_before_loading(tmp_path, kw, message):
    spec = RungSpec(log=[], rungs=[])
    with pytest.raises(LlamanasError) as e:
        search(args_for(tmp_path, limit=FULL, **kw), spec, SPACE)
    assert message in str(e.value) and spec.log == []
    with pytest.raises(LlamanasError, match="set --limit to at least 3 \\(got None\\)"):
        search(args_for(tmp_path, halving=3), spec, SPACE)
    # off by default, and absent from the run's key: runs made before the option resume unchanged
    assert "halving" not in args_for(tmp_path).trajectory_dict()


@pytest.mark.skipif(not arc_available(), reason="ARC-Easy data not available offline")
def test_the_supernet_evaluator_scores_a_rung_on_the_first_questions(tiny_dir):
    space = SearchSpace.from_arch(SuperNet(tiny_llama()).arch)
    ev = SupernetSpec(
        str(tiny_dir), space.to_dict(), EvalSettings(tasks=("arc_easy",), limit=6), order=False
    ).build()
    cfg = space.smallest()
    full, low = ev.evaluate(cfg), ev.evaluate(cfg, limit=2)
    assert full.n_items == 6 and low.n_items == 2 and low.values["n:arc_easy"] == 2
    # the rung's questions are the first two of the full subset: the same as a search with --limit 2
    alone = SupernetSpec(
        str(tiny_dir), space.to_dict(), EvalSettings(tasks=("arc_easy",), limit=2), order=False
    )
    assert low.values["gold_nll:arc_easy"] == pytest.approx(
        alone.build().evaluate(cfg).values["gold_nll:arc_easy"]
    )
    assert low.values["gold_nll:arc_easy"] != pytest.approx(full.values["gold_nll:arc_easy"])
