"""The HTML report, from a synthetic run folder built here (no model, no search)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import tiny_arch

from llamanas.errors import LlamanasError
from llamanas.evidence.baselines import BaselineResult, BaselineRun, write_baselines
from llamanas.evidence.report import FIG_DIR, Point, Score, highlights, layer_stats, load_data, report
from llamanas.search.files import RunFiles
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

ARCH = tiny_arch(6, intermediate_size=128, vocab_size=128)
SPACE = SearchSpace.from_arch(ARCH)
FULL = SubnetConfig.full(ARCH)
N_ITEMS = 100


def _acc(cfg: SubnetConfig, rng) -> float:
    frac = cfg.num_params(ARCH) / FULL.num_params(ARCH)
    # Keeping layer 0 matters a lot, so the best sub-networks all keep it (checked in the layer analysis).
    return min(0.6, 0.4 + 0.1 * frac + (0.1 if 0 in cfg.layers else 0.0) + rng.normal(0, 0.01))


def _configs():
    """(config, accuracy): 40 random ones, the full model (best), a 1-point-close one, a just-too-far one,
    and one at chance."""
    rng = np.random.default_rng(0)
    out, seen = [], set()
    while len(out) < 40:
        c = SPACE.sample(rng)
        if c.key() not in seen and c != FULL:
            seen.add(c.key())
            out.append((c, _acc(c, rng)))
    close = SubnetConfig(tuple(range(6)), (96,) * 6, (2,) * 6)  # ~smaller than the full model
    far = SubnetConfig(tuple(range(6)), (32,) * 6, (1,) * 6)
    chance = SubnetConfig((1, 2, 3), (32,) * 3, (1,) * 3)
    for c in (close, far, chance):
        out = [(x, a) for x, a in out if x != c]
    return out + [(FULL, 0.70), (close, 0.695), (far, 0.689), (chance, 0.26)], close, far, chance


def _measured(cfg, acc):
    params = float(cfg.num_params(ARCH))
    return {"acc:arc_easy": acc, "n:arc_easy": float(N_ITEMS), "params": params, "latency": 2 + params / 1e4}


def _front(evals):
    """Non-dominated (max accuracy, min params) ids."""
    ids = []
    for i, (c, a) in enumerate(evals):
        p = c.num_params(ARCH)
        dominated = any(
            (a2 >= a and c2.num_params(ARCH) <= p) and (a2 > a or c2.num_params(ARCH) < p) for c2, a2 in evals
        )
        if not dominated:
            ids.append(i)
    return ids


ARGS = {
    "model": "tiny",
    "tasks": ["arc_easy"],
    "objectives": ["accuracy", "params"],
    "algorithm": "linas",
    "evaluations": 44,
    "out": "x",
    "split": "validation",
    "limit": N_ITEMS,
    "num_fewshot": None,
    "seed": 0,
}
OBJECTIVES = [
    {"name": "accuracy", "direction": "max", "source": "task", "unit": ""},
    {"name": "params", "direction": "min", "source": "count", "unit": ""},
]


def build_run(tmp_path, with_store: bool = True, quantized: bool = True, baselines: bool = True):
    """A run folder as `llamanas search` writes it (+ front_int8.json, + a baselines folder)."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    evals, close, far, chance = _configs()
    info = {
        "args": ARGS,
        "run_name": str(run.resolve()),
        "store": str(run / "results.sqlite"),
        "space": SPACE.to_dict(),
        "objectives": OBJECTIVES,
        "constraints": [],
        "bounds": {
            "accuracy": [1.0, 0.0],
            "params": [float(SPACE.smallest().num_params(ARCH)), float(FULL.num_params(ARCH))],
        },
        "fingerprint": "f" * 16,
        "settings_hash": "s" * 16,
    }
    (run / "run.json").write_text(json.dumps(info))
    front_ids = _front(evals)
    members = [
        {
            "id": i + 1,
            "values": {"accuracy": evals[i][1], "params": evals[i][0].num_params(ARCH)},
            "measured": _measured(*evals[i]),
            "config": evals[i][0].to_dict(),
        }
        for i in front_ids
    ]
    (run / "front.json").write_text(
        json.dumps({"objectives": OBJECTIVES, "constraints": [], "members": members})
    )
    (run / "hypervolume.csv").write_text(
        "evaluations,hypervolume,front_size\n"
        + "".join(f"{n},{0.5 * (1 - math.exp(-n / 10)):.6f},{min(n, 7)}\n" for n in range(1, 45))
    )
    (run / "predictors.csv").write_text(
        "loop,objective,model,n_train,cv_mse,cv_tau,n_new,kendall_tau,mape\n"
        + "".join(
            f"{loop},accuracy,ridge,{10 * loop},0.01,{0.3 + 0.1 * loop},10,{0.2 + 0.15 * loop},{20 - 4 * loop}\n"
            for loop in range(1, 4)
        )
    )
    if with_store:
        pytest.importorskip("llamanas.search")
        from llamanas.search.store import Record, Store

        with Store(run / "results.sqlite") as store:
            run_id = store.open_run(info["run_name"], {"x": 1})
            for seq, (c, a) in enumerate(evals, 1):
                eid = store.put(Record(c, _measured(c, a), info["fingerprint"], info["settings_hash"]))
                store.add_to_run(run_id, seq, eid)
    if quantized:
        points = []
        for m in members:
            cfg = SubnetConfig.from_dict(m["config"])
            points.append(
                {
                    "config": m["config"],
                    "params": cfg.num_params(ARCH),
                    "bytes_fp16": 2 * cfg.num_params(ARCH),
                    "bytes": int(1.1 * cfg.num_params(ARCH)),
                    "results": {
                        "arc_easy": {
                            "metrics": {"acc": m["values"]["accuracy"] - 0.005},
                            "stderr": {"acc": 0.045},
                            "chance": 0.25,
                        }
                    },
                    "original": {k: v for k, v in m.items() if k != "config"},
                }
            )
        (run / "front_int8.json").write_text(
            json.dumps({"method": "int8", "group_size": 64, "points": points})
        )
    bdir = None
    if baselines:
        bdir = tmp_path / "baselines"
        rows = [BaselineResult("base", "base", 1.0, FULL.to_dict(), FULL.num_params(ARCH), 1.0, _res(0.70))]
        for t in (0.9, 0.7):
            for method, acc in (("depth", 0.40), ("shortgpt", 0.45), ("width", 0.5)):
                cfg = SubnetConfig(tuple(range(4)), (128,) * 4, (2,) * 4)
                rows.append(
                    BaselineResult(
                        method, "base", t, cfg.to_dict(), cfg.num_params(ARCH), 0.6, _res(acc - (1 - t))
                    )
                )
        rows.append(BaselineResult("depth", "base", 0.1, None, None, None, note="no sub-network fits 10%"))
        write_baselines(
            BaselineRun(
                "tiny",
                None,
                ["arc_easy"],
                "validation",
                N_ITEMS,
                None,
                0,
                [0.9, 0.7],
                FULL.num_params(ARCH),
                {"base": [0.1] * 6},
                rows,
            ),
            bdir,
        )
    return run, bdir, (close, far, chance)


def _res(acc):
    return {
        "arc_easy": {
            "metrics": {"acc": acc},
            "stderr": {"acc": math.sqrt(acc * (1 - acc) / (N_ITEMS - 1))},
            "chance": 0.25,
            "n": N_ITEMS,
        }
    }


def test_score_from_store_values_has_binomial_stderr_and_chance():
    s = Score("accuracy", "acc", ("arc_easy", "piqa"))
    v, se, ch = s.from_measured({"acc:arc_easy": 0.3, "n:arc_easy": 101, "acc:piqa": 0.6, "n:piqa": 201})
    assert v == pytest.approx(0.45)
    assert se == pytest.approx(math.sqrt(0.3 * 0.7 / 100 + 0.6 * 0.4 / 200) / 2)
    assert ch == pytest.approx((0.25 + 0.5) / 2)
    assert Point("a", "x", None, 1, 0.26, 0.044, 0.25).at_chance
    assert not Point("a", "x", None, 1, 0.40, 0.044, 0.25).at_chance
    assert not Point("a", "x", None, 1, 0.26, None, 0.25).at_chance  # unknown stderr: never marked


def test_score_facts_come_from_the_task_metric():
    """gold_nll is unbounded and has no chance level; a group's chance is its tasks' (evaluation.tasks)."""
    nll = Score("gold_nll", "gold_nll", ("arc_easy",), higher_is_better=False)
    assert not nll.bounded and not nll.has_chance
    assert nll.from_measured({"gold_nll:arc_easy": 1.5, "n:arc_easy": 100, "chance:arc_easy": 0.25}) == (
        1.5,
        None,
        None,
    )
    acc = Score("accuracy", "acc", ("mmlu", "truthfulqa_mc1"))
    assert acc.bounded and acc.has_chance
    res = {"metrics": {"acc": 0.5}, "stderr": {"acc": 0.05}}
    assert acc.from_results({"mmlu": res, "truthfulqa_mc1": res})[2] is None  # TruthfulQA: unknown
    assert Score("accuracy", "acc", ("mmlu",)).from_results({"mmlu": res})[2] == 0.25


def test_run_files_readers(tmp_path):
    """The report reads every run file through ``RunFiles``; missing or unreadable ones are reported."""
    run, _, _ = build_run(tmp_path, with_store=False, baselines=False)
    files = RunFiles(run)
    hv = files.hypervolume()
    assert len(hv) == 44 and hv[0]["evaluations"] == 1.0 and hv[-1]["front_size"] == 7.0
    pred = files.predictors()
    assert [r["loop"] for r in pred] == [1.0, 2.0, 3.0] and pred[0]["model"] == "ridge"
    assert files.front_file()["objectives"] == OBJECTIVES and files.front_after("int8")["method"] == "int8"
    with pytest.raises(LlamanasError, match="no front_int4.json"):
        files.front_after("int4")
    with pytest.raises(LlamanasError, match="no hypervolume.csv"):
        RunFiles(tmp_path / "none").hypervolume()
    # front_llamacpp.json, as time_front writes it: the timed front and the table's prediction
    m = files.front()[0]
    timed = {
        "config": m["config"],
        "original": {"measured": m["measured"]},
        "latency": 5.0,
        "throughput": 50.0,
    }
    files.write_front_after(
        "llamacpp", {"type": "f16", "points": [{**timed, "predicted": {"throughput": 40.0}}]}
    )
    data = load_data(run)
    assert data.runtime == {"type": "f16"} and data.runtime_front[0].decode_ms == 20.0
    assert data.runtime_predicted[0].decode_ms == 25.0 and len(data.quantized["int8"]) == len(data.front)
    (run / "front_int8.json").write_text("{")
    with pytest.raises(LlamanasError, match="front_int8.json is not valid JSON"):
        files.front_after("int8")
    assert "front_int8.json / front_int4.json" in load_data(run).missing["quantized"]


def test_load_data_reads_every_input(tmp_path):
    run, bdir, (close, far, chance) = build_run(tmp_path)
    data = load_data(run, bdir)
    assert data.missing == {}
    assert len(data.evaluated) == 44 and data.arch == ARCH
    assert data.score.name == "accuracy" and data.score.tasks == ("arc_easy",)
    assert data.base is not None and data.base.config == FULL.to_dict() and data.base.score == 0.70
    assert len(data.baselines) == 7  # the infeasible one has no config
    assert len(data.front) >= 3 and [p.params for p in data.front] == sorted(p.params for p in data.front)
    at_chance = [p for p in data.evaluated if p.at_chance]
    assert [p.config for p in at_chance] == [chance.to_dict()]
    assert len(data.quantized["int8"]) == len(data.front)


def test_highlights_pick_the_right_subnetworks(tmp_path):
    run, bdir, (close, far, chance) = build_run(tmp_path)
    data = load_data(run, bdir)
    roles = dict(highlights(data))
    assert roles["most accurate"].config == FULL.to_dict()
    # 0.695 is within one point of 0.70; 0.689 (smaller still) is not.
    assert roles["smallest within 1 point of the base"].config == close.to_dict()
    full = FULL.num_params(ARCH)
    for s in (0.9, 0.7):
        best = roles[f"best at <= {s:.0%} of the base size"]
        fit = [p for p in data.evaluated if p.params <= s * full]
        assert best.score == max(p.score for p in fit)


def test_layer_stats_per_percentile():
    def mk(layers, mlp, acc):
        return Point("p", "evaluated", {"layers": layers, "mlp": mlp, "kv_groups": [1] * len(layers)}, 1, acc)

    pts = [
        mk([0, 1], [64, 64], 0.9),
        mk([0, 2], [64, 128], 0.8),
        mk([1, 2], [128, 128], 0.3),
        mk([2, 3], [128, 128], 0.2),
    ]
    stats = layer_stats(pts, Score("accuracy", "acc", ("t",)), 4, [64, 128], bands=(50, 100))
    assert stats[50]["n"] == 2 and stats[50]["kept"] == [1.0, 0.5, 0.5, 0.0]
    assert stats[50]["mlp"][0][:3] == [1.0, 1.0, 0.0]  # P(MLP 64 | kept): layers 0, 1, 2
    assert math.isnan(stats[50]["mlp"][0][3])  # never kept in the top half
    assert stats[100]["kept"] == [0.5, 0.5, 0.75, 0.25]
    assert stats[100]["attention"] == [1.0, 1.0, 1.0, 1.0]
    skipping = [
        *pts[:3],
        Point("q", "evaluated", {"layers": [2, 3], "mlp": [0, 128], "kv_groups": [1, 0]}, 1, 0.2),
    ]
    stats = layer_stats(skipping, Score("accuracy", "acc", ("t",)), 4, [0, 64, 128], bands=(100,))
    assert stats[100]["attention"][2:] == [1.0, 0.0]  # P(attention kept | layer kept)
    assert stats[100]["mlp"][0][2] == pytest.approx(1 / 3)  # P(MLP skipped | layer 2 kept)


def test_report_html_is_self_contained_with_pngs(tmp_path):
    run, bdir, _ = build_run(tmp_path)
    path = report(run, bdir)
    assert path == run / "report.html"
    text = path.read_text()
    assert len(text) > 3_000_000  # plotly.js is inline
    # No external script or stylesheet (plotly.js mentions a CDN only for geo maps, which are not used).
    assert not re.search(r"<script[^>]+src=", text) and not re.search(r"<link[^>]+href=", text)
    for title in (
        "Highlighted sub-networks",
        "Accuracy vs parameters",
        "Front before and after quantization",
        "Hypervolume against evaluations",
        "Predictor quality per loop",
        "Per-layer analysis",
        "Pruning baselines",
    ):
        assert title in text
    assert "Not available" not in text
    assert text.count('class="plotly-graph-div"') == 6
    assert "≈ chance" in text and "ShortGPT (BI)" in text and "uniform MLP width" in text
    figs = sorted(p.name for p in (run / FIG_DIR).iterdir())
    assert figs == [
        "front_latency.png",
        "front_params.png",
        "front_quantized.png",
        "hypervolume.png",
        "layers.png",
        "predictors.png",
    ]
    for f in figs:
        assert (run / FIG_DIR / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_says_what_is_missing_instead_of_failing(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    text = report(run, png=False).read_text()
    assert text.count("Not available") >= 6
    assert "no front.json" in text and "no baselines folder given" in text and "front_int8.json" in text
    # A front but no store: the report falls back to the front and says so.
    run2, _, _ = build_run(tmp_path / "b", with_store=False, quantized=False, baselines=False)
    data = load_data(run2)
    assert "evaluations" in data.missing and len(data.evaluated) == len(data.front) > 0
    assert "results store could not be read" in report(run2, png=False).read_text()


def test_report_notes_baselines_with_other_settings(tmp_path):
    run, bdir, _ = build_run(tmp_path)
    assert not any("not directly comparable" in n for n in load_data(run, bdir).notes)  # the same questions
    d = json.loads((bdir / "baselines.json").read_text())
    d["limit"] = 500
    (bdir / "baselines.json").write_text(json.dumps(d))
    assert any("not directly comparable" in n for n in load_data(run, bdir).notes)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian package: chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    run, bdir, _ = build_run(tmp_path)
    path = report(run, bdir, png=False)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=15000",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any network fetch would fail
    ]
    url = path.resolve().as_uri()
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert 'data-errors="0"' in dom  # no script error (the report counts window errors)
    assert dom.count('class="main-svg"') >= 6  # plotly drew every figure (>= 1 svg layer each)
    assert dom.count('<g class="hm">') == 4  # the four percentile heatmaps of the layer analysis
    assert dom.count('class="point"') >= 44  # at least one marker per evaluated sub-network
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,4000", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_config_cell_names_a_narrow_residual_stream():
    from llamanas.evidence.report.data import Point
    from llamanas.evidence.report.html import _config_cell

    cfg = {"layers": [0, 1], "mlp": [64, 64], "kv_groups": [2, 2], "hidden": 48}
    cell = _config_cell(Point("hidden baseline", "hidden", cfg, 1000.0, 0.5))
    assert "depth 2" in cell and "hidden 48" in cell
    assert (
        "hidden"
        not in _config_cell(Point("x", "width", {**cfg, "hidden": None}, 1000.0, 0.5)).split("<code>")[0]
    )
