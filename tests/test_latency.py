"""The llama.cpp latency table: fit on synthetic additive timings, its error report, its JSON file, its use
as the latency/throughput objectives of a search (``--runtime llamacpp``), bad input, and the deploy side
(table builder and timing of the front) on a tiny GGUF-exportable model. No test asserts a measured time."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_arch
from test_search import SyntheticSpec, args_for

from llamanas.errors import LlamanasError
from llamanas.search import latency as latency_module
from llamanas.search import objectives as objmod
from llamanas.search.args import SearchArgs
from llamanas.search.counts import Counts
from llamanas.search.files import RunFiles
from llamanas.search.latency import (
    LatencyTable,
    Timed,
    calibration_configs,
    fit_latency_table,
    layer_cells,
    space_cells,
)
from llamanas.search.run import load_run, search
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

ARCH = tiny_arch(8)
SPACE = SearchSpace.from_arch(
    ARCH, skip_attention=False, skip_mlp=False
)  # 8 layers, depth >= 4, MLP 64..256, KV 1..2


def true_costs(space: SearchSpace, seed: int = 0) -> dict[str, dict[str, float]]:
    """Additive ground truth: per target a fixed cost and a cost per cell, growing with width."""
    rng = np.random.default_rng(seed)
    out = {}
    for t, scale in (("prefill_ms", 10.0), ("decode_ms", 1.0)):
        costs = {"fixed": scale * (2 + rng.random())}
        for c in space_cells(space):
            kind, width = c.split("@")[0].split(":")
            bits = int(c.split("@")[1]) if "@" in c else 16
            costs[c] = (
                scale
                * (0.5 if kind == "mlp" else 0.3)
                * int(width)
                / 64
                * bits
                / 16
                * (1 + 0.1 * rng.random())
            )
        out[t] = costs
    return out


def synthetic_timed(cfgs, costs) -> list[Timed]:
    def time(cfg, t):
        c = costs[t]
        return c["fixed"] + sum(c[m] + c[k] for m, k in layer_cells(cfg))

    return [Timed(cfg, time(cfg, "prefill_ms"), time(cfg, "decode_ms")) for cfg in cfgs]


def fitted(space=SPACE, n_train=30, n_test=10, seed=0, **kw) -> tuple[LatencyTable, dict, list]:
    costs = true_costs(space, seed)
    timed = synthetic_timed(calibration_configs(space, n_train + n_test, seed), costs)
    table = fit_latency_table(
        timed[:n_train], space, timed[n_train:], {"runtime": "llamacpp", "prompt_tokens": 128}, **kw
    )
    return table, costs, timed


# --- the table ----------------------------------------------------------------------------------------
def test_calibration_configs_cover_every_cell():
    cfgs = calibration_configs(SPACE, 12, seed=0)
    assert len(cfgs) == len({c.key() for c in cfgs}) == 12
    assert cfgs[0] == SPACE.largest() and cfgs[1] == SPACE.smallest()
    used = {c for cfg in cfgs for pair in layer_cells(cfg) for c in pair}
    assert used == set(space_cells(SPACE)) == {"mlp:64", "mlp:128", "mlp:192", "mlp:256", "kv:1", "kv:2"}
    for cfg in cfgs:
        SPACE.validate(cfg)
    with pytest.raises(LlamanasError, match="must be >= 1; got 0"):
        calibration_configs(SPACE, 0)


def test_table_fits_additive_timings_exactly():
    table, costs, timed = fitted(compare_predictors=False)
    rng = np.random.default_rng(5)
    for cfg in [SPACE.sample(rng) for _ in range(40)] + [SPACE.largest(), SPACE.smallest()]:
        (truth,) = synthetic_timed([cfg], costs)
        got = table.time_ms(cfg)
        assert got["prefill_ms"] == pytest.approx(truth.prefill_ms, rel=1e-6)
        assert got["decode_ms"] == pytest.approx(truth.decode_ms, rel=1e-6)
        assert table.values(cfg) == pytest.approx(
            {"latency": truth.prefill_ms, "throughput": 1000 / truth.decode_ms}
        )
    # The error on held-out configs is reported: exact fit -> MAPE 0, perfect ranking.
    for v in ("latency", "throughput"):
        assert table.holdout[v]["n"] == 10
        assert table.holdout[v]["mape"] == pytest.approx(0.0, abs=1e-6)
        assert table.holdout[v]["kendall_tau"] > 0.95  # < 1 only by round-off between tied configs
    # Readable cells: no negative cost, the cheapest KV cell is the reference (0).
    for t in ("prefill_ms", "decode_ms"):
        assert min(table.cells[t].values()) >= 0 and min(table.cells[t][c] for c in ("kv:1", "kv:2")) == 0
    assert table.interpolated == []
    assert [c["split"] for c in table.calibration] == ["train"] * 30 + ["test"] * 10


def test_holdout_reports_predictor_comparison_and_noise_error():
    costs = true_costs(SPACE, 1)
    rng = np.random.default_rng(2)
    timed = [
        Timed(
            t.config,
            t.prefill_ms * (1 + 0.05 * rng.standard_normal()),
            t.decode_ms * (1 + 0.05 * rng.standard_normal()),
        )
        for t in synthetic_timed(calibration_configs(SPACE, 40, 1), costs)
    ]
    table = fit_latency_table(timed[:30], SPACE, timed[30:])
    for v in ("latency", "throughput"):
        h = table.holdout[v]
        assert 0 < h["mape"] < 0.2 and -1 <= h["kendall_tau"] <= 1
        assert h["predictor"]["model"] in ("ridge", "svr", "gbr", "ensemble")
        assert math.isfinite(h["predictor"]["mape"])
    assert fit_latency_table(timed[:30], SPACE).holdout == {}  # nothing held out: nothing reported
    one = fit_latency_table(timed[:30], SPACE, timed[30:31], compare_predictors=False)
    assert one.holdout["latency"]["kendall_tau"] is None  # undefined for one config: null, not NaN, in JSON


def test_unseen_widths_are_interpolated():
    costs = true_costs(SPACE, 0)
    cfgs = [c for c in calibration_configs(SPACE, 60, 0) if 128 not in c.mlp]
    table = fit_latency_table(synthetic_timed(cfgs, costs), SPACE)
    assert table.interpolated == ["mlp:128"]
    for t in ("prefill_ms", "decode_ms"):
        lo, mid, hi = (table.cells[t][f"mlp:{w}"] for w in (64, 128, 192))
        assert mid == pytest.approx((lo + hi) / 2)


def test_precision_cells():
    space = SearchSpace.from_dict({"bits": [4, 8, 16]}, ARCH)
    table, costs, _ = fitted(space, n_train=40, n_test=10, compare_predictors=False)
    assert "mlp:256@4" in table.cells["decode_ms"] and "kv:2@16" in table.cells["decode_ms"]
    cfg = space.sample(np.random.default_rng(3))
    (truth,) = synthetic_timed([cfg], costs)
    assert table.time_ms(cfg)["decode_ms"] == pytest.approx(truth.decode_ms, rel=1e-6)


def test_json_round_trip_and_bad_files(tmp_path):
    table, _, _ = fitted(compare_predictors=False)
    path = table.save(tmp_path / "t" / "table.json")
    back = LatencyTable.load(path)
    assert back.to_dict() == table.to_dict() and back.digest == table.digest
    d = json.loads(path.read_text())
    assert d["format"] == "llamanas-latency-table" and d["digest"] == table.digest
    assert set(d["holdout"]) == {"latency", "throughput"}
    other = LatencyTable.from_dict({**d, "timing": {**d["timing"], "threads": 99}})
    assert other.digest != table.digest  # timing settings are part of its identity
    with pytest.raises(LlamanasError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LlamanasError, match="is not JSON"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"members": []}))
    with pytest.raises(LlamanasError, match="not a latency table"):
        LatencyTable.load(tmp_path / "other.json")
    with pytest.raises(LlamanasError, match="at least 2 timed configs"):
        fit_latency_table([], SPACE)


def test_table_must_cover_the_space():
    table, _, _ = fitted(compare_predictors=False)
    wider = dataclasses.replace(SPACE, mlp_choices=((32, 128, 256),) * 8)
    with pytest.raises(LlamanasError, match=r"no cost for \['mlp:32'\] of this search space"):
        table.check_space(wider)
    with pytest.raises(LlamanasError, match="timed on another model: hidden_size 64"):
        table.check_space(SearchSpace.from_arch(tiny_arch(8, hidden_size=128, head_dim=32)))
    with pytest.raises(LlamanasError, match="no cost for"):
        table.time_ms(SubnetConfig((0,), (32,), (1,)))


# --- objectives and counts ----------------------------------------------------------------------------
def test_runtime_makes_timing_objectives_analytic():
    assert objmod.get("latency").source == objmod.TIMING and not objmod.get("latency").analytic
    lat = objmod.get("latency", runtime="llamacpp")
    assert lat.source == objmod.MODEL and lat.analytic and lat.direction == objmod.MIN
    assert objmod.get("throughput", runtime="llamacpp").direction == objmod.MAX
    assert objmod.get("params", runtime="llamacpp").source == objmod.COUNT
    assert objmod.parse_constraint("latency<=50", runtime="llamacpp").objective.analytic
    with pytest.raises(LlamanasError, match=r"Unknown runtime 'tpu'\. Available: hf, llamacpp"):
        objmod.get("latency", runtime="tpu")


def test_counts_compute_latency_and_throughput_from_the_table():
    table, _, _ = fitted(compare_predictors=False)
    counts = Counts(SPACE, latency_table=table)
    rng = np.random.default_rng(0)
    cfgs = [SPACE.sample(rng) for _ in range(50)]
    X = np.array([SPACE.encode(c) for c in cfgs])
    out = counts(X)
    for i, cfg in enumerate(cfgs):
        v = table.values(cfg)
        assert out["latency"][i] == pytest.approx(v["latency"]) == counts.of(cfg)["latency"]
        assert out["throughput"][i] == pytest.approx(v["throughput"])
    lo, hi = counts.range("latency")
    assert lo == pytest.approx(table.values(SPACE.smallest())["latency"])
    assert hi == pytest.approx(table.values(SPACE.largest())["latency"])
    assert lo <= out["latency"].min() and out["latency"].max() <= hi
    tlo, thi = counts.range("throughput")
    assert tlo <= out["throughput"].min() and out["throughput"].max() <= thi
    assert "latency" in counts.names and "latency" not in Counts(SPACE).names
    with pytest.raises(LlamanasError, match="only with a latency table"):
        Counts(SPACE).range("latency")


# --- the search -----------------------------------------------------------------------------------------
def llamacpp_args(tmp_path, table_path=None, name="cpp", algorithm="linas", **kw):
    base = dict(objectives=("accuracy", "latency"), runtime="llamacpp", evaluations=18, population=6)
    if table_path is not None:
        base["latency_table"] = str(table_path)
    base.update(kw)
    return args_for(tmp_path, algorithm, name=name, **base)


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_search_uses_the_table(tmp_path, objective):
    table, _, _ = fitted(compare_predictors=False)
    path = table.save(tmp_path / "table.json")
    r = search(llamacpp_args(tmp_path, path, objectives=("accuracy", objective)), SyntheticSpec(), SPACE)
    view = load_run(r.run_dir)
    assert len(view.evaluated) == 18
    for e in view.evaluated:  # the synthetic evaluator times nothing: the values are the table's
        assert e.measured[objective] == pytest.approx(table.values(e.config)[objective])
        assert e.values[objective] == pytest.approx(table.values(e.config)[objective])
    info = RunFiles(r.run_dir).info()
    assert info["runtime"] == "llamacpp" and info["args"]["latency_table"] == str(path)
    assert (
        info["latency_table"]["digest"] == table.digest
        and info["latency_table"]["file"] == "latency_table.json"
    )
    assert info["settings"]["runtime"] == "llamacpp" and info["settings"]["latency_table"] == table.digest
    assert RunFiles(r.run_dir).latency_table().digest == table.digest  # copied into the run folder
    lo, hi = Counts(SPACE, latency_table=table).range(objective)
    assert info["bounds"][objective] == ([lo, hi] if objective == "latency" else [hi, lo])
    # LINAS computes the objective like a count: no predictor is fitted for it.
    predicted = (r.run_dir / "predictors.csv").read_text()
    assert "accuracy" in predicted and objective not in predicted
    front = json.loads((r.run_dir / "front.json").read_text())
    assert front["objectives"][1]["source"] == "model"


def test_hf_and_llamacpp_values_never_share_store_entries(tmp_path):
    table, _, _ = fitted(compare_predictors=False)
    path = table.save(tmp_path / "table.json")
    store = str(tmp_path / "shared.sqlite")
    a = search(args_for(tmp_path, "random", name="hf", evaluations=6, store=store), SyntheticSpec(), SPACE)
    log = []
    b = search(
        llamacpp_args(tmp_path, path, name="cpp", algorithm="random", evaluations=6, store=store),
        SyntheticSpec(log=log),
        SPACE,
    )
    assert len(log) == 6  # same configs, other settings key: evaluated again, not reused
    ha, hb = (RunFiles(r.run_dir).info()["settings_hash"] for r in (a, b))
    assert ha != hb
    other = LatencyTable.from_dict({**table.to_dict(), "timing": {"threads": 3}})
    c = search(
        llamacpp_args(
            tmp_path,
            other.save(tmp_path / "t2.json"),
            name="cpp2",
            algorithm="random",
            evaluations=6,
            store=store,
        ),
        SyntheticSpec(),
        SPACE,
    )
    assert RunFiles(c.run_dir).info()["settings_hash"] not in (ha, hb)  # another table, another key


def test_search_builds_the_table_once_through_the_callable(tmp_path):
    calls = []
    costs = true_costs(SPACE, 0)

    def build(args, space, out_path):
        calls.append(Path(out_path))
        timed = synthetic_timed(calibration_configs(space, 20, args.seed), costs)
        return fit_latency_table(timed[:15], space, timed[15:], compare_predictors=False).save(out_path)

    args = llamacpp_args(tmp_path, evaluations=8)
    r = search(args, SyntheticSpec(), SPACE, latency_table_builder=build)
    assert calls == [r.run_dir / "latency_table.json"]
    digest = RunFiles(r.run_dir).latency_table().digest
    r2 = search(
        SearchArgs(**{**args.to_dict(), "evaluations": 10}),
        SyntheticSpec(),
        SPACE,
        latency_table_builder=build,
    )
    assert len(calls) == 1 and r2.evaluations == 10  # resumed: the run folder's table, not a new one
    assert RunFiles(r.run_dir).latency_table().digest == digest
    # No table needed when no objective or constraint is about speed.
    search(
        llamacpp_args(tmp_path, name="acc", objectives=("accuracy", "params"), evaluations=6),
        SyntheticSpec(),
        SPACE,
    )


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(runtime="tpu"), "Unknown runtime 'tpu'. Available: hf, llamacpp"),
        (
            dict(runtime="llamacpp"),
            "--runtime llamacpp computes latency from a latency table, and none was given: pass --latency-table",
        ),
        (
            dict(runtime="llamacpp", objectives=("accuracy", "params"), constraints=("throughput>=5",)),
            "computes throughput from a latency table",
        ),
        (
            dict(runtime="hf", latency_table="t.json"),
            "--latency-table 't.json' is used only with --runtime llamacpp",
        ),
        (dict(runtime="llamacpp", latency_table="nope.json"), "Latency table 'nope.json' does not exist"),
    ],
)
def test_bad_runtime_input(tmp_path, kw, message):
    log = []
    args = args_for(tmp_path, **{"objectives": ("accuracy", "latency"), **kw})
    with pytest.raises(LlamanasError) as e:
        search(args, SyntheticSpec(log=log), SPACE)
    assert message in str(e.value)
    assert log == []


def test_table_for_another_space_is_refused(tmp_path):
    table, _, _ = fitted(compare_predictors=False)
    path = table.save(tmp_path / "table.json")
    wider = dataclasses.replace(SPACE, mlp_choices=((32, 256),) * 8)
    with pytest.raises(LlamanasError, match="no cost for"):
        search(llamacpp_args(tmp_path, path), SyntheticSpec(), wider)


def test_latency_constraint_is_applied_before_evaluating(tmp_path):
    table, _, _ = fitted(compare_predictors=False)
    path = table.save(tmp_path / "table.json")
    lo, hi = Counts(SPACE, latency_table=table).range("latency")
    limit = lo + (hi - lo) / 3
    log = []
    r = search(
        llamacpp_args(tmp_path, path, objectives=("accuracy", "params"), constraints=(f"latency<={limit}",)),
        SyntheticSpec(log=log),
        SPACE,
    )
    assert all(
        e.measured["latency"] <= limit for e in load_run(r.run_dir).evaluated
    )  # analytic: filtered first
    with pytest.raises(LlamanasError, match="cannot be met: latency ranges from"):
        search(
            llamacpp_args(tmp_path, path, name="x", constraints=(f"latency<={lo / 2}",)),
            SyntheticSpec(),
            SPACE,
        )


# --- deploy: builder and front timing on a tiny GGUF-exportable model ---------------------------------
@pytest.fixture(scope="module")
def exportable(tmp_path_factory):
    pytest.importorskip("gguf")
    from test_gguf import bpe_tokenizer, model_of

    from llamanas.model.arch import Arch
    from llamanas.supernet.elastic import SuperNet

    tok_dir = tmp_path_factory.mktemp("tok")
    bpe_tokenizer().save_pretrained(tok_dir)
    model = model_of()
    space = SearchSpace.from_arch(Arch.from_hf(model.config), mlp_fractions=(1 / 3, 2 / 3, 1.0))
    return SuperNet(model, space), space, tok_dir


def fake_time(log):
    """Stands in for time_gguf: records the call; the speed follows the file size (no clock read)."""
    from llamanas.deploy.llamacpp import Timing

    def time_fn(path, prompt_tokens, decode_tokens, repeats, threads):
        from llamanas.deploy.gguf import read_gguf_info

        info = read_gguf_info(path)
        log.append(info.subnet)
        size = Path(path).stat().st_size
        return Timing(
            str(path), size, prompt_tokens, decode_tokens, threads, repeats, 1e9 / size, 1e8 / size, 0, False
        )

    return time_fn


def test_build_latency_table_exports_and_times_each_config(exportable, tmp_path):
    from llamanas.deploy.speed import build_latency_table

    supernet, space, tok_dir = exportable
    log = []
    table = build_latency_table(
        supernet,
        space,
        tok_dir,
        tmp_path / "t.json",
        n_configs=6,
        holdout=2,
        type="f32",
        time_fn=fake_time(log),
    )
    cfgs = calibration_configs(space, 8, 0)
    assert [SubnetConfig.from_dict(s) for s in log] == cfgs  # each config exported (its GGUF says which)
    assert table.timing["runtime"] == "llamacpp" and table.timing["type"] == "f32"
    assert set(table.holdout) == {"latency", "throughput"} and table.holdout["latency"]["n"] == 2
    assert LatencyTable.load(tmp_path / "t.json").digest == table.digest
    table.check_space(space)


def test_latency_table_times_narrower_residual_streams(exportable, tmp_path):
    """A space with a hidden gene: each narrower width is exported and timed, and the table covers it."""
    from llamanas.deploy.speed import build_latency_table

    supernet, space, tok_dir = exportable
    h = space.arch.hidden_size // 2
    hidden = dataclasses.replace(space, hidden_choices=(h, space.arch.hidden_size))
    log = []
    table = build_latency_table(
        supernet, hidden, tok_dir, n_configs=10, holdout=0, type="f32", time_fn=fake_time(log)
    )
    timed = [SubnetConfig.from_dict(s) for s in log]
    assert timed == calibration_configs(hidden, 10, 0) and {c.hidden for c in timed} == {None, h}
    table.check_space(hidden)
    assert f"head:{h}" in table.cells["decode_ms"]
    narrow = dataclasses.replace(hidden.largest(), hidden=h)
    assert table.values(narrow)["throughput"] > table.values(hidden.largest())["throughput"]  # a smaller file


def test_time_front_writes_front_llamacpp(exportable, tmp_path):
    from llamanas.deploy.speed import build_latency_table, time_front

    supernet, space, tok_dir = exportable
    table = build_latency_table(
        supernet, space, tok_dir, n_configs=6, holdout=0, type="f32", time_fn=fake_time([])
    )
    path = table.save(tmp_path / "t.json")
    r = search(llamacpp_args(tmp_path, path, evaluations=8), SyntheticSpec(), space)
    log = []
    out = time_front(r.run_dir, supernet=supernet, tokenizer_source=tok_dir, time_fn=fake_time(log))
    assert out == r.run_dir / "front_llamacpp.json"
    d = json.loads(out.read_text())
    assert [p["id"] for p in d["points"]] == [m.id for m in r.front] and len(log) == len(r.front)
    assert d["latency_table"] == table.digest and d["type"] == "f32" and d["prompt_tokens"] == 128
    p = d["points"][0]
    assert set(p) >= {"latency", "throughput", "timing", "predicted", "original"}
    assert p["predicted"] == pytest.approx(table.values(SubnetConfig.from_dict(p["config"])))
    assert set(d["table_error"]) == {"latency", "throughput"}
    # the report plots accuracy against these llama.cpp timings, and the table's predictions beside them
    from llamanas.evidence.report import load_data, report

    data = load_data(r.run_dir)
    assert len(data.runtime_front) == len(r.front) == len(data.runtime_predicted)
    assert sorted(q.decode_ms for q in data.runtime_front) == pytest.approx(
        sorted(1000.0 / q["throughput"] for q in d["points"])
    )
    page = report(r.run_dir).read_text()
    assert "timed in llama.cpp" in page and "latency table" in page
    assert (r.run_dir / "figures" / "front_llamacpp.png").is_file()


def test_build_latency_table_smoke_in_llamacpp(exportable, tmp_path):
    """Three configs really timed in llama.cpp (tiny prompt, one repeat): the pipeline runs end to end."""
    from llamanas.deploy.llamacpp import available
    from llamanas.deploy.speed import build_latency_table

    if not available():
        pytest.skip("llama-cpp-python not installed")
    supernet, space, tok_dir = exportable
    table = build_latency_table(
        supernet,
        space,
        tok_dir,
        n_configs=2,
        holdout=1,
        type="f16",
        prompt_tokens=8,
        decode_tokens=2,
        repeats=1,
        threads=1,
    )
    assert len(table.calibration) == 3 and table.holdout["latency"]["n"] == 1
    assert table.timing["prompt_tokens"] == 8 and set(table.cells) == {"prefill_ms", "decode_ms"}


def test_throughput_range_survives_a_table_that_predicts_zero_ms():
    """A latency table fitted on a few noisy timings may predict 0 ms for the cheapest member."""
    import numpy as np

    from llamanas.search.counts import Counts

    counts = Counts(SPACE)
    counts.speed_base = {"decode_ms": np.zeros(1), "prefill_ms": np.zeros(1)}
    n, cm, ck = SPACE.arch.num_layers, len(SPACE.mlp_choices[0]), len(SPACE.kv_choices[0])
    counts.speed_tables = {k: np.zeros((1, n, cm, ck, 1)) for k in ("decode_ms", "prefill_ms")}
    counts.latency_table = object()
    lo, hi = counts.range("throughput")
    assert lo > 0 and hi >= lo and np.isfinite(hi)


# --- a residual-stream (hidden size) gene -------------------------------------------------------------
HIDDEN_SPACE = dataclasses.replace(SPACE, hidden_choices=(32, 48, 64))


def _hidden_truth(space):
    """Costs linear in width at each residual width, so interpolated cells are exact too."""
    out = {}
    for t, scale in (("prefill_ms", 10.0), ("decode_ms", 1.0)):
        costs = {"fixed": 3.0 * scale}
        for c in space_cells(space):
            kind, width, _, h = latency_module._parse_cell(c)
            share = (h or 64) / 64
            costs[c] = (
                scale * share * (2.0 if kind == "head" else (0.5 if kind == "mlp" else 0.3) * width / 64)
            )
        out[t] = costs
    return out


def _hidden_timed(cfgs, costs):
    def time(cfg, t):
        c, h = costs[t], latency_module.narrowed(cfg, 64)
        base = c["fixed"] if h is None else c[f"head:{h}"]
        return base + sum(c[m] + c[k] for m, k in layer_cells(cfg, 64))

    return [Timed(cfg, time(cfg, "prefill_ms"), time(cfg, "decode_ms")) for cfg in cfgs]


def test_hidden_widths_have_their_own_cells_and_fixed_cost():
    assert {"head:32", "head:48", "mlp:64/32", "kv:2/48", "mlp:256", "kv:1"} <= set(space_cells(HIDDEN_SPACE))
    assert "head:64" not in space_cells(HIDDEN_SPACE) and not any(
        "/64" in c for c in space_cells(HIDDEN_SPACE)
    )
    cfgs = calibration_configs(HIDDEN_SPACE, 40, seed=0)
    assert {c.hidden for c in cfgs[:12]} == {None, 32, 48}  # the ends of every narrower width come first
    costs = _hidden_truth(HIDDEN_SPACE)
    timed = _hidden_timed(cfgs, costs)
    table = fit_latency_table(timed[:30], HIDDEN_SPACE, timed[30:], compare_predictors=False)
    rng = np.random.default_rng(3)
    samples = [HIDDEN_SPACE.sample(rng) for _ in range(60)]
    assert {c.hidden for c in samples} == {None, 32, 48}
    for cfg, truth in zip(samples, _hidden_timed(samples, costs), strict=True):
        assert table.time_ms(cfg)["decode_ms"] == pytest.approx(truth.decode_ms, rel=1e-6)
        assert table.time_ms(cfg)["prefill_ms"] == pytest.approx(truth.prefill_ms, rel=1e-6)
    # Counts read the same table per residual width; the range spans the narrowest to the widest.
    counts = Counts(HIDDEN_SPACE, latency_table=table)
    out = counts(np.array([HIDDEN_SPACE.encode(c) for c in samples]))
    np.testing.assert_allclose(out["latency"], [table.values(c)["latency"] for c in samples], rtol=1e-9)
    np.testing.assert_allclose(out["throughput"], [table.values(c)["throughput"] for c in samples], rtol=1e-9)
    smallest = dataclasses.replace(HIDDEN_SPACE.smallest(), hidden=32)
    assert counts.range("latency") == pytest.approx(
        (table.values(smallest)["latency"], table.values(HIDDEN_SPACE.largest())["latency"])
    )
    # A table timed without a narrower width cannot cost it, and says which.
    full_only = [t for t in timed if t.config.hidden is None]
    with pytest.raises(LlamanasError, match="No timed config had 32 residual channels"):
        fit_latency_table(full_only, HIDDEN_SPACE, compare_predictors=False)
