"""The pick rule of ``compress``: the largest candidate within a tolerance of the most accurate one."""

import numpy as np
import pytest

from llamanas.pipeline.pick import Scored, choose, paired_gap


def scored(params: int, correct: list[int], task: str = "arc_easy") -> Scored:
    return Scored(params, {task: np.asarray(correct)})


def test_paired_gap_is_the_mean_difference_and_its_paired_stderr():
    a = scored(1, [1, 1, 0, 0, 1, 0, 1, 0])
    b = scored(2, [1, 0, 0, 0, 1, 0, 0, 0])
    gap, se = paired_gap(a, b)
    d = np.array([0, -1, 0, 0, 0, 0, -1, 0])
    assert gap == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / np.sqrt(8))
    # two tasks count equally, whatever their number of questions
    two_a = Scored(1, {"x": np.array([1, 1, 1, 1]), "y": np.array([0, 0])})
    two_b = Scored(1, {"x": np.array([0, 1, 1, 1]), "y": np.array([0, 1])})
    assert paired_gap(two_a, two_b)[0] == pytest.approx((-0.25 + 0.5) / 2)
    assert two_b.accuracy == pytest.approx((0.75 + 0.5) / 2)
    with pytest.raises(ValueError, match="different tasks"):
        paired_gap(a, two_a)


def test_the_largest_close_candidate_is_picked():
    rng = np.random.default_rng(0)
    best = rng.random(400) < 0.49
    # four answers lost and two gained in 400: half a point behind, within one paired standard error
    near = best.copy()
    near[np.flatnonzero(best)[:4]] = False
    near[np.flatnonzero(~best)[:2]] = True
    far = np.zeros(400, dtype=bool)  # clearly worse
    cands = {1: scored(100, best), 2: scored(120, near), 3: scored(130, far)}
    assert choose(cands, 0.0) == 1  # the most accurate
    gap, se = paired_gap(cands[1], cands[2])
    assert gap == pytest.approx(-0.005) and -1 < gap / se < 0
    assert choose(cands, 2.0) == 2 and choose(cands, 1.0) == 2  # the larger one is kept; the 0% one is not
    assert choose(cands, 0.5) == 1
    assert choose(cands, 1000.0) == 3  # everything is "close"
    # ties on accuracy: the larger one, whatever the tolerance
    assert choose({1: scored(100, best), 2: scored(110, best)}, 0.0) == 2
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        choose(cands, -1)
    with pytest.raises(ValueError, match="No candidates"):
        choose({}, 1.0)
