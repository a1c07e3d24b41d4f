"""The results store: one SQLite file (WAL) per study output directory.

Only runner parent processes write. Each finished run is one transaction (its row and its
curves together), so a kill at any moment leaves every stored run whole. A runner *claims* a
run before training it (in one transaction: status ``running``, its owner host:pid and a
heartbeat), so several ``scalelab run`` on one directory share the work and never train a
run twice. A claim whose owner is gone (its pid, on this host) or whose heartbeat is older
than :data:`STALE_S` (another host) reads as ``interrupted`` and is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ScalelabError
from .records import COMPLETED, DIVERGED, FINISHED, INTERRUPTED, RUNNING, RunResult, RunSpec

SCHEMA_VERSION = 5
FILENAME = "results.sqlite"
#: Shard stores (``--shard i/k --shard-store``): one file per shard, read with the main one.
SHARD_GLOB = "results.shard-*-of-*.sqlite"
#: A claim from another host whose heartbeat is older than this (seconds) is taken over.
STALE_S = 600.0
#: How often a runner renews the heartbeat of the runs it trains (seconds).
HEARTBEAT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    config      TEXT NOT NULL,   -- fully resolved config (JSON); the id is its hash
    point       TEXT NOT NULL,   -- grid coordinates and seed (JSON)
    metrics     TEXT,            -- JSON object
    error       TEXT,            -- traceback of a failed run
    provenance  TEXT,            -- versions and device (JSON)
    started_at  REAL,
    finished_at REAL,
    batch_group TEXT,            -- runs trained together as one stacked model share this id
    owner       TEXT,            -- host:pid of the runner that claimed it
    heartbeat   REAL             -- last time that runner said it is still training it
);
CREATE TABLE IF NOT EXISTS curves (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step   INTEGER NOT NULL,
    name   TEXT NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, name, step)
);
CREATE TABLE IF NOT EXISTS evaluations (  -- a trained run re-scored under one setting
    run_id  TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    eval_id TEXT NOT NULL,   -- hash of the resolved evaluator config
    config  TEXT NOT NULL,   -- the evaluator config (JSON)
    metrics TEXT NOT NULL,   -- JSON object
    created_at REAL,
    PRIMARY KEY (run_id, eval_id)
);
CREATE TABLE IF NOT EXISTS predictions (  -- the extrapolation ledger of `scalelab next`
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    run_ids    TEXT NOT NULL,   -- the proposed runs (JSON list; every seed and nuisance value)
    prediction TEXT NOT NULL    -- law, the data it was fitted on, prediction, interval (JSON)
);
"""


def damaged(path: Path, what: str) -> ScalelabError:
    """The one line for a store that cannot be used: what is wrong, and how to recover."""
    return ScalelabError(f"{path}: the results store is {what}; restore it from a backup, or "
                         "move it away to start the study over")


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """A damaged or foreign file, as opposed to a locked store, a constraint or a bug."""
    return type(exc) is sqlite3.DatabaseError or "malformed" in str(exc)


class _Connection(sqlite3.Connection):
    """A connection whose every query turns SQLite's damaged-file errors into one line
    naming the store: damage can surface at any query (a cut-off file whose write-ahead log
    was live when it was opened reads fine until a query reaches the missing pages)."""

    path: Path

    def execute(self, *args):
        try:
            return _Rows(super().execute(*args).fetchall(), self.path)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            raise damaged(self.path, f"damaged ({exc})") from None

    def executemany(self, *args):
        try:
            return super().executemany(*args)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            raise damaged(self.path, f"damaged ({exc})") from None


class _Rows(list):
    """A query's rows, fetched at once (so reading them cannot fail later)."""

    def __init__(self, rows: list, path: Path):
        super().__init__(rows)
        self.path = path

    def fetchone(self):
        return self[0] if self else None

    def fetchall(self):
        return list(self)


class Store:
    """Read and write one study's results."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                   factory=_Connection)
        self._db.path = self.path
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if not _is_damage(exc):
                raise
            raise damaged(self.path, f"damaged ({exc})") from None

    def _setup(self) -> None:
        """Open (or create) the schema; a file that is not a store fails here."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        version = self.meta().get("schema_version")
        if version is not None and int(version) > SCHEMA_VERSION:
            raise ScalelabError(f"{self.path}: written by a newer scalelab (schema {version})")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "batch_group" not in columns:  # schema 1 -> 2
            self._db.execute("ALTER TABLE runs ADD COLUMN batch_group TEXT")
        if "owner" not in columns:  # schema 3 -> 4
            self._db.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
        if "heartbeat" not in columns:  # schema 4 -> 5
            self._db.execute("ALTER TABLE runs ADD COLUMN heartbeat REAL")
        if version is None or int(version) < SCHEMA_VERSION:
            self.set_meta(schema_version=SCHEMA_VERSION)

    @classmethod
    def open(cls, out_dir: str | Path, create: bool = False,
             shard: tuple[int, int] | None = None) -> Store | Stores:
        """The directory's store. With ``shard`` (i, k): that shard's own file. Otherwise,
        when shard files are present beside (or instead of) the main file, all of them read
        as one (:class:`Stores`)."""
        out = Path(out_dir)
        path = out / (shard_filename(*shard) if shard else FILENAME)
        shards = [] if shard else sorted(out.glob(SHARD_GLOB))
        if not path.exists():
            if create:
                out.mkdir(parents=True, exist_ok=True)
            elif not shards:
                raise ScalelabError(
                    f"{out}: no results store ({FILENAME}); run `scalelab run STUDY --out {out}` first"
                )
        if create and not path.exists():
            cls._create(path)
        main = cls._checked(path) if path.exists() else None
        if not shards:
            return main
        return Stores(main, [cls._checked(p) for p in shards])

    @classmethod
    def _create(cls, path: Path) -> None:
        """Make a new store whole, beside its place, and link it in: another process opening
        the directory at the same moment sees either no store or a complete one, never a
        half-made file (which would read as a truncated store) or a mode switch in progress."""
        partial = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.new")
        try:
            cls(partial).close()
            os.link(partial, path)
        except FileExistsError:
            pass  # another process made it first: theirs is the store
        finally:
            for leftover in (partial, *(partial.with_name(partial.name + x)
                                        for x in ("-wal", "-shm"))):
                leftover.unlink(missing_ok=True)

    @classmethod
    def _checked(cls, path: Path) -> Store:
        if path.exists():
            damage = _truncation(path)
            if damage:
                raise damaged(path, damage)
        return cls(path)

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        """SQLite's full integrity check (reads every page: on demand, not at every open)."""
        problems = [line for row in self._db.execute("PRAGMA integrity_check")
                    for line in str(row[0]).splitlines() if line.strip() and "***" not in line]
        if problems != ["ok"]:
            more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
            raise damaged(self.path, f"damaged ({problems[0]}{more})")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- meta

    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta"))

    def set_meta(self, **values: Any) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()],
            )

    # ---------------------------------------------------------------- writing

    def claim(self, runs: Iterable[RunSpec], retrain: Iterable[str] = ()) -> list[RunSpec]:
        """Claim the runs this process may train, in one transaction: those not finished (or
        in ``retrain``: finished, to be trained again) and not claimed by another runner
        that is still alive. Returns them (possibly none)."""
        retrain = set(retrain)
        runs = list(runs)
        me, now = owner(), time.time()
        with self._transaction():
            held = {run_id: (status, marked_by, beat) for run_id, status, marked_by, beat
                    in self._db.execute(
                        "SELECT run_id, status, owner, heartbeat FROM runs WHERE run_id IN "
                        f"({_placeholders(runs)})", [r.run_id for r in runs])}
            mine = []
            for run in runs:
                status, marked_by, beat = held.get(run.run_id, (None, None, None))
                if (status in FINISHED and run.run_id not in retrain) or (
                        _live_status(status, marked_by, beat) == RUNNING and marked_by != me):
                    continue
                mine.append(run)
            self._db.executemany(
                "INSERT INTO runs (run_id, status, config, point, started_at, owner, heartbeat) "
                "VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT(run_id) DO UPDATE SET status=excluded.status, "
                "started_at=excluded.started_at, point=excluded.point, owner=excluded.owner, "
                "heartbeat=excluded.heartbeat",
                [(r.run_id, RUNNING, json.dumps(r.config), json.dumps(r.point), now, me, now)
                 for r in mine])
        return mine

    def heartbeat(self, run_ids: Iterable[str]) -> None:
        """Say this runner is still training these runs."""
        ids = list(run_ids)
        if ids:
            with self._transaction():
                self._db.execute(
                    f"UPDATE runs SET heartbeat = ? WHERE owner = ? AND status = ? AND run_id IN "
                    f"({_placeholders(ids)})", [time.time(), owner(), RUNNING, *ids])

    def claims(self) -> list[dict[str, Any]]:
        """Runs claimed by a runner that is still alive: run id, owner, seconds since claimed
        and since its last heartbeat."""
        now = time.time()
        return [{"run_id": run_id, "owner": marked_by, "running_s": now - (started or now),
                 "heartbeat_s": now - (beat or started or now)}
                for run_id, status, marked_by, started, beat in self._db.execute(
                    "SELECT run_id, status, owner, started_at, heartbeat FROM runs "
                    "WHERE status = ? ORDER BY started_at", [RUNNING])
                if _live_status(status, marked_by, beat) == RUNNING]

    def write_result(self, run: RunSpec, result: RunResult) -> None:
        """Store a run's row and curves in one transaction (replacing any earlier attempt)."""
        with self._transaction():
            self._db.execute("DELETE FROM curves WHERE run_id = ?", (run.run_id,))
            self._db.execute(
                "INSERT INTO runs (run_id, status, config, point, metrics, error, provenance, "
                "started_at, finished_at, batch_group) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(run_id) DO UPDATE "
                "SET status=excluded.status, config=excluded.config, point=excluded.point, "
                "metrics=excluded.metrics, error=excluded.error, provenance=excluded.provenance, "
                "finished_at=excluded.finished_at, batch_group=excluded.batch_group, "
                "started_at=COALESCE(runs.started_at, excluded.started_at)",
                (run.run_id, result.status, json.dumps(run.config), json.dumps(run.point),
                 json.dumps(result.metrics), result.error, json.dumps(result.provenance),
                 time.time(), time.time(), result.batch_group),
            )
            self._db.executemany(
                "INSERT INTO curves VALUES (?,?,?,?)",
                [(run.run_id, step, name, value) for step, name, value in result.curves],
            )

    # ---------------------------------------------------------------- reading

    def write_evaluation(self, run_id: str, eval_id: str, config: dict[str, Any],
                         metrics: dict[str, Any]) -> None:
        """Store one re-scoring of a trained run (replacing an earlier one of that setting)."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?)",
                (run_id, eval_id, json.dumps(config), json.dumps(metrics), time.time()))

    def add_predictions(self, predictions: Iterable[dict[str, Any]]) -> None:
        """Record extrapolations in the ledger (each with its ``run_ids``); never edited."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO predictions (created_at, run_ids, prediction) VALUES (?, ?, ?)",
                [(time.time(), json.dumps(p["run_ids"]), json.dumps(p)) for p in predictions])

    def predictions(self) -> list[dict[str, Any]]:
        """The ledger, oldest first: each prediction with its id and time."""
        rows = self._db.execute("SELECT id, created_at, prediction FROM predictions ORDER BY id")
        return [{**json.loads(p), "id": i, "created_at": t} for i, t, p in rows]

    def evaluations(self) -> list[dict[str, Any]]:
        """One row per (run, setting): ids, the run's grid point, the setting, its metrics."""
        rows = self._db.execute(
            "SELECT e.run_id, e.eval_id, e.config, e.metrics, r.point FROM evaluations e "
            "JOIN runs r USING (run_id) ORDER BY e.rowid")
        out = []
        for run_id, eval_id, config, metrics, point in rows:
            record = {"run_id": run_id, "eval_id": eval_id, **json.loads(point)}
            record.update({f"eval.{k}": v for k, v in json.loads(config).items()})
            record.update(json.loads(metrics))
            out.append(record)
        return out

    def configs(self) -> dict[str, dict[str, Any]]:
        """Each stored run's resolved config (nested, as trained)."""
        return {run_id: json.loads(config)
                for run_id, config in self._db.execute("SELECT run_id, config FROM runs")}

    def statuses(self) -> dict[str, str]:
        return {run_id: _live_status(status, marked_by, beat) for run_id, status, marked_by, beat
                in self._db.execute("SELECT run_id, status, owner, heartbeat FROM runs")}

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per run: id, status, grid point, metrics, dotted config, provenance."""
        rows = self._db.execute(
            "SELECT run_id, status, point, metrics, config, provenance, error, started_at, "
            "finished_at, batch_group, owner, heartbeat FROM runs ORDER BY rowid"
        )
        out = []
        for (run_id, status, point, metrics, config, prov, error, started, finished, group,
             marked_by, beat) in rows:
            record: dict[str, Any] = {"run_id": run_id,
                                      "status": _live_status(status, marked_by, beat)}
            record.update(json.loads(point))
            record.update(json.loads(metrics or "{}"))
            record.update(_flatten(json.loads(config)))
            record.update(json.loads(prov or "{}"))
            record.update(error=error, started_at=started, finished_at=finished,
                          batch_group=group)
            out.append(record)
        return out

    def curves(self, run_id: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT run_id, step, name, value FROM curves"
        args: tuple = ()
        if run_id is not None:
            query, args = query + " WHERE run_id = ?", (run_id,)
        rows = self._db.execute(query + " ORDER BY run_id, name, step", args)
        return [dict(zip(("run_id", "step", "name", "value"), row)) for row in rows]

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def shard_filename(index: int, count: int) -> str:
    return f"results.shard-{index}-of-{count}.sqlite"


#: Which of two stored rows of one run to believe: a finished one, then one in flight.
_RANK = {COMPLETED: 3, DIVERGED: 3, RUNNING: 2}


def _better(status: str | None, finished: float | None, than: tuple | None) -> bool:
    if than is None:
        return True
    return (_RANK.get(status, 1), finished or 0.0) > (_RANK.get(than[0], 1), than[1] or 0.0)


class Stores:
    """The main store and the shard stores of one directory, read as one store: a run stored
    in several files counts once, as its finished (then latest) row. Writes of a run go to
    the main store; evaluations wait for ``scalelab merge``."""

    def __init__(self, main: Store | None, shards: list[Store]):
        self.main, self.shards = main, shards
        self.stores = ([main] if main else []) + shards
        self.path = self.stores[0].path

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _writer(self) -> Store:
        if self.main is None:
            raise ScalelabError(f"{self.path.parent}: holds only shard stores; run `scalelab "
                                f"merge {self.path.parent}` first")
        return self.main

    def require_merged(self, *args, **kwargs):
        """Refuse what needs one file (re-scoring writes evaluations of runs in the shards)."""
        raise ScalelabError(f"{self.path.parent}: holds {len(self.shards)} shard store(s); run "
                            f"`scalelab merge {self.path.parent}` first")

    write_evaluation = require_merged

    def set_meta(self, **values: Any) -> None:
        self._writer().set_meta(**values)

    def claim(self, runs, retrain=()):
        """Claims in the main store, of runs no file holds finished (unless retrained)."""
        statuses, retrain = self.statuses(), set(retrain)
        open_runs = [r for r in runs if statuses.get(r.run_id) not in FINISHED
                     or r.run_id in retrain]
        return self._writer().claim(open_runs, retrain)

    def heartbeat(self, run_ids) -> None:
        self._writer().heartbeat(run_ids)

    def write_result(self, run: RunSpec, result: RunResult) -> None:
        self._writer().write_result(run, result)

    def check(self) -> None:
        for store in self.stores:
            store.check()

    def meta(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for store in reversed(self.stores):  # the main store's values win
            merged.update(store.meta())
        return merged

    def _chosen(self) -> dict[str, Store]:
        """Which file holds each run's believed row."""
        best: dict[str, tuple] = {}
        where: dict[str, Store] = {}
        for store in self.stores:
            for run_id, status, finished in store._db.execute(
                    "SELECT run_id, status, finished_at FROM runs"):
                if _better(status, finished, best.get(run_id)):
                    best[run_id], where[run_id] = (status, finished), store
        return where

    def records(self) -> list[dict[str, Any]]:
        where = self._chosen()
        return [r for store in self.stores for r in store.records()
                if where[r["run_id"]] is store]

    def statuses(self) -> dict[str, str]:
        where = self._chosen()
        return {k: v for store in self.stores for k, v in store.statuses().items()
                if where[k] is store}

    def configs(self) -> dict[str, dict[str, Any]]:
        where = self._chosen()
        return {k: v for store in self.stores for k, v in store.configs().items()
                if where[k] is store}

    def curves(self, run_id: str | None = None) -> list[dict[str, Any]]:
        where = self._chosen()
        rows = [c for store in self.stores for c in store.curves(run_id)
                if where[c["run_id"]] is store]
        return sorted(rows, key=lambda c: (c["run_id"], c["name"], c["step"]))

    def evaluations(self) -> list[dict[str, Any]]:
        return [e for store in self.stores for e in store.evaluations()]

    def add_predictions(self, predictions) -> None:
        self._writer().add_predictions(predictions)

    def predictions(self) -> list[dict[str, Any]]:
        return sorted((p for store in self.stores for p in store.predictions()),
                      key=lambda p: p["created_at"])

    def claims(self) -> list[dict[str, Any]]:
        return [c for store in self.stores for c in store.claims()]

    def merge(self) -> int:
        """Fold every shard store into the main one (each run's believed row and its curves,
        evaluations), then remove the shard files; returns how many runs were taken from
        shards.
        Safe to repeat after a crash: it only ever replaces a row by a better one."""
        main = self.main or Store._checked(self.path.parent / FILENAME)
        taken: set[str] = set()
        for shard in self.shards:
            columns = [row[1] for row in shard._db.execute("PRAGMA table_info(runs)")]
            names = ", ".join(columns)
            held = {run_id: (status, finished) for run_id, status, finished in main._db.execute(
                "SELECT run_id, status, finished_at FROM runs")}
            with main._transaction():
                for row in shard._db.execute(f"SELECT {names} FROM runs"):
                    values = dict(zip(columns, row))
                    if not _better(values["status"], values["finished_at"],
                                   held.get(values["run_id"])):
                        continue
                    main._db.execute("DELETE FROM curves WHERE run_id = ?", (values["run_id"],))
                    main._db.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES "
                                     f"({_placeholders(columns)})", row)
                    main._db.executemany(
                        "INSERT INTO curves VALUES (?,?,?,?)",
                        shard._db.execute("SELECT run_id, step, name, value FROM curves "
                                          "WHERE run_id = ?", (values["run_id"],)))
                    taken.add(values["run_id"])
                main._db.executemany(
                    "INSERT OR IGNORE INTO evaluations VALUES (?,?,?,?,?)",
                    shard._db.execute("SELECT run_id, eval_id, config, metrics, created_at "
                                      "FROM evaluations"))
                known = main.meta()
                missing = {k: v for k, v in shard.meta().items() if k not in known}
                if missing:
                    main._db.executemany("INSERT INTO meta VALUES (?, ?)", missing.items())
        for shard in self.shards:
            shard.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{shard.path}{suffix}").unlink(missing_ok=True)
        self.shards, self.stores, self.main = [], [main], main
        return len(taken)


def owner() -> str:
    """This process as a run's owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _live_status(status: str | None, marked_by: str | None, beat: float | None = None
                 ) -> str | None:
    """``interrupted`` for a ``running`` row whose runner is gone: on this host its pid no
    longer exists; on another host its heartbeat is older than :data:`STALE_S`. A row with
    no owner (written before owners were recorded) is interrupted too."""
    if status != RUNNING:
        return status
    if not marked_by:
        return INTERRUPTED
    host, _, pid = marked_by.rpartition(":")
    if host != socket.gethostname():
        fresh = beat is None or time.time() - beat < STALE_S  # no heartbeat: schema 4
        return status if fresh else INTERRUPTED
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return INTERRUPTED
        except PermissionError:  # alive, owned by another user
            pass
    return status


def _truncation(path: Path) -> str | None:
    """What is wrong with a store file whose size its own header contradicts (None if fine).

    SQLite would take a 0-byte file for a new, empty store, and opens a cut-off file without
    complaint until a query reaches the missing pages. Both show in the 100-byte header at no
    cost, unlike an integrity check, which reads the whole file; garbage that is not a
    SQLite file at all SQLite refuses by itself."""
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes): it was truncated or emptied"
    with path.open("rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The header's page count is valid only when written by the same change as the counter;
    # with a live write-ahead log a checkpoint may be growing the file right now.
    try:  # another process's last connection may delete the log between two looks
        live = path.with_name(path.name + "-wal").stat().st_size > 0
    except FileNotFoundError:
        live = False
    if header[24:28] == header[92:96] and not live and size < pages * page_size:
        return f"truncated ({size:,} bytes where its header says {pages * page_size:,})"
    return None


def _placeholders(values: Iterable) -> str:
    return ",".join("?" for _ in values)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
