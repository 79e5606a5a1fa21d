"""The results store: one SQLite file, the only code that writes search results.

Every evaluation is one row, committed the moment it finishes, so a run killed at any point (``kill -9``
included) loses nothing it has finished. A row is keyed by (super-network fingerprint, evaluation-settings
hash, config key): two runs of the same super-network with the same evaluation settings share rows, and
no config is ever evaluated twice for the same key. A run is an ordered list of evaluation ids
(``run_evals``); it is recomputed deterministically on restart and checked against what is stored.

The exported files of a run directory (``run.json``, ``front.json``, ``front.csv``, ``hypervolume.csv``,
``predictors.csv``) are views of the store, written atomically (temporary file + rename) by ``write_*``.

A file that is not a llamanas store, or is damaged, gives a clear error and is never modified.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from llamanas.errors import LlamanasError
from llamanas.supernet.subnet import SubnetConfig

SCHEMA_VERSION = 1
APPLICATION = "llamanas-results"
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,        -- super-network weights (models.fingerprint)
    settings_hash TEXT NOT NULL,      -- evaluation settings (tasks, split, limit, seed, ...)
    config_key TEXT NOT NULL,         -- SubnetConfig.key()
    config TEXT NOT NULL,             -- SubnetConfig JSON
    measured TEXT NOT NULL,           -- JSON {value key: float}: every measured value
    settings TEXT NOT NULL,           -- JSON of the evaluation settings
    split TEXT,
    n_items INTEGER,
    seed INTEGER,
    started REAL NOT NULL,            -- unix time
    seconds REAL NOT NULL,
    worker TEXT,
    UNIQUE (fingerprint, settings_hash, config_key)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,             -- JSON: what makes the run's trajectory (see search.SearchArgs)
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS run_evals (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,             -- 1-based position in the run: the id users see
    eval_id INTEGER NOT NULL REFERENCES evaluations(id),
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS predictor_quality (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    loop INTEGER NOT NULL,
    name TEXT NOT NULL,               -- the predicted value (objective or constraint)
    row TEXT NOT NULL,                -- JSON of the quality row
    PRIMARY KEY (run_id, loop, name)
);
CREATE TABLE IF NOT EXISTS batches (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    loop INTEGER NOT NULL,
    digest TEXT NOT NULL,             -- hash of the run's evaluations the batch was computed from
    payload TEXT NOT NULL,            -- JSON: the proposed configs and their predictions
    PRIMARY KEY (run_id, loop)
);
CREATE TABLE IF NOT EXISTS refs (
    fingerprint TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    ref TEXT NOT NULL,                -- JSON {value key: [low, high]} for hypervolume bounds
    PRIMARY KEY (fingerprint, settings_hash)
);
"""


@dataclass
class Record:
    """One finished evaluation of one config."""

    config: SubnetConfig
    measured: dict[str, float]
    fingerprint: str
    settings_hash: str
    settings: dict = field(default_factory=dict)
    split: str | None = None
    n_items: int | None = None
    seed: int | None = None
    started: float = 0.0
    seconds: float = 0.0
    worker: str | None = None
    id: int | None = None

    @property
    def key(self) -> str:
        return self.config.key()


class Store:
    """An open results store. Use as a context manager, or call ``close``."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        _check_file(self.path, create)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per write.
            self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout = 60000")
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            raise LlamanasError(
                f"Results store {str(path)!r} is damaged or not an SQLite file ({e}); left as is."
            ) from None
        ours = "meta" in tables and self._meta("application") == APPLICATION
        if tables and not ours:
            self.db.close()
            raise LlamanasError(
                f"{str(path)!r} is an SQLite file but not a llamanas results store (tables: "
                f"{', '.join(sorted(tables))}); left as is. Choose another --out or --store."
            )
        if ours:
            version = int(self._meta("schema_version") or 0)
            if version != SCHEMA_VERSION:
                self.db.close()
                raise LlamanasError(
                    f"Results store {str(path)!r} has schema version {version}; this llamanas reads "
                    f"version {SCHEMA_VERSION}."
                )
            try:
                bad = self.db.execute("PRAGMA quick_check").fetchone()[0]
            except sqlite3.DatabaseError as e:
                bad = str(e)
            if bad != "ok":
                self.db.close()
                raise LlamanasError(f"Results store {str(path)!r} is damaged ({bad}); left as is.")
        try:
            # WAL: readers (``llamanas front``) never block the writer; FULL sync: a commit survives a crash.
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            if not ours:
                with self._tx():
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('application', ?), ('schema_version', ?)",
                        (APPLICATION, str(SCHEMA_VERSION)),
                    )
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise LlamanasError(f"Results store {str(path)!r} cannot be written ({e}).") from None

    # --- plumbing ------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _tx(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- evaluations ---------------------------------------------------------------------------
    def put(self, rec: Record) -> int:
        """Commit one evaluation now; returns its id (the existing id if the same key is stored)."""
        with self._tx():
            self.db.execute(
                "INSERT OR IGNORE INTO evaluations (fingerprint, settings_hash, config_key, config, measured, "
                "settings, split, n_items, seed, started, seconds, worker) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.fingerprint,
                    rec.settings_hash,
                    rec.key,
                    rec.config.to_json(),
                    json.dumps(_finite(rec.measured), sort_keys=True),
                    json.dumps(rec.settings, sort_keys=True),
                    rec.split,
                    rec.n_items,
                    rec.seed,
                    rec.started,
                    rec.seconds,
                    rec.worker,
                ),
            )
            row = self.db.execute(
                "SELECT id FROM evaluations WHERE fingerprint = ? AND settings_hash = ? AND config_key = ?",
                (rec.fingerprint, rec.settings_hash, rec.key),
            ).fetchone()
        rec.id = int(row[0])
        return rec.id

    def get_many(self, fingerprint: str, settings_hash: str, keys: Iterable[str]) -> dict[str, Record]:
        """Stored evaluations among ``keys`` for this super-network and these settings."""
        keys = list(keys)
        out: dict[str, Record] = {}
        for i in range(0, len(keys), 500):  # SQLite limits the number of ? parameters
            part = keys[i : i + 500]
            rows = self.db.execute(
                f"SELECT {_COLS} FROM evaluations WHERE fingerprint = ? AND settings_hash = ? "
                f"AND config_key IN ({','.join('?' * len(part))})",
                (fingerprint, settings_hash, *part),
            )
            out.update((r.key, r) for r in map(_record, rows))
        return out

    def get(self, fingerprint: str, settings_hash: str, key: str) -> Record | None:
        return self.get_many(fingerprint, settings_hash, [key]).get(key)

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])

    # --- runs ----------------------------------------------------------------------------------
    def open_run(self, name: str, config: dict) -> int:
        """The id of run ``name``; created with ``config``, or checked against the stored one."""
        row = self.db.execute("SELECT id, config FROM runs WHERE name = ?", (name,)).fetchone()
        if row is None:
            with self._tx():
                cur = self.db.execute(
                    "INSERT INTO runs (name, config, created) VALUES (?, ?, ?)",
                    (name, json.dumps(config, sort_keys=True), time.time()),
                )
            return int(cur.lastrowid)
        stored = json.loads(row[1])
        config = json.loads(json.dumps(config, sort_keys=True))
        if stored != config:
            diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            was = ", ".join(f"{k}={_short(stored.get(k))}" for k in diff)
            raise LlamanasError(
                f"Run {name!r} in {self.path} was started with different settings ({', '.join(diff)}; it has "
                f"{was}); resume it with the same settings or use a new --out."
            )
        return int(row[0])

    def add_to_run(self, run_id: int, seq: int, eval_id: int) -> None:
        """Record that evaluation ``eval_id`` is number ``seq`` of the run (idempotent, checked)."""
        with self._tx():
            row = self.db.execute(
                "SELECT eval_id FROM run_evals WHERE run_id = ? AND seq = ?", (run_id, seq)
            ).fetchone()
            if row is None:
                self.db.execute("INSERT INTO run_evals VALUES (?, ?, ?)", (run_id, seq, eval_id))
            elif int(row[0]) != eval_id:
                raise LlamanasError(
                    f"Run history diverged at evaluation #{seq}: the store has evaluation {row[0]}, the "
                    f"replayed search proposed evaluation {eval_id}. The search is not reproducible here "
                    "(different machine or library versions?); use a new --out."
                )

    def run_records(self, run_id: int) -> list[tuple[int, Record]]:
        """(seq, record) of a run, in seq order."""
        rows = self.db.execute(
            f"SELECT run_evals.seq, {_COLS} FROM run_evals JOIN evaluations ON evaluations.id = run_evals.eval_id "
            "WHERE run_evals.run_id = ? ORDER BY run_evals.seq",
            (run_id,),
        )
        return [(int(r[0]), _record(r[1:])) for r in rows]

    def run_id(self, name: str) -> int:
        row = self.db.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
        if row is None:
            names = [r[0] for r in self.db.execute("SELECT name FROM runs")]
            raise LlamanasError(f"No run {name!r} in {self.path}; runs there: {', '.join(names) or 'none'}.")
        return int(row[0])

    # --- predictor quality and references ------------------------------------------------------
    def put_quality(self, run_id: int, loop: int, name: str, row: dict) -> None:
        with self._tx():
            self.db.execute(
                "INSERT OR REPLACE INTO predictor_quality VALUES (?, ?, ?, ?)",
                (run_id, loop, name, json.dumps(_finite(row), sort_keys=True)),
            )

    def quality(self, run_id: int) -> list[dict]:
        rows = self.db.execute(
            "SELECT row FROM predictor_quality WHERE run_id = ? ORDER BY loop, rowid", (run_id,)
        )
        return [json.loads(r[0]) for r in rows]

    def get_batch(self, run_id: int, loop: int, digest: str) -> dict | None:
        """A batch proposed earlier from exactly the same evaluations (replay shortcut), or None."""
        row = self.db.execute(
            "SELECT payload FROM batches WHERE run_id = ? AND loop = ? AND digest = ?", (run_id, loop, digest)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def put_batch(self, run_id: int, loop: int, digest: str, payload: dict) -> None:
        with self._tx():
            self.db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?)",
                (run_id, loop, digest, json.dumps(payload, sort_keys=True)),
            )

    def reference(self, fingerprint: str, settings_hash: str, compute) -> dict[str, tuple[float, float]]:
        """Hypervolume bounds for these evaluations: stored once, shared by every run that uses them."""
        row = self.db.execute(
            "SELECT ref FROM refs WHERE fingerprint = ? AND settings_hash = ?", (fingerprint, settings_hash)
        ).fetchone()
        if row is None:
            ref = {k: [float(a), float(b)] for k, (a, b) in compute().items()}
            with self._tx():
                self.db.execute(
                    "INSERT OR IGNORE INTO refs VALUES (?, ?, ?)",
                    (fingerprint, settings_hash, json.dumps(ref, sort_keys=True)),
                )
            row = self.db.execute(
                "SELECT ref FROM refs WHERE fingerprint = ? AND settings_hash = ?",
                (fingerprint, settings_hash),
            ).fetchone()
        return {k: (float(a), float(b)) for k, (a, b) in json.loads(row[0]).items()}


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *rest):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


_COLS = "id, fingerprint, settings_hash, config, measured, settings, split, n_items, seed, started, seconds, worker"


def _record(r) -> Record:
    return Record(
        id=int(r[0]),
        fingerprint=r[1],
        settings_hash=r[2],
        config=SubnetConfig.from_json(r[3]),
        measured={k: (math.nan if v is None else float(v)) for k, v in json.loads(r[4]).items()},
        settings=json.loads(r[5]),
        split=r[6],
        n_items=r[7],
        seed=r[8],
        started=r[9],
        seconds=r[10],
        worker=r[11],
    )


def _short(v, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def _finite(d: dict) -> dict:
    """JSON has no NaN/inf: store them as null (read back as NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _check_file(path: Path, create: bool) -> None:
    """Refuse anything that is not an SQLite file before SQLite touches it."""
    if path.is_dir():
        raise LlamanasError(f"Results store {str(path)!r} is a directory; expected an SQLite file.")
    if not path.exists():
        if not create:
            raise LlamanasError(f"Results store {str(path)!r} does not exist.")
        return
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head and head != _SQLITE_MAGIC:
        raise LlamanasError(
            f"Results store {str(path)!r} is not an SQLite file (damaged, or some other file); left as is."
        )
    if not head and path.stat().st_size == 0 and not create:
        raise LlamanasError(f"Results store {str(path)!r} is empty.")


# ------------------------------------------------------------------------------------------------------
# Run-directory files (atomic writes)
# ------------------------------------------------------------------------------------------------------


def write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | Path, header: list[str], rows: Iterable[Iterable]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(path, buf.getvalue())
