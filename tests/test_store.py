"""The SQLite results store: round trips, sharing keys, run histories, and damaged files left intact."""

import math
import sqlite3

import pytest

from llamanas.errors import LlamanasError
from llamanas.search.store import Record, Store, write_csv, write_json
from llamanas.supernet.subnet import SubnetConfig

CFG = SubnetConfig((0, 2), (64, 128), (1, 2))
OTHER = SubnetConfig((1,), (64,), (1,))


def rec(cfg=CFG, fp="fp1", sh="sh1", **measured):
    return Record(
        config=cfg,
        measured=measured or {"acc:arc_easy": 0.5, "params": 1000.0},
        fingerprint=fp,
        settings_hash=sh,
        settings={"tasks": ["arc_easy"], "split": "validation"},
        split="validation",
        n_items=100,
        seed=3,
        started=1.5,
        seconds=2.25,
        worker="host:1",
    )


def test_put_get_round_trip(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        i = s.put(rec())
        got = s.get("fp1", "sh1", CFG.key())
        assert got.id == i and got.config == CFG
        assert got.measured == {"acc:arc_easy": 0.5, "params": 1000.0}
        assert (got.split, got.n_items, got.seed, got.started, got.seconds, got.worker) == (
            "validation",
            100,
            3,
            1.5,
            2.25,
            "host:1",
        )
        assert got.settings == {"tasks": ["arc_easy"], "split": "validation"}
    # Reopening sees the committed row.
    with Store(tmp_path / "r.sqlite") as s:
        assert s.count() == 1 and s.get("fp1", "sh1", CFG.key()).measured["acc:arc_easy"] == 0.5


def test_key_is_fingerprint_settings_config(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        a = s.put(rec())
        assert s.put(rec(**{"acc:arc_easy": 0.9})) == a  # same key: the first result stays
        assert s.get("fp1", "sh1", CFG.key()).measured["acc:arc_easy"] == 0.5
        ids = {s.put(rec(fp="fp2")), s.put(rec(sh="sh2")), s.put(rec(cfg=OTHER))}
        assert len(ids | {a}) == 4 and s.count() == 4
        assert s.get("fp2", "sh1", CFG.key()) is not None and s.get("fp2", "sh2", CFG.key()) is None
        assert set(s.get_many("fp1", "sh1", [CFG.key(), OTHER.key(), "nope"])) == {CFG.key(), OTHER.key()}


def test_nan_is_stored_as_null(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        s.put(rec(**{"latency": float("nan"), "params": 3.0}))
        got = s.get("fp1", "sh1", CFG.key()).measured
        assert math.isnan(got["latency"]) and got["params"] == 3.0


def test_runs_are_checked_on_resume(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        run = s.open_run("/runs/a", {"seed": 0, "algorithm": "linas"})
        assert s.open_run("/runs/a", {"algorithm": "linas", "seed": 0}) == run
        with pytest.raises(LlamanasError, match=r"different settings \(seed; it has seed=0\)"):
            s.open_run("/runs/a", {"seed": 1, "algorithm": "linas"})
        e1, e2 = s.put(rec()), s.put(rec(cfg=OTHER))
        s.add_to_run(run, 2, e2)
        s.add_to_run(run, 1, e1)
        s.add_to_run(run, 1, e1)  # replay: idempotent
        assert [(seq, r.config) for seq, r in s.run_records(run)] == [(1, CFG), (2, OTHER)]
        with pytest.raises(LlamanasError, match="diverged at evaluation #1"):
            s.add_to_run(run, 1, e2)
        with pytest.raises(LlamanasError, match="No run '/runs/b'.*runs there: /runs/a"):
            s.run_id("/runs/b")


def test_quality_and_reference(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        run = s.open_run("a", {})
        s.put_quality(run, 1, "accuracy", {"loop": 1, "kendall_tau": 0.5, "mape": float("nan")})
        s.put_quality(run, 1, "accuracy", {"loop": 1, "kendall_tau": 0.6, "mape": 0.1})  # replay replaces
        s.put_quality(run, 2, "accuracy", {"loop": 2, "kendall_tau": 0.7, "mape": 0.1})
        assert [q["kendall_tau"] for q in s.quality(run)] == [0.6, 0.7]
        calls = []

        def compute():
            calls.append(1)
            return {"gold_nll:t": (0.0, 9.5)}

        assert s.reference("fp", "sh", compute) == {"gold_nll:t": (0.0, 9.5)}
        assert s.reference("fp", "sh", compute) == {"gold_nll:t": (0.0, 9.5)} and len(calls) == 1


def _fill(path):
    with Store(path) as s:
        for i in range(40):
            s.put(rec(cfg=SubnetConfig((i,), (64,), (1,)), **{"acc:t": i / 40}))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "header"])
def test_damaged_store_gives_clear_error_and_is_left_intact(tmp_path, damage):
    path = tmp_path / "results.sqlite"
    if damage == "garbage":
        path.write_bytes(b"this is not a database\n" * 100)
    elif damage == "foreign":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
    else:
        _fill(path)
        data = path.read_bytes()
        # truncated: cut mid-page; header: valid magic, page size field garbled
        path.write_bytes(
            data[: len(data) // 2 + 100] if damage == "truncated" else data[:16] + b"\xff" * 84 + data[100:]
        )
    before = path.read_bytes()
    with pytest.raises(LlamanasError) as e:
        s = Store(path)
        s.get_many("fp1", "sh1", ["x"])  # a damaged page may only show on first read
        s.close()
    assert str(path) in str(e.value)
    assert path.read_bytes() == before


def test_directory_and_missing(tmp_path):
    with pytest.raises(LlamanasError, match="is a directory"):
        Store(tmp_path)
    with pytest.raises(LlamanasError, match="does not exist"):
        Store(tmp_path / "none.sqlite", create=False)


def test_atomic_files(tmp_path):
    write_json(tmp_path / "a" / "x.json", {"a": 1})
    write_csv(tmp_path / "a" / "x.csv", ["h1", "h2"], [[1, 2], [3, "x,y"]])
    assert (tmp_path / "a" / "x.json").read_text() == '{\n  "a": 1\n}\n'
    assert (tmp_path / "a" / "x.csv").read_text() == 'h1,h2\n1,2\n3,"x,y"\n'
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.csv", "x.json"]
