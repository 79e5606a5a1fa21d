"""Search algorithms on a synthetic problem (accuracy is an analytic function of the config), resume after
a crash (raised or kill -9), shared stores, exports, and bad input."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_arch

from llamanas.errors import LlamanasError
from llamanas.search import run as run_module
from llamanas.search import trajectory
from llamanas.search.args import SearchArgs
from llamanas.search.files import RunFiles
from llamanas.search.objectives import pareto_mask
from llamanas.search.problem import canonical_keys
from llamanas.search.run import load_run, parse_member_ref, search
from llamanas.search.workers import Outcome
from llamanas.supernet.space import SearchSpace

ARCH = tiny_arch(8)
SPACE = SearchSpace.from_arch(
    ARCH, skip_attention=False, skip_mlp=False
)  # 8 layers, depth >= 4, MLP 64..256, KV 1..2
BLOCKS = SearchSpace.from_arch(ARCH)  # the default: attention and MLP blocks can be skipped too
WEIGHTS = np.linspace(1.0, 0.3, ARCH.num_layers)


def synthetic_accuracy(cfg) -> float:
    """Early layers matter more; wider is better with diminishing returns: a smooth, learnable landscape."""
    s = sum(
        WEIGHTS[i] * np.sqrt(m / 256) * (0.6 + 0.2 * g)
        for i, m, g in zip(cfg.layers, cfg.mlp, cfg.kv_groups, strict=True)
    )
    return float(0.25 + 0.6 * (s / WEIGHTS.sum()) ** 1.5)


class SyntheticEvaluator:
    def __init__(self, spec):
        self.spec = spec
        self.calls = 0

    def fingerprint(self) -> str:
        return "synthetic"

    def reference(self):
        return {"gold_nll:syn": (0.0, 10.0)}

    def evaluate(self, cfg) -> Outcome:
        if self.spec.fail_after is not None and self.calls >= self.spec.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        if self.spec.clock is not None:
            self.spec.clock[0] += 1
        if self.spec.delay:
            time.sleep(self.spec.delay)
        if self.spec.log is not None:
            self.spec.log.append(cfg.key())
        if self.spec.log_file:
            with open(self.spec.log_file, "a") as f:
                f.write(cfg.key() + "\n")
        acc = synthetic_accuracy(cfg)
        return Outcome({"acc:syn": acc, "gold_nll:syn": 5.0 * (1.0 - acc), "n:syn": 100.0}, "validation", 100)


@dataclass
class SyntheticSpec:
    fail_after: int | None = None
    delay: float = 0.0
    log: list | None = field(default=None)
    log_file: str | None = None
    clock: list | None = field(default=None)  # [minutes]: each evaluation adds one (a fake slow evaluator)

    def build(self, device=None):
        return SyntheticEvaluator(self)


def args_for(tmp_path, algorithm="linas", name=None, **kw):
    base = dict(
        model="synthetic",
        tasks=("syn",),
        objectives=("accuracy", "params"),
        algorithm=algorithm,
        evaluations=30,
        population=6,
        inner_generations=40,
        predictor="ridge",
        warm_start=(),  # the synthetic evaluator has no warm start
        out=str(Path(tmp_path) / (name or algorithm)),
    )
    base.update(kw)
    return SearchArgs(**base)


def snapshot(run_dir):
    """Everything a run produced that must not depend on crashes, workers or arrival order."""
    view = load_run(run_dir)
    files = {n: (Path(run_dir) / n).read_text() for n in ("front.csv", "hypervolume.csv", "predictors.csv")}
    history = [(e.seq, e.config.key(), e.measured) for e in view.evaluated]
    return history, files


def test_search_args_round_trip():
    a = SearchArgs(tasks=("arc_easy",), constraints=("params<=100M",), limit=50, inner_population=60)
    assert SearchArgs.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    with pytest.raises(LlamanasError, match=r"Unknown search settings \['bogus'\]"):
        SearchArgs.from_dict({**a.to_dict(), "bogus": 1})
    assert "evaluations" not in a.trajectory_dict() and "seed" in a.trajectory_dict()


@pytest.mark.parametrize("algorithm", ["random", "nsga2", "linas"])
def test_each_algorithm_finds_a_front(tmp_path, algorithm):
    log = []
    r = search(args_for(tmp_path, algorithm), SyntheticSpec(log=log), SPACE)
    assert r.evaluations == r.computed == 30 == len(log) == len(set(log))  # no config evaluated twice
    view = load_run(r.run_dir)
    F = np.array([[-e.values["accuracy"], e.values["params"]] for e in view.evaluated])
    front_ids = {m.id for m in r.front}
    assert front_ids == {e.seq for e, keep in zip(view.evaluated, pareto_mask(F), strict=True) if keep}
    assert 2 <= len(r.front) < 30
    accs = [m.values["accuracy"] for m in r.front]
    assert accs == sorted(accs, reverse=True)  # best first objective first
    hv = [h for _, h, _ in r.hypervolume]
    assert len(hv) == 30 and all(b >= a for a, b in zip(hv, hv[1:], strict=False)) and hv[-1] > 0.3
    # Every algorithm starts from the same population: the largest, the smallest, then random ones.
    first = [e.config for e in view.evaluated[:6]]
    r2 = search(args_for(tmp_path, "random", name="r2", evaluations=6), SyntheticSpec(), SPACE)
    assert [e.config for e in load_run(r2.run_dir).evaluated] == first
    assert first[:2] == [SPACE.largest(), SPACE.smallest()]


@pytest.mark.parametrize("algorithm", ["random", "nsga2", "linas"])
def test_a_spent_time_budget_stops_after_the_first_population(tmp_path, algorithm, monkeypatch):
    """--minutes: no new batch starts once the time is spent; the batch under way is finished, and a resume
    with a larger time budget goes on where it stopped (no config evaluated twice)."""
    clock = [0.0]  # minutes; each evaluation takes one
    monkeypatch.setattr(trajectory, "clock", lambda: 60 * clock[0])
    monkeypatch.setattr(run_module, "clock", lambda: 60 * clock[0])
    log = []
    r = search(args_for(tmp_path, algorithm, minutes=3.0), SyntheticSpec(log=log, clock=clock), SPACE)
    assert r.evaluations == 6 == len(log)  # the first population (6) ran over the 3 minutes, then it stopped
    clock[0] = 0.0
    r = search(args_for(tmp_path, algorithm, minutes=5.0), SyntheticSpec(log=log, clock=clock), SPACE)
    assert r.evaluations == 12 and r.computed == 6  # the stored 6 cost no time, then one batch of 6
    assert len(log) == len(set(log)) == 12  # nothing evaluated twice
    with pytest.raises(LlamanasError, match="--minutes must be > 0; got 0"):
        search(args_for(tmp_path, algorithm, name="z", minutes=0), SyntheticSpec(), SPACE)


def test_linas_beats_random_and_nsga2_at_equal_budget(tmp_path):
    common = dict(evaluations=50, population=10, inner_generations=60)
    hv = {}
    for algorithm in ("random", "nsga2", "linas"):
        r = search(args_for(tmp_path, algorithm, **common), SyntheticSpec(), SPACE)
        hv[algorithm] = r.hypervolume[-1][1]
    # With the largest/smallest anchors in the first population, seeds 0-2 gave random 0.53-0.54,
    # nsga2 0.56-0.57, linas 0.59-0.60; with scikit-learn 1.9.1 / pymoo 0.6.2 / numpy 2.4.6 (2026-12-04)
    # seed 0 gives linas 0.583 (the same on the previous commit: the predictors' library moved).
    assert hv["linas"] > max(hv["random"], hv["nsga2"]) + 0.01, hv
    rows = (tmp_path / "linas" / "predictors.csv").read_text().splitlines()
    assert rows[0] == "loop,objective,model,n_train,cv_mse,cv_tau,n_new,kendall_tau,mape"
    assert (
        len(rows) == 1 + 4
        and rows[1].startswith("1,accuracy,ridge,10,")
        and rows[4].startswith("4,accuracy,")
    )
    last = dict(zip(rows[0].split(","), rows[4].split(","), strict=True))
    # MAPE of the last loop's batch: 0.21 with the libraries named above (the same on the previous commit)
    assert last["n_train"] == "40" and last["n_new"] == "10" and float(last["mape"]) < 0.25
    assert float(last["cv_tau"]) > 0.5  # the predictor ranks held-out configs well


def test_auto_predictor_records_cv_choice(tmp_path):
    search(
        args_for(tmp_path, "linas", evaluations=20, population=10, predictor="auto"), SyntheticSpec(), SPACE
    )
    rows = (tmp_path / "linas" / "predictors.csv").read_text().splitlines()
    header, row = rows[0].split(","), dict(zip(rows[0].split(","), rows[1].split(","), strict=True))
    assert len(rows) == 2 and header[2] == "model"
    assert row["model"] in ("ridge", "svr", "gbr", "ensemble") and float(row["cv_mse"]) >= 0


def test_run_files(tmp_path):
    r = search(args_for(tmp_path, "linas"), SyntheticSpec(), SPACE)
    d = r.run_dir
    info = json.loads((d / "run.json").read_text())
    assert info["args"]["algorithm"] == "linas" and info["settings"]["split"] == "validation"
    assert info["variable_names"] == list(SPACE.variable_names)
    assert SearchSpace.from_saved(info["space"]) == SPACE
    assert info["bounds"]["accuracy"] == [1.0, 0.0]
    assert info["bounds"]["params"] == [SPACE.smallest().num_params(ARCH), SPACE.largest().num_params(ARCH)]
    front = json.loads((d / "front.json").read_text())
    assert [o["name"] for o in front["objectives"]] == ["accuracy", "params"]
    assert [m["id"] for m in front["members"]] == [m.id for m in r.front]
    csv_rows = (d / "front.csv").read_text().splitlines()
    assert csv_rows[0] == "id,accuracy,params,depth,config"
    assert len(csv_rows) == 1 + len(r.front)
    hv_rows = (d / "hypervolume.csv").read_text().splitlines()
    assert hv_rows[0] == "evaluations,hypervolume,front_size" and len(hv_rows) == 31
    assert float(hv_rows[-1].split(",")[1]) == pytest.approx(r.hypervolume[-1][1], abs=1e-6)
    with sqlite3.connect(d / "results.sqlite") as db:
        row = db.execute(
            "SELECT split, n_items, seed, fingerprint, settings FROM evaluations LIMIT 1"
        ).fetchone()
    assert row[:4] == ("validation", 100, 0, "synthetic") and json.loads(row[4])["tasks"] == ["syn"]
    assert parse_member_ref(f"{d}:{r.front[0].id}") == (d, r.front[0].id)
    assert parse_member_ref("subnet.json") is None and parse_member_ref(f"{d}:x") is None
    assert load_run(d).member(r.front[0].id).config == r.front[0].config
    with pytest.raises(LlamanasError, match="No evaluation #99"):
        load_run(d).member(99)


def test_run_files_reader_and_writer(tmp_path):
    r = search(args_for(tmp_path, "random", evaluations=10, data_seed=3), SyntheticSpec(), SPACE)
    files = RunFiles(r.run_dir)
    assert files.has_info() and files.info() == json.loads((r.run_dir / "run.json").read_text())
    # run.json records the dtype that ran ("auto" resolved; float32 for a custom evaluator)
    assert files.args() == args_for(tmp_path, "random", evaluations=10, data_seed=3, dtype="float32")
    assert files.eval_settings().seed == 3 and files.eval_settings().tasks == ("syn",)  # the data seed
    assert [m["id"] for m in files.front()] == [m.id for m in r.front]
    path = files.write_front_after("int8", {"points": []})
    assert path == r.run_dir / "front_int8.json" and json.loads(path.read_text()) == {"points": []}
    assert not list(r.run_dir.glob(".*.tmp*"))  # written atomically, nothing left behind
    bare = RunFiles(tmp_path / "nothing")
    assert not bare.has_info()
    with pytest.raises(LlamanasError, match="not a search run directory"):
        bare.info()
    with pytest.raises(LlamanasError, match="no front.json"):
        bare.front()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "front.json").write_text(json.dumps({"members": [{"id": 1}]}))
    with pytest.raises(LlamanasError, match="member 0 has no 'config'"):
        RunFiles(tmp_path / "bad").front()


@pytest.mark.parametrize("algorithm", ["nsga2", "linas"])
def test_resume_after_crash_equals_uninterrupted(tmp_path, algorithm):
    log = []
    args = args_for(tmp_path, algorithm, name="crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        search(args, SyntheticSpec(fail_after=14, log=log), SPACE)
    assert len(log) == 14
    r = search(args, SyntheticSpec(log=log), SPACE)  # the same command again
    assert len(log) == 30 == len(set(log)) and r.computed == 16
    ref = search(args_for(tmp_path, algorithm, name="clean"), SyntheticSpec(), SPACE)
    assert snapshot(r.run_dir) == snapshot(ref.run_dir)
    # Resuming a finished run evaluates nothing; a larger budget extends it with the same prefix.
    again = search(args, SyntheticSpec(log=log), SPACE)
    assert again.computed == 0 and len(log) == 30
    longer = search(SearchArgs(**{**args.__dict__, "evaluations": 36}), SyntheticSpec(log=log), SPACE)
    assert longer.computed == 6 and len(set(log)) == 36
    assert snapshot(longer.run_dir)[0][:30] == snapshot(ref.run_dir)[0]


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_search import SPACE, SyntheticSpec, args_for
from llamanas.search.run import search
search(args_for({tmp!r}, "linas", name="killed"), SyntheticSpec(delay=0.15, log_file={log!r}), SPACE)
"""


def test_resume_after_kill_9(tmp_path):
    log = tmp_path / "evaluated.txt"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path), log=str(log))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "killed" / "results.sqlite"
    deadline = time.time() + 90
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                    stored = c.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if stored >= 9:  # inside LINAS's second batch
                break
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as c:
        stored = c.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    assert 9 <= stored < 30
    resumed = []
    r = search(args_for(tmp_path, "linas", name="killed"), SyntheticSpec(log=resumed), SPACE)
    assert r.computed == len(resumed) == 30 - stored  # nothing committed is evaluated again
    before_kill = set(log.read_text().split())
    assert (
        not (set(resumed) & before_kill) or len(set(resumed) & before_kill) <= 1
    )  # at most the in-flight one
    ref = search(args_for(tmp_path, "linas", name="clean"), SyntheticSpec(), SPACE)
    assert snapshot(r.run_dir) == snapshot(ref.run_dir)


def test_shared_store_reuses_evaluations(tmp_path):
    shared = str(tmp_path / "shared.sqlite")
    a = search(args_for(tmp_path, "random", store=shared), SyntheticSpec(), SPACE)
    log = []
    b = search(args_for(tmp_path, "nsga2", store=shared), SyntheticSpec(log=log), SPACE)
    assert a.computed == 30 and b.evaluations == 30
    assert b.computed == len(log) <= 30 - 6  # the shared initial population came from the store
    assert not (tmp_path / "nsga2" / "results.sqlite").exists()
    assert len(load_run(tmp_path / "nsga2").evaluated) == 30
    # Different evaluation settings (another --limit) share nothing.
    c = search(
        args_for(tmp_path, "random", name="c", store=shared, limit=50, evaluations=6), SyntheticSpec(), SPACE
    )
    assert c.computed == 6


def test_constraints_are_honoured(tmp_path):
    lo = SPACE.smallest().num_params(ARCH)
    hi = SPACE.largest().num_params(ARCH)
    limit = lo + (hi - lo) // 3
    for algorithm in ("random", "nsga2", "linas"):
        r = search(
            args_for(tmp_path, algorithm, constraints=(f"params<={limit}", "accuracy>=0.3")),
            SyntheticSpec(),
            SPACE,
        )
        view = load_run(r.run_dir)
        assert all(e.measured["params"] <= limit for e in view.evaluated), algorithm
        assert r.front and all(m.values["accuracy"] >= 0.3 and m.values["params"] <= limit for m in r.front)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(objectives=("accuracy", "speed")), "Unknown objective 'speed'"),
        (dict(constraints=("params<=1K",)), "Constraint 'params<=1K' cannot be met: params ranges from"),
        (dict(algorithm="bayes"), "Unknown algorithm 'bayes'. Available: random, nsga2, linas"),
        (dict(predictor="xgb"), "Unknown predictor 'xgb'"),
        (dict(population=1), "--population must be >= 2; got 1"),
    ],
)
def test_bad_input(tmp_path, kw, message):
    log = []
    with pytest.raises(LlamanasError) as e:
        search(args_for(tmp_path, **kw), SyntheticSpec(log=log), SPACE)
    assert message in str(e.value)
    assert log == []


def test_resume_with_other_settings_is_refused(tmp_path):
    search(args_for(tmp_path, "random", evaluations=6), SyntheticSpec(), SPACE)
    with pytest.raises(LlamanasError, match=r"different settings \(seed; it has seed=0\)"):
        search(args_for(tmp_path, "random", evaluations=6, seed=1), SyntheticSpec(), SPACE)


def test_corrupt_store_is_left_intact(tmp_path):
    run_dir = tmp_path / "linas"
    run_dir.mkdir()
    store = run_dir / "results.sqlite"
    store.write_bytes(b"\x00garbage" * 512)
    before = store.read_bytes()
    with pytest.raises(LlamanasError, match="not an SQLite file"):
        search(args_for(tmp_path), SyntheticSpec(), SPACE)
    assert store.read_bytes() == before


def test_canonical_keys_ignore_skipped_genes():
    from llamanas.search.counts import Counts

    counts = Counts(SPACE)
    rng = np.random.default_rng(0)
    X = np.array([SPACE.encode(SPACE.sample(rng)) for _ in range(200)])
    noisy = X.copy()
    n = ARCH.num_layers
    skipped = X[:, :n] == 0
    noisy[:, n : 2 * n][skipped] = 0
    assert canonical_keys(counts, X) == canonical_keys(counts, noisy)
    assert len(set(canonical_keys(counts, X))) == len({SPACE.decode(x).key() for x in X})


def test_joint_precision_search_trades_bits_for_bytes(tmp_path):
    """With precision genes, LINAS searches accuracy vs stored bytes; fewer bits cost a little accuracy."""
    space = SearchSpace.from_dict({"bits": [4, 8, 16]}, ARCH)

    class BitsEvaluator(SyntheticEvaluator):
        def evaluate(self, cfg):
            out = super().evaluate(cfg)
            penalty = sum({16: 0.0, 8: 0.002, 4: 0.02}[b] for b in cfg.bits)
            out.values["acc:syn"] -= penalty
            return out

    @dataclass
    class BitsSpec(SyntheticSpec):
        def build(self, device=None):
            return BitsEvaluator(self)

    args = args_for(tmp_path, "linas", objectives=("accuracy", "bytes"), evaluations=30, population=6)
    r = search(args, BitsSpec(), space)
    view = load_run(r.run_dir)
    assert all(e.config.bits is not None and len(e.config.bits) == e.config.depth for e in view.evaluated)
    assert view.evaluated[0].config == space.largest()  # all 16-bit, the base model
    from llamanas.supernet.precision import policy_bytes

    for m in r.front:
        assert m.values["bytes"] == policy_bytes(ARCH, m.config)
    # The front mixes precisions: INT8 layers are nearly free, so some front members use them.
    assert any(8 in m.config.bits or 4 in m.config.bits for m in r.front)
    assert json.loads((r.run_dir / "run.json").read_text())["variable_names"][-1] == "bits.7"


@pytest.mark.parametrize("algorithm", ["linas", "nsga2"])
def test_search_in_the_block_space_never_repeats_a_config(tmp_path, algorithm):
    """Vectors that skip both blocks of a layer, or attention in the first kept layer, are repaired to
    one canonical config: no batch repeats a sub-network, every evaluated one is in the space."""
    r = search(
        args_for(tmp_path, algorithm, evaluations=40, population=10, inner_generations=30),
        SyntheticSpec(),
        BLOCKS,
    )
    view = load_run(r.run_dir)
    keys = [e.config.key() for e in view.evaluated]
    assert len(keys) == len(set(keys)) == 40
    for e in view.evaluated:
        BLOCKS.validate(e.config)
    assert any(0 in e.config.kv_groups or 0 in e.config.mlp for e in view.evaluated)
