"""Objectives registry, constraints, exact vectorised counts, Pareto fronts and hypervolume."""

import math

import numpy as np
import pytest
from conftest import tiny_arch

from llamanas.errors import LlamanasError
from llamanas.evaluation.metrics import METRICS
from llamanas.model.arch import Arch
from llamanas.search import objectives as obj
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

ARCH = tiny_arch(6)
UNTIED = Arch(**{**ARCH.__dict__, "tie_word_embeddings": False, "attention_bias": True})
SPACES = {
    "per_layer": SearchSpace.from_arch(ARCH),
    "always_keep": SearchSpace.from_arch(UNTIED, always_keep=(0, 5), min_depth=4),
    "first_n": SearchSpace.from_arch(ARCH, mode="first_n"),
}


def test_registry_directions_and_keys():
    acc = obj.get("accuracy", ["arc_easy", "piqa"])
    assert (acc.direction, acc.keys, acc.sign) == ("max", ("acc:arc_easy", "acc:piqa"), -1.0)
    assert acc.value({"acc:arc_easy": 0.5, "acc:piqa": 0.7}) == pytest.approx(0.6)
    nll = obj.get("gold_nll", ["arc_easy"])
    assert (nll.direction, nll.keys, nll.sign) == ("min", ("gold_nll:arc_easy",), 1.0)
    per_task = obj.get("acc_norm:piqa", ["arc_easy", "piqa"])
    assert (per_task.direction, per_task.keys) == ("max", ("acc_norm:piqa",))
    assert obj.get("params").analytic and not obj.get("latency").analytic
    assert obj.get("throughput").direction == "max" and obj.get("latency").direction == "min"
    names = [o.name for o in obj.resolve(["params", "accuracy"], ["arc_easy"])]
    assert names == ["params", "accuracy"]  # the user's order is kept


def test_task_objectives_take_their_metric_facts():
    """Direction, unit and range of a task objective are its metric's (``evaluation.tasks.METRICS``)."""
    for name, kind in obj.KINDS.items():
        if kind.source != obj.TASK:
            continue
        m = METRICS[kind.metric]
        for o in (obj.get(name, ["arc_easy"]), obj.get(f"{kind.metric}:arc_easy", ["arc_easy"])):
            assert o.direction == (obj.MAX if m.higher_is_better else obj.MIN) and o.unit == m.unit
            assert obj.value_range(o, None) == m.range
    assert obj.value_range(obj.get("accuracy", ["t"]), None) == (0.0, 1.0)
    assert obj.value_range(obj.get("gold_nll", ["t"]), None) == (0.0, math.inf)


@pytest.mark.parametrize(
    "names, tasks, message",
    [
        (["acuracy"], ["arc_easy"], "Unknown objective 'acuracy'. Did you mean 'accuracy'"),
        (["accuracy"], [], "needs at least one task"),
        (["acc:piqa"], ["arc_easy"], "names task 'piqa', which is not in --tasks (arc_easy)"),
        (["params", "params"], [], "listed more than once"),
        ([], [], "at least one objective"),
    ],
)
def test_bad_objectives(names, tasks, message):
    with pytest.raises(LlamanasError) as e:
        obj.resolve(names, tasks)
    assert message in str(e.value)


def test_unknown_objective_lists_allowed():
    with pytest.raises(LlamanasError) as e:
        obj.get("speed", ["arc_easy"])
    text = str(e.value)
    for allowed in ("accuracy", "gold_nll", "params", "latency", "throughput", "acc:arc_easy"):
        assert allowed in text


@pytest.mark.parametrize(
    "text, name, op, bound",
    [
        ("params<=100M", "params", "<=", 1e8),
        ("params <= 1.5B", "params", "<=", 1.5e9),
        ("macs<2e3K", "macs", "<", 2e6),
        ("accuracy>=40%", "accuracy", ">=", 0.4),
        ("latency>12.5", "latency", ">", 12.5),
        ("bytes<=300k", "bytes", "<=", 3e5),
    ],
)
def test_parse_constraint(text, name, op, bound):
    c = obj.parse_constraint(text, ["arc_easy"])
    assert (c.objective.name, c.op) == (name, op)
    assert c.bound == pytest.approx(bound)


def test_constraint_violation_sign():
    c = obj.parse_constraint("params<=100", [])
    assert c.violation(90) == -10 and c.violation(110) == 10
    assert c.satisfied(100) and not c.satisfied(101)
    c = obj.parse_constraint("accuracy>0.5", ["t"])
    assert c.violation(0.7) == pytest.approx(-0.2) and not c.satisfied(0.5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("params=100M", "Cannot parse constraint 'params=100M'"),
        ("params<=100X", "unknown unit 'X'"),
        ("size<=100M", "Unknown objective 'size'"),
    ],
)
def test_bad_constraints(text, message):
    with pytest.raises(LlamanasError) as e:
        obj.parse_constraint(text, ["arc_easy"])
    assert message in str(e.value)


def test_impossible_constraints():
    space = SPACES["per_layer"]
    counts = obj.Counts(space)
    lo, hi = counts.range("params")
    ok = [obj.parse_constraint(f"params<={lo}", []), obj.parse_constraint(f"params>={hi}", [])]
    obj.check_feasible(ok, counts)  # the extremes themselves are reachable
    for text in (f"params<={lo - 1}", f"params<{lo}", f"params>{hi}", "accuracy>=1.5", "accuracy<0"):
        c = obj.parse_constraint(text, ["arc_easy"])
        with pytest.raises(LlamanasError) as e:
            obj.check_feasible([c], counts)
        assert f"Constraint {text!r} cannot be met" in str(e.value)
    with pytest.raises(LlamanasError, match=f"ranges from {lo:,.0f} to {hi:,.0f}"):
        obj.check_feasible([obj.parse_constraint(f"params<={lo - 1}", [])], counts)


@pytest.mark.parametrize("name", list(SPACES))
def test_counts_match_config_arithmetic(name):
    space = SPACES[name]
    counts = obj.Counts(space, dtype_bytes=2, seq_len=64)
    rng = np.random.default_rng(0)
    cfgs = [space.sample(rng) for _ in range(50)] + [space.smallest(), space.largest()]
    X = np.array([space.encode(c) for c in cfgs])
    got = counts(X)
    for i, cfg in enumerate(cfgs):
        exact = counts.of(cfg)
        assert got["params"][i] == exact["params"] == cfg.num_params(space.arch)
        assert got["bytes"][i] == exact["bytes"] == 2 * cfg.num_params(space.arch)
        assert got["macs"][i] == exact["macs"] == cfg.macs_per_token(space.arch, 64)
    lo, hi = counts.range("params")
    assert (lo, hi) == (space.smallest().num_params(space.arch), space.largest().num_params(space.arch))
    assert counts.range("bytes") == (2 * lo, 2 * hi)
    assert counts.range("macs")[0] <= got["macs"].min() and got["macs"].max() <= counts.range("macs")[1]


def test_keep_mask():
    space = SPACES["first_n"]
    counts = obj.Counts(space)
    cfg = SubnetConfig(tuple(range(4)), (64,) * 4, (1,) * 4)
    assert counts.keep(space.encode(cfg)[None]).tolist() == [[True] * 4 + [False] * 2]


def test_bounds_and_normalise():
    counts = obj.Counts(SPACES["per_layer"])
    lo, hi = counts.range("params")
    assert obj.bounds(obj.get("accuracy", ["t"]), counts) == (1.0, 0.0)
    assert obj.bounds(obj.get("params"), counts) == (lo, hi)
    nll = obj.get("gold_nll", ["a", "b"])
    assert obj.bounds(nll, counts, {"gold_nll:a": (0, 10), "gold_nll:b": (0, 20)}) == (0.0, 15.0)
    assert obj.bounds(obj.get("throughput"), counts, {"throughput": (0, 50)}) == (50.0, 0.0)
    with pytest.raises(LlamanasError, match="no reference range for \\['gold_nll:b'\\]"):
        obj.bounds(nll, counts, {"gold_nll:a": (0, 10)})
    Fn = obj.normalise([[0.75, lo], [0.25, hi]], [(1.0, 0.0), (lo, hi)])
    np.testing.assert_allclose(Fn, [[0.25, 0.0], [0.75, 1.0]])


def test_pareto_mask_and_hypervolume():
    F = np.array([[0.2, 0.8], [0.5, 0.5], [0.6, 0.6], [0.2, 0.8], [0.9, 0.1]])
    assert obj.pareto_mask(F).tolist() == [True, True, False, False, True]
    # Rectangles to (1, 1): 0.8*0.2 + 0.5*0.3 + 0.1*0.4
    assert obj.hypervolume(F[obj.pareto_mask(F)]) == pytest.approx(0.16 + 0.15 + 0.04)
    assert obj.hypervolume(np.array([[1.0, 0.0], [1.2, -1.0]])) == 0.0  # at or beyond the reference
    assert obj.hypervolume(np.zeros((0, 2))) == 0.0
    assert obj.hypervolume(np.array([[0.5, 0.5, 0.5]])) == pytest.approx(0.125)
    assert math.isclose(obj.hypervolume(np.array([[0.0, 0.0]])), 1.0)


def test_counts_bytes_follow_the_precision_genes():
    from llamanas.supernet.precision import policy_bytes

    for arch in (ARCH, UNTIED):
        space = SearchSpace.from_dict({"bits": [4, 8, 16], "kv_groups": [1, 2]}, arch)
        counts = obj.Counts(space, dtype_bytes=4)
        rng = np.random.default_rng(1)
        cfgs = [space.sample(rng) for _ in range(40)] + [space.smallest(), space.largest()]
        X = np.array([space.encode(c) for c in cfgs])
        got = counts(X)
        for i, cfg in enumerate(cfgs):
            assert got["bytes"][i] == counts.of(cfg)["bytes"] == policy_bytes(arch, cfg)
            assert got["params"][i] == cfg.num_params(arch)
        lo, hi = counts.range("bytes")
        assert (lo, hi) == (policy_bytes(arch, space.smallest()), policy_bytes(arch, space.largest()))
        # All-16-bit bytes are 2 per parameter; 8 bits roughly halves the decoder's share.
        full = space.largest()
        assert hi == 2 * full.num_params(arch)
        int8 = SubnetConfig(full.layers, full.mlp, full.kv_groups, (8,) * full.depth)
        assert counts.of(int8)["bytes"] < hi
