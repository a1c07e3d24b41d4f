"""The results store: one SQLite file (WAL) per study output directory.

Only runner parent processes write. Each finished run is one transaction (its row and its
curves together), so a kill at any moment leaves every stored run whole, and a finished
result is only ever replaced by another finished one (a retrain that fails or is killed
keeps the completed row it meant to redo).

Runners and claims
------------------
A runner *claims* a run before training it, in one transaction, so several ``scalelab run``
on one directory share the work and never train a run twice. A claim names the runner by a
*token*: a random string drawn once per process (host and pid are kept beside it for people
only: two containers sharing a volume are both pid 1, a pid is reused after its process
dies, and neither may decide who owns a claim). Before storing a result the runner checks,
in the storing transaction, that the claim is still its own; if another runner took the run
over meanwhile, the result is dropped (the store keeps the other's).

Whether a claim's runner is alive is judged without comparing clocks of different machines:

1. **Its lock.** A runner holds an exclusive ``flock`` on ``.scalelab-runners/TOKEN.lock``
   beside the store for as long as it lives; the kernel (or the network filesystem's lock
   manager) releases it when the process dies, however it dies. A lock nobody holds, or a
   lock file that is gone, means the runner is gone: its claims read ``interrupted`` and the
   next runner takes them over at once. This is the same machinery SQLite's own locking
   relies on, and it sees through PID namespaces and pid reuse.
2. **Its heartbeat counter**, for a runner whose lock is held but which has stopped working
   (SIGSTOP, a hung machine, a filesystem whose locks cannot be probed): every
   :data:`HEARTBEAT_S` seconds a runner adds one to its counter in the ``runners`` table.
   An observer records in ``sightings`` the counter it saw and when, by *its own machine's*
   monotonic clock (keyed by the kernel's boot id, so only readings of one clock are ever
   compared). A counter seen unchanged for :data:`STALE_S` seconds by one clock means the
   runner has stopped, whatever the wall clocks of the two machines say. SQLite's own time
   functions would not do: they read the wall clock of whichever process runs the query,
   which is exactly what differs between hosts. A stale runner's claims are taken over by
   a compare-and-set in one transaction; if it resumes, its check before storing finds the
   claim gone.

Observers that may write (runners, in every claim and with every heartbeat) record
sightings; readers (``status``, reports) only judge from them.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import secrets
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ScalelabError
from .outdir import FILENAME, SHARD_GLOB, OutDir, shard_filename  # noqa: F401 (re-exported)
from .records import COMPLETED, DIVERGED, FINISHED, INTERRUPTED, PRUNED, RUNNING, RunResult, RunSpec

try:  # POSIX; elsewhere liveness rests on heartbeats alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

SCHEMA_VERSION = 7
#: A runner whose heartbeat counter one machine has seen unchanged for this long (seconds, by
#: that machine's own clock) has stopped: its claims are taken over.
STALE_S = 600.0
#: How often a runner adds one to its heartbeat counter (seconds).
HEARTBEAT_S = 30.0
#: What :meth:`Store.write_result` did: stored the result; kept the finished result already
#: stored (the new one did not finish); or stored nothing, another runner having taken the
#: run over.
STORED, KEPT, LOST = "stored", "kept", "lost"

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
    owner       TEXT,            -- host:pid of the runner that claimed it (for people)
    heartbeat   REAL,            -- unused since schema 6 (liveness: the runners table)
    token       TEXT,            -- the runner training it now (runners.token), else NULL
    claimed_at  REAL             -- when that runner claimed it, by its own clock
);
CREATE TABLE IF NOT EXISTS runners (  -- runners that claimed runs in this store
    token      TEXT PRIMARY KEY,  -- random, drawn once per runner process
    host       TEXT,              -- for people: where it runs
    pid        INTEGER,           -- for people: its pid (in its own PID namespace)
    started_at REAL,              -- its own clock, for people
    beats      INTEGER NOT NULL DEFAULT 0,  -- heartbeats so far (one every HEARTBEAT_S)
    beat_at    REAL               -- its own clock at its last beat, for people
);
CREATE TABLE IF NOT EXISTS sightings (  -- a runner's counter as one machine's clock saw it
    token   TEXT NOT NULL,
    clock   TEXT NOT NULL,   -- the observing machine's clock (its kernel's boot id)
    beats   INTEGER NOT NULL,
    seen_at REAL NOT NULL,   -- when that clock first saw this value (monotonic seconds)
    PRIMARY KEY (token, clock)
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
CREATE TABLE IF NOT EXISTS rungs (  -- a run's validation loss at a rung of a halving search
    run_id   TEXT NOT NULL,
    shape    TEXT NOT NULL,   -- its scientific point (JSON), the cohort it is ranked in
    setting  TEXT NOT NULL,   -- its nuisance values (JSON)
    rung     INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    val_loss REAL,            -- NULL: not finite
    PRIMARY KEY (run_id, rung)
);
CREATE TABLE IF NOT EXISTS promotions (  -- each setting's decision at each rung, made once
    shape    TEXT NOT NULL,
    setting  TEXT NOT NULL,
    rung     INTEGER NOT NULL,
    promoted INTEGER NOT NULL,  -- 1: trains on to the next rung; 0: pruned here
    rank     INTEGER NOT NULL,  -- its place (from 1) among the settings at the rung then
    cohort   INTEGER NOT NULL,  -- how many settings of its shape had reached the rung then
    PRIMARY KEY (shape, setting, rung)
);
"""

#: Columns added after schema 1, in order: (column, its type, the schema that added it).
_ADDED_COLUMNS = (("batch_group", "TEXT", 2), ("owner", "TEXT", 4), ("heartbeat", "REAL", 5),
                  ("token", "TEXT", 6), ("claimed_at", "REAL", 6))


#: The study's ``analysis:`` block as read from a store that recorded none (or only part).
_ANALYSIS_DEFAULTS = {"metric": "test_loss", "compare_metric": "test_acc", "size": "n_params",
                      "forms": ["auto"]}


@dataclass(frozen=True)
class StudyMeta:
    """What the store records about the study its runs belong to (its ``meta`` table), typed.

    Written by ``scalelab run`` (everything but ``evaluations``) and ``scalelab evaluate``
    (``evaluations``) through :meth:`Store.set_meta`, and read through
    :meth:`Store.study_meta`. Stores written by older versions lack some keys: the defaults
    here are the one place that says what a missing key means."""

    study: str = ""                       # the study's name ("" for a store without one)
    source: str | None = None             # the study file as last run (absolute path)
    axes: dict[str, str] = field(default_factory=dict)   # axis label -> config path
    grid: dict[str, list] = field(default_factory=dict)  # axis label -> its grid values
    nuisance: list[str] = field(default_factory=list)    # labels of the nuisance axes
    analysis: dict[str, Any] = field(default_factory=dict)  # the study's analysis: block
    methods: dict[str, dict] = field(default_factory=dict)  # method name -> declaration
    run_ids: list[str] | None = None      # the study's runs; None: stored before ids were kept
    quick: bool = False                   # run with --quick (its grid replaces the file's)
    evaluations: list[dict] = field(default_factory=list)  # settings of `scalelab evaluate`
    design: dict | None = None            # an IsoFLOP design: {budgets, size, data} (labels)
    schema_version: int | None = None     # the store's schema (see SCHEMA_VERSION)

    #: Keys stored as plain text (the others as JSON).
    _TEXT = ("study", "source")

    @classmethod
    def decode(cls, stored: Mapping[str, str]) -> StudyMeta:
        """From the ``meta`` table's raw values (keys it does not know are ignored)."""
        values = {}
        for f in fields(cls):
            if f.name in stored:
                raw = stored[f.name]
                values[f.name] = raw if f.name in cls._TEXT else json.loads(raw)
        return cls(**values)

    @classmethod
    def coerce(cls, meta: StudyMeta | Mapping[str, str]) -> StudyMeta:
        """``meta`` as a :class:`StudyMeta` (a mapping: the ``meta`` table's raw values)."""
        return meta if isinstance(meta, StudyMeta) else cls.decode(meta)

    @classmethod
    def encode(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(key, stored text) for each of ``values``; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"not study meta: {', '.join(unknown)} (known: {sorted(known)})")
        return [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()]

    @property
    def settings(self) -> dict[str, Any]:
        """The ``analysis:`` block, with the defaults of a store that recorded none."""
        return _ANALYSIS_DEFAULTS | self.analysis

    @property
    def roles(self) -> dict[str, str | None]:
        """Each method's declared comparison role (empty for a store written before roles
        were recorded: ``scalelab run`` on it again records them)."""
        return {name: d.get("role") for name, d in self.methods.items()}

    @property
    def shape_axes(self) -> list[str]:
        """Axis labels that are not nuisance axes."""
        return [a for a in self.axes if a not in self.nuisance]


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


def _connect(target: str | Path, path: Path, **kwargs) -> _Connection:
    db = sqlite3.connect(target, timeout=60, isolation_level=None, factory=_Connection,
                         **kwargs)
    db.path = path
    return db


class BaseStore(ABC):
    """What every results store offers, one file (:class:`Store`) or a directory's main and
    shard files read as one (:class:`Stores`): claims and results written, runs, curves,
    evaluations and the ledger read, the study's meta typed (:class:`StudyMeta`)."""

    path: Path
    readonly: bool

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @abstractmethod
    def check(self) -> None:
        """SQLite's full integrity check of every file."""

    # meta
    @abstractmethod
    def meta(self) -> dict[str, str]:
        """The ``meta`` table's raw text (read it typed with :meth:`study_meta`)."""

    def study_meta(self) -> StudyMeta:
        """What the store records about its study, typed (defaults for keys it lacks)."""
        return StudyMeta.decode(self.meta())

    @abstractmethod
    def set_meta(self, **values: Any) -> None: ...

    # runners and writing
    @abstractmethod
    def register(self) -> str: ...

    @abstractmethod
    def release(self) -> None: ...

    @abstractmethod
    def heartbeat(self, run_ids: Iterable[str] = ()) -> None: ...

    @abstractmethod
    def observe(self) -> None: ...

    @abstractmethod
    def runners(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def claim(self, runs: Iterable[RunSpec],
              retrain: Mapping[str, float | None] | Iterable[str] = ()) -> list[RunSpec]: ...

    @abstractmethod
    def owns(self, run_id: str) -> bool: ...

    @abstractmethod
    def claims(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def write_result(self, run: RunSpec, result: RunResult) -> str: ...

    @abstractmethod
    def write_evaluation(self, run_id: str, eval_id: str, config: dict[str, Any],
                         metrics: dict[str, Any]) -> None: ...

    @abstractmethod
    def add_predictions(self, predictions: Iterable[dict[str, Any]]) -> None: ...

    @abstractmethod
    def record_rung(self, rung: int, step: int, entries: Iterable[tuple[str, str, str, float]],
                    decide: Callable[[dict[str, list[float]], str, str], tuple[bool, int, int]]
                    ) -> dict[str, bool]:
        """Record runs' validation losses at a rung of a halving search and return whether
        each run's setting trains on (see :meth:`Store.record_rung`)."""

    @abstractmethod
    def rung_records(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(every run's recorded rungs, every setting's decision at each rung)."""

    # reading
    @abstractmethod
    def predictions(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def evaluations(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def configs(self) -> dict[str, dict[str, Any]]: ...

    @abstractmethod
    def statuses(self) -> dict[str, str]: ...

    @abstractmethod
    def finished_at(self) -> dict[str, float | None]: ...

    @abstractmethod
    def records(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def curves(self, run_id: str | None = None) -> list[dict[str, Any]]: ...


class Store(BaseStore):
    """Read and write one study's results.

    A store on read-only storage (an archive, a read-only mount, a file not yours to write)
    is read from a copy in memory: every reading command works, and anything that would
    write is refused in one line. A store written by a newer scalelab is refused before
    anything touches it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._claimed: set[str] = set()   # runs this connection claimed (for write_result)
        self._registered = False
        self._setting_up = True
        exists = self.path.exists()
        self.readonly = exists and not _writable(self.path)
        self._file: tuple[int, int] | None = None
        try:
            self._db = self._open_readonly() if self.readonly else _connect(self.path, self.path)
            try:
                self._setup()
            except BaseException:
                self._db.close()
                raise
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            raise damaged(self.path, f"damaged ({exc})") from None
        self._setting_up = False
        if not self.readonly:
            self._file = _file_id(self.path)
            with _open_lock:
                _open_here[self._file] = _open_here.get(self._file, 0) + 1

    def _open_readonly(self) -> _Connection:
        """The store copied into memory, read without writing a byte beside it: in place
        when SQLite can read it so (its write-ahead log's index exists or can be made),
        else from a copy of the file and its log in a temporary folder."""
        memory = _connect(":memory:", self.path)
        try:
            source = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True)
            try:
                source.backup(memory)
            finally:
                source.close()
        except sqlite3.OperationalError:  # a log index that cannot be made on this storage
            with tempfile.TemporaryDirectory(prefix="scalelab-readonly-") as folder:
                copy = Path(folder) / self.path.name
                shutil.copyfile(self.path, copy)
                log = self.path.with_name(self.path.name + "-wal")
                if log.exists():
                    shutil.copyfile(log, copy.with_name(copy.name + "-wal"))
                source = sqlite3.connect(copy)
                try:
                    source.backup(memory)
                finally:
                    source.close()
        return memory

    def _version(self) -> int | None:
        """The schema version the store says it has, read before anything is written."""
        tables = {name for (name,) in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            return None
        try:
            return int(str(row[0]).strip())
        except ValueError:
            raise damaged(self.path, f"unreadable (its schema version is {row[0]!r}, not a "
                                     "whole number)") from None

    def _setup(self) -> None:
        """Check the schema version (touching nothing), then open (or create) the schema;
        a file that is not a store fails here."""
        version = self._version()
        if version is not None and version > SCHEMA_VERSION:
            raise ScalelabError(
                f"{self.path}: written by a newer scalelab (store schema {version}; this one "
                f"reads up to {SCHEMA_VERSION}); upgrade scalelab to use it (the store was left "
                "as it is)")
        if not self.readonly:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        for column, kind, _ in _ADDED_COLUMNS:
            if column not in columns:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        if version is None or version < SCHEMA_VERSION:
            self.set_meta(schema_version=SCHEMA_VERSION)

    @classmethod
    def open(cls, out_dir: str | Path, create: bool = False,
             shard: tuple[int, int] | None = None) -> BaseStore:
        """The directory's store. With ``shard`` (i, k): that shard's own file. Otherwise,
        when shard files are present beside (or instead of) the main file, all of them read
        as one (:class:`Stores`)."""
        out = Path(out_dir)
        path = OutDir(out).shard_store(*shard) if shard else OutDir(out).store
        shards = [] if shard else OutDir(out).shard_stores()
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
        try:
            return Stores(main, [cls._checked(p) for p in shards])
        except BaseException:
            if main is not None:
                main.close()
            raise

    @classmethod
    def _create(cls, path: Path) -> None:
        """Make a new store whole, beside its place, and link it in: another process opening
        the directory at the same moment, or after a kill at any moment, sees either no
        store or a complete one, never a half-made file (which would read as a truncated
        store) or a mode switch in progress."""
        partial = path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
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
        # Not a file this process has open already: closing any descriptor of it would drop
        # the locks SQLite holds on it (POSIX locks belong to the process), and another
        # process could then take itself for the last connection and remove the live log.
        if path.exists() and _file_id(path) not in _open_here:
            damage = _truncation(path)
            if damage:
                raise damaged(path, damage)
        return cls(path)

    def close(self) -> None:
        self._db.close()
        with _open_lock:
            if self._file in _open_here:
                _open_here[self._file] -= 1
                if not _open_here[self._file]:
                    del _open_here[self._file]
        self._file = None

    def check(self) -> None:
        """SQLite's full integrity check (reads every page: on demand, not at every open)."""
        problems = [line for row in self._db.execute("PRAGMA integrity_check")
                    for line in str(row[0]).splitlines() if line.strip() and "***" not in line]
        if problems != ["ok"]:
            more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
            raise damaged(self.path, f"damaged ({problems[0]}{more})")

    @classmethod
    def at(cls, path: Path, create: bool = False) -> Store:
        """The store file at ``path`` (made whole first, with ``create``, if it is missing)."""
        if create and not path.exists():
            cls._create(path)
        return cls._checked(path)

    # ---------------------------------------------------------------- meta

    def meta(self) -> dict[str, str]:
        """The ``meta`` table's raw text (read it typed with :meth:`study_meta`)."""
        return dict(self._db.execute("SELECT key, value FROM meta"))

    def set_meta(self, **values: Any) -> None:
        """Record fields of :class:`StudyMeta` (others are refused); the rest stay."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                StudyMeta.encode(values),
            )

    # ---------------------------------------------------------------- runners

    def register(self) -> str:
        """Make this process a runner of this store (its lock held, its row in ``runners``);
        returns its token. Idempotent."""
        me = _me()
        if not self._registered:
            self._transaction()  # refused on read-only storage, before any lock file is made
            _hold_lock(self.path.parent)
            self._registered = True
            with self._transaction():
                self._db.execute(
                    "INSERT INTO runners (token, host, pid, started_at, beats, beat_at) "
                    "VALUES (?,?,?,?,0,?) ON CONFLICT(token) DO NOTHING",
                    (me.token, me.host, me.pid, time.time(), time.time()))
        return me.token

    def release(self) -> None:
        """This runner is done with the store: runs it claimed and did not store read as
        interrupted at once (a finished row it was retraining keeps its result), and its
        row and lock are removed. Best effort: a runner that cannot say so (a store gone or
        locked) is seen gone anyway once its lock is released."""
        if not self._registered:
            return
        token = _me().token
        try:
            with self._transaction():
                self._db.execute("UPDATE runs SET status = ?, token = NULL WHERE token = ? AND "
                                 "status = ?", (INTERRUPTED, token, RUNNING))
                self._db.execute("UPDATE runs SET token = NULL WHERE token = ?", (token,))
                self._db.execute("DELETE FROM runners WHERE token = ?", (token,))
                self._db.execute("DELETE FROM sightings WHERE token = ?", (token,))
        except (ScalelabError, sqlite3.Error):
            pass
        finally:
            self._registered = False
            _drop_lock(self.path.parent)

    def heartbeat(self, run_ids: Iterable[str] = ()) -> None:
        """Say this runner is still working (one more beat on its counter), and note what
        this machine sees of the other runners' counters."""
        with self._transaction():
            self._db.execute("UPDATE runners SET beats = beats + 1, beat_at = ? WHERE token = ?",
                             (time.time(), _me().token))
            self._observe()

    def observe(self) -> None:
        """Note what this machine sees of the other runners' heartbeat counters (a store
        that can be written; readers only judge from what was noted)."""
        if not self.readonly:
            with self._transaction():
                self._observe()

    def _observe(self) -> None:
        clock, now, mine = _clock_id(), time.monotonic(), _me().token
        seen = dict(self._db.execute("SELECT token, beats FROM sightings WHERE clock = ?",
                                     (clock,)))
        for token, beats in self._db.execute("SELECT token, beats FROM runners"):
            if token == mine:
                continue
            if _lock_state(self.path.parent, token) == "free":  # gone for certain
                self._db.execute("DELETE FROM runners WHERE token = ?", (token,))
                self._db.execute("DELETE FROM sightings WHERE token = ?", (token,))
            elif seen.get(token) != beats:
                self._db.execute(
                    "INSERT INTO sightings VALUES (?,?,?,?) ON CONFLICT(token, clock) DO "
                    "UPDATE SET beats = excluded.beats, seen_at = excluded.seen_at",
                    (token, clock, beats, now))

    def _judge(self) -> _Judge:
        beats = dict(self._db.execute("SELECT token, beats FROM runners"))
        seen = {t: (b, at) for t, b, at in self._db.execute(
            "SELECT token, beats, seen_at FROM sightings WHERE clock = ?", (_clock_id(),))}
        return _Judge(self.path.parent, beats, seen)

    def runners(self) -> list[dict[str, Any]]:
        """Runners registered in this store that are still alive: token, host, pid."""
        judge = self._judge()
        return [{"token": token, "host": host, "pid": pid, "store": str(self.path)}
                for token, host, pid in self._db.execute("SELECT token, host, pid FROM runners")
                if judge.alive(token)]

    # ---------------------------------------------------------------- writing

    def claim(self, runs: Iterable[RunSpec],
              retrain: Mapping[str, float | None] | Iterable[str] = ()) -> list[RunSpec]:
        """Claim the runs this process may train, in one transaction (a compare-and-set:
        what it read is what it replaces): those not finished and not claimed by another
        runner that is alive. ``retrain`` names finished runs to train again, each with the
        ``finished_at`` of the row the caller saw: a run stored again since (another runner
        retrained it) is left alone. A retrained run keeps its finished row until a new
        result finishes. Returns the claimed runs (possibly none)."""
        if not isinstance(retrain, Mapping):
            retrain = {run_id: _ANY for run_id in retrain}
        runs = list(runs)
        token = self.register()
        me, now = _me(), time.time()
        with self._transaction():
            self._observe()
            judge = self._judge()
            held = {run_id: (status, holder, finished) for run_id, status, holder, finished
                    in self._db.execute(
                        "SELECT run_id, status, token, finished_at FROM runs WHERE run_id IN "
                        f"({_placeholders(runs)})", [r.run_id for r in runs])}
            fresh, again = [], []
            for run in runs:
                status, holder, finished = held.get(run.run_id, (None, None, None))
                if holder and holder != token and judge.alive(holder):
                    continue
                if status in FINISHED:
                    seen = retrain.get(run.run_id, _NOT)
                    if seen is _NOT or (seen is not _ANY and seen != finished):
                        continue
                    again.append(run)
                else:
                    fresh.append(run)
            self._db.executemany(
                "INSERT INTO runs (run_id, status, config, point, started_at, owner, token, "
                "claimed_at) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(run_id) DO UPDATE SET status=excluded.status, "
                "started_at=excluded.started_at, point=excluded.point, owner=excluded.owner, "
                "token=excluded.token, claimed_at=excluded.claimed_at",
                [(r.run_id, RUNNING, json.dumps(r.config), json.dumps(r.point), now,
                  f"{me.host}:{me.pid}", token, now) for r in fresh])
            self._db.executemany(
                "UPDATE runs SET owner = ?, token = ?, claimed_at = ? WHERE run_id = ?",
                [(f"{me.host}:{me.pid}", token, now, r.run_id) for r in again])
        mine = {r.run_id for r in fresh + again}
        self._claimed |= mine
        return [r for r in runs if r.run_id in mine]

    def owns(self, run_id: str) -> bool:
        """Whether this runner's claim on the run still stands (no one took it over)."""
        row = self._db.execute("SELECT token FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row is not None and row[0] == _me().token

    def claims(self) -> list[dict[str, Any]]:
        """Runs a live runner is training now: run id, ``retraining`` (a finished run being
        trained again), the runner's host:pid and token, how long it has held the claim by
        its own clock, its heartbeat count, and for how long this machine has seen that count
        unchanged (None: not watched from here yet)."""
        judge = self._judge()
        rows = self._db.execute(
            "SELECT r.run_id, r.status, r.owner, r.token, r.claimed_at, r.started_at, "
            "n.beat_at, n.beats FROM runs r LEFT JOIN runners n ON n.token = r.token "
            "WHERE r.token IS NOT NULL ORDER BY r.claimed_at")
        out, now = [], time.time()
        for run_id, status, marked_by, token, claimed, started, beat_at, beats in rows:
            if not judge.alive(token):
                continue
            since = claimed or started or now  # the runner's clock: compared with its own
            until = now if token == judge.me else max(beat_at or since, since)
            out.append({"run_id": run_id, "retraining": status in FINISHED, "owner": marked_by,
                        "token": token, "running_s": until - since, "heartbeats": beats,
                        "heartbeat_s": judge.unchanged_for(token)})
        return out

    def write_result(self, run: RunSpec, result: RunResult) -> str:
        """Store a run's row and curves in one transaction (replacing any earlier attempt);
        returns :data:`STORED`. Two cases store nothing: a run this connection claimed whose
        claim another runner has taken over since (:data:`LOST`: the other's result stands),
        and a result that did not finish where a finished one is stored (:data:`KEPT`: a
        retrain of a completed run that failed or was interrupted never replaces it)."""
        token = _me().token
        with self._transaction():
            row = self._db.execute("SELECT status, token FROM runs WHERE run_id = ?",
                                   (run.run_id,)).fetchone()
            status, holder = row if row else (None, None)
            claimed = run.run_id in self._claimed
            self._claimed.discard(run.run_id)
            if claimed and holder != token:
                return LOST
            if status in FINISHED and result.status not in FINISHED:
                self._db.execute("UPDATE runs SET token = NULL WHERE run_id = ? AND token = ?",
                                 (run.run_id, token))
                return KEPT
            self._db.execute("DELETE FROM curves WHERE run_id = ?", (run.run_id,))
            self._db.execute(
                "INSERT INTO runs (run_id, status, config, point, metrics, error, provenance, "
                "started_at, finished_at, batch_group) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(run_id) DO UPDATE "
                "SET status=excluded.status, config=excluded.config, point=excluded.point, "
                "metrics=excluded.metrics, error=excluded.error, provenance=excluded.provenance, "
                "finished_at=excluded.finished_at, batch_group=excluded.batch_group, "
                "started_at=COALESCE(runs.started_at, excluded.started_at), token=NULL",
                (run.run_id, result.status, json.dumps(run.config), json.dumps(run.point),
                 json.dumps(result.metrics), result.error, json.dumps(result.provenance),
                 time.time(), time.time(), result.batch_group),
            )
            self._db.executemany(
                "INSERT INTO curves VALUES (?,?,?,?)",
                [(run.run_id, step, name, value) for step, name, value in result.curves],
            )
        return STORED

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

    def record_rung(self, rung: int, step: int, entries: Iterable[tuple[str, str, str, float]],
                    decide: Callable[[dict[str, list[float]], str, str], tuple[bool, int, int]]
                    ) -> dict[str, bool]:
        """Record each (run id, shape, setting, validation loss) at rung ``rung`` (reached at
        ``step``), and return for each run whether its setting trains on. A setting's
        decision at a rung is made once, in this transaction, by ``decide(losses, setting,
        shape)``
        over the losses of every setting of its shape recorded at the rung so far (setting ->
        its seeds' losses; one that is not finite counts as infinite), and kept: a run that reaches the rung
        later (another seed, a retrain after a kill, another runner) follows it."""
        entries = list(entries)
        out: dict[str, bool] = {}
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO rungs VALUES (?,?,?,?,?,?)",
                [(run_id, shape, setting, rung, step,
                  loss if loss is not None and math.isfinite(loss) else None)
                 for run_id, shape, setting, loss in entries])
            for run_id, shape, setting, _ in entries:
                row = self._db.execute(
                    "SELECT promoted FROM promotions WHERE shape = ? AND setting = ? AND "
                    "rung = ?", (shape, setting, rung)).fetchone()
                if row is None:
                    losses: dict[str, list[float]] = {}
                    for other, loss in self._db.execute(
                            "SELECT setting, val_loss FROM rungs WHERE shape = ? AND rung = ?",
                            (shape, rung)):
                        losses.setdefault(other, []).append(math.inf if loss is None else loss)
                    promoted, rank, cohort = decide(losses, setting, shape)
                    self._db.execute("INSERT INTO promotions VALUES (?,?,?,?,?,?)",
                                     (shape, setting, rung, int(promoted), rank, cohort))
                    row = (promoted,)
                out[run_id] = bool(row[0])
        return out

    def rung_records(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rungs = [dict(zip(("run_id", "shape", "setting", "rung", "step", "val_loss"), row))
                 for row in self._db.execute("SELECT * FROM rungs ORDER BY rung, run_id")]
        decisions = [dict(zip(("shape", "setting", "rung", "promoted", "rank", "cohort"), row))
                     for row in self._db.execute(
                         "SELECT * FROM promotions ORDER BY shape, rung, rank")]
        return rungs, decisions

    # ---------------------------------------------------------------- reading

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
        judge = self._judge()
        return {run_id: judge.status(status, token) for run_id, status, token
                in self._db.execute("SELECT run_id, status, token FROM runs")}

    def finished_at(self) -> dict[str, float | None]:
        """When each finished run's stored result was written (what a retrain compares)."""
        return {run_id: finished for run_id, status, finished in self._db.execute(
            "SELECT run_id, status, finished_at FROM runs") if status in FINISHED}

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per run: id, status, grid point, metrics, dotted config, provenance."""
        judge = self._judge()
        rows = self._db.execute(
            "SELECT run_id, status, point, metrics, config, provenance, error, started_at, "
            "finished_at, batch_group, token FROM runs ORDER BY rowid"
        )
        out = []
        for (run_id, status, point, metrics, config, prov, error, started, finished, group,
             token) in rows:
            record: dict[str, Any] = {"run_id": run_id, "status": judge.status(status, token)}
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
        if self.readonly and not self._setting_up:
            raise ScalelabError(
                f"{self.path}: the results store is on read-only storage (or not yours to "
                "write): it can be read (status, fit, export -o FILE, report --out DIR) but "
                "nothing can be stored in it; copy its folder somewhere writable to add to it")
        return _Transaction(self, self._db)

    # ---------------------------------------------------------------- merging

    def held(self) -> dict[str, tuple[str, float | None]]:
        """Each stored run's (status, finished_at): which of two rows of a run to believe."""
        return {run_id: (status, finished) for run_id, status, finished in self._db.execute(
            "SELECT run_id, status, finished_at FROM runs")}

    def stored_runs(self) -> tuple[list[str], list[tuple]]:
        """The ``runs`` table as stored: its columns, and its rows (what a merge copies)."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(runs)")]
        return columns, list(self._db.execute(f"SELECT {', '.join(columns)} FROM runs"))

    def stored_curves(self, run_id: str) -> list[tuple]:
        return list(self._db.execute("SELECT run_id, step, name, value FROM curves "
                                     "WHERE run_id = ?", (run_id,)))

    def stored_evaluations(self) -> list[tuple]:
        return list(self._db.execute("SELECT run_id, eval_id, config, metrics, created_at "
                                     "FROM evaluations"))

    def fold(self, shard: Store) -> set[str]:
        """A shard store into this one, in one transaction (a row only ever replaced by a
        better one, evaluations and meta keys this one lacks added); the runs taken."""
        columns, rows = shard.stored_runs()
        names = ", ".join(columns)
        held, taken = self.held(), set()
        with self._transaction():
            for row in rows:
                values = dict(zip(columns, row))
                if not _better(values["status"], values["finished_at"],
                               held.get(values["run_id"])):
                    continue
                self._db.execute("DELETE FROM curves WHERE run_id = ?", (values["run_id"],))
                self._db.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES "
                                 f"({_placeholders(columns)})", row)
                self._db.executemany("INSERT INTO curves VALUES (?,?,?,?)",
                                     shard.stored_curves(values["run_id"]))
                taken.add(values["run_id"])
            self._db.executemany("INSERT OR IGNORE INTO evaluations VALUES (?,?,?,?,?)",
                                 shard.stored_evaluations())
            known = self.meta()
            missing = {k: v for k, v in shard.meta().items() if k not in known}
            if missing:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", missing.items())
        return taken


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; refused when the file the
    store was opened from is no longer at its path (removed or replaced: e.g. a shard store
    merged away), so nothing is written where no one will read it."""

    def __init__(self, store: Store, db: _Connection):
        self.store = store
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        if self.store._file is not None and _file_id(self.store.path) != self.store._file:
            self.db.execute("ROLLBACK")
            raise ScalelabError(
                f"{self.store.path}: the store file was removed or replaced while this process "
                "had it open (merged by `scalelab merge`, or moved); nothing more was written "
                "to it: rerun the same command")

    def __exit__(self, exc_type, *_):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


#: The store files this process has open for writing (device, inode) -> connections.
_open_here: dict[tuple[int, int], int] = {}
_open_lock = threading.Lock()


def open_here(path: Path) -> bool:
    """Whether this process has the store file at ``path`` open (then no other descriptor of
    it may be opened and closed: see :meth:`Store._checked`)."""
    return _file_id(path) in _open_here


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _writable(path: Path) -> bool:
    """Whether the store and its folder (where SQLite makes its log) can be written: false on
    a read-only mount, for files of another user, and on archives made read-only."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


#: Which of two stored rows of one run to believe: a finished one, then one in flight.
_RANK = {COMPLETED: 3, DIVERGED: 3, PRUNED: 3, RUNNING: 2}


def _better(status: str | None, finished: float | None, than: tuple | None) -> bool:
    if than is None:
        return True
    return (_RANK.get(status, 1), finished or 0.0) > (_RANK.get(than[0], 1), than[1] or 0.0)


class Stores(BaseStore):
    """The main store and the shard stores of one directory, read as one store: a run stored
    in several files counts once, as its finished (then latest) row. Writes of a run go to
    the main store; evaluations wait for ``scalelab merge``."""

    def __init__(self, main: Store | None, shards: list[Store]):
        self.main, self.shards = main, shards
        self.stores = ([main] if main else []) + shards
        self.path = self.stores[0].path
        self.readonly = any(store.readonly for store in self.stores)

    def close(self) -> None:
        for store in self.stores:
            store.close()

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
        """Claims in the main store, of runs no file holds finished (unless retrained) and
        no live runner of a shard store is training."""
        statuses = self.statuses()
        if not isinstance(retrain, Mapping):
            retrain = {run_id: _ANY for run_id in retrain}
        busy = {c["run_id"] for shard in self.shards for c in shard.claims()}
        open_runs = [r for r in runs if r.run_id not in busy and (
            statuses.get(r.run_id) not in FINISHED or r.run_id in retrain)]
        return self._writer().claim(open_runs, retrain)

    def register(self) -> str:
        return self._writer().register()

    def release(self) -> None:
        if self.main is not None:
            self.main.release()

    def owns(self, run_id: str) -> bool:
        return self._writer().owns(run_id)

    def heartbeat(self, run_ids=()) -> None:
        self._writer().heartbeat(run_ids)

    def observe(self) -> None:
        if self.main is not None:
            self.main.observe()

    def write_result(self, run: RunSpec, result: RunResult) -> str:
        return self._writer().write_result(run, result)

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
            for run_id, (status, finished) in store.held().items():
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

    def finished_at(self) -> dict[str, float | None]:
        where = self._chosen()
        return {k: v for store in self.stores for k, v in store.finished_at().items()
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

    def record_rung(self, rung, step, entries, decide) -> dict[str, bool]:
        return self._writer().record_rung(rung, step, entries, decide)

    def rung_records(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The main store's (a halving search never runs with shard stores)."""
        return self.main.rung_records() if self.main is not None else ([], [])

    def add_predictions(self, predictions) -> None:
        self._writer().add_predictions(predictions)

    def predictions(self) -> list[dict[str, Any]]:
        return sorted((p for store in self.stores for p in store.predictions()),
                      key=lambda p: p["created_at"])

    def claims(self) -> list[dict[str, Any]]:
        return [c for store in self.stores for c in store.claims()]

    def runners(self) -> list[dict[str, Any]]:
        return [r for store in self.stores for r in store.runners()]

    def merge(self) -> int:
        """Fold every shard store into the main one (each run's believed row and its curves,
        evaluations), then remove the shard files; returns how many runs were taken from
        shards.

        Refused while a ``--shard-store`` runner is alive (it would go on writing into a
        file that is gone); a runner started meanwhile waits for the merge to end. Safe to
        kill at any moment and to repeat: the main store is made whole beside its place and
        linked in, each shard is folded in one transaction that only ever replaces a row by
        a better one, and a shard file is removed only after it was folded."""
        directory = self.path.parent
        if any(store.readonly for store in self.stores):
            raise ScalelabError(f"{directory}: on read-only storage; `scalelab merge` writes the "
                                "folded store there: copy the folder somewhere writable first")
        with _merging(directory, self):
            main = self.main
            if main is None:
                main = Store.at(OutDir(directory).store, create=True)
            taken: set[str] = set()
            for shard in self.shards:
                taken |= main.fold(shard)
            for shard in self.shards:
                shard.close()  # the last connection: SQLite folds in and removes its log
                for suffix in ("-wal", "-shm", ""):
                    Path(f"{shard.path}{suffix}").unlink(missing_ok=True)
        self.shards, self.stores, self.main = [], [main], main
        return len(taken)


# ------------------------------------------------------------------ runner identity and locks


class _Identity:
    """This process as a runner: a random token (its identity in claims), and host and pid
    for people."""

    def __init__(self):
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.token = secrets.token_hex(8)
        self.locks: dict[str, list] = {}  # folder -> [descriptor of its lock file, users]


_identity: _Identity | None = None
_identity_lock = threading.RLock()


def _me() -> _Identity:
    """This process's runner identity (a forked child draws its own)."""
    global _identity
    with _identity_lock:
        if _identity is None or _identity.pid != os.getpid():
            _identity = _Identity()
        return _identity


def owner() -> str:
    """This process as people see a run's owner: host:pid."""
    me = _me()
    return f"{me.host}:{me.pid}"


def token() -> str:
    """This process's runner token (what claims name)."""
    return _me().token


def _lock_path(directory: Path, token: str) -> Path:
    return OutDir(directory).runners / f"{token}.lock"


def _hold_lock(directory: Path) -> None:
    """Take (once per folder) this runner's lock file beside the store, held until it
    releases the store or dies."""
    me = _me()
    key = os.path.abspath(directory)
    with _identity_lock:
        if key in me.locks:
            me.locks[key][1] += 1
            return
        path = _lock_path(directory, me.token)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a filesystem without locks: heartbeats alone tell
                pass
        os.write(fd, f"{me.host}:{me.pid}\n".encode())
        me.locks[key] = [fd, 1]


def _drop_lock(directory: Path) -> None:
    me = _me()
    key = os.path.abspath(directory)
    with _identity_lock:
        held = me.locks.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            _unlock(key, held[0], me.token)
            del me.locks[key]


def _unlock(directory: str, fd: int, token: str) -> None:
    try:
        _lock_path(Path(directory), token).unlink(missing_ok=True)  # then released: gone
    except OSError:
        pass
    os.close(fd)


@atexit.register
def _drop_all_locks() -> None:
    me = _identity
    if me is None or me.pid != os.getpid():
        return
    for directory, (fd, _) in list(me.locks.items()):
        _unlock(directory, fd, me.token)
    me.locks.clear()


def _lock_state(directory: Path, token: str) -> str:
    """``held``: the runner holds its lock; ``free``: no one does, or its lock file is gone
    (the runner is gone); ``unknown``: locks cannot be probed here."""
    if fcntl is None:
        return "unknown"
    try:
        fd = os.open(_lock_path(directory, token), os.O_RDONLY)
    except FileNotFoundError:
        return "free"
    except OSError:
        return "unknown"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    except OSError:
        return "unknown"
    finally:
        os.close(fd)
    return "free"


def _clock_id() -> str:
    """Which clock :func:`time.monotonic` reads here: the kernel's boot id on Linux (shared
    by every container on the machine, new at each boot), else host and boot time."""
    try:
        return "boot:" + Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"host:{socket.gethostname()}:{round(time.time() - time.monotonic(), -2):.0f}"


class _Judge:
    """Which runners of one store are alive, as this process sees them now (each looked at
    once): see the module's docstring."""

    def __init__(self, directory: Path, beats: dict[str, int],
                 seen: dict[str, tuple[int, float]]):
        self.directory = directory
        self.me = _me().token
        self.now = time.monotonic()
        self.beats = beats  # token -> its heartbeat counter now
        self.seen = seen    # token -> (counter, when this machine's clock first saw it)
        self.known: dict[str, bool] = {}

    def unchanged_for(self, token: str) -> float | None:
        """Seconds this machine has seen the runner's counter unchanged (None: not seen)."""
        seen = self.seen.get(token)
        if seen is None or seen[0] != self.beats.get(token):
            return None
        return max(0.0, self.now - seen[1])

    def alive(self, token: str | None) -> bool:
        if not token:
            return False  # a claim from before schema 6 (host:pid): its runner is gone
        if token == self.me:
            return True
        if token not in self.known:
            stale = (self.unchanged_for(token) or 0.0) >= STALE_S
            self.known[token] = not stale and _lock_state(self.directory, token) != "free"
        return self.known[token]

    def status(self, status: str | None, token: str | None) -> str | None:
        """``interrupted`` for a ``running`` row whose runner is gone."""
        if status != RUNNING:
            return status
        return RUNNING if self.alive(token) else INTERRUPTED


#: ``retrain`` markers: retrain whatever finished row is stored; not to be retrained.
_ANY, _NOT = object(), object()


# ------------------------------------------------------------------ shard runners and merge


@contextmanager
def shard_writing(directory: str | Path, wait_s: float = 600.0) -> Iterator[None]:
    """Held (shared) by a ``--shard-store`` runner while it has its shard file open:
    ``scalelab merge`` takes it exclusively, so it never folds or removes a file a runner
    is writing into. A runner started during a merge waits for it (up to ``wait_s``)."""
    directory = Path(directory)
    if fcntl is None:
        yield
        return
    fd = _shards_lock(directory)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ScalelabError(
                        f"{directory}: `scalelab merge` has been folding its shard stores for "
                        f"{wait_s:.0f} s; rerun when it is done") from None
                time.sleep(0.2)
            except OSError:  # no locks on this filesystem
                break
        yield
    finally:
        os.close(fd)


def _shards_lock(directory: Path) -> int:
    """An open descriptor of the lock file shard runners share and merge takes whole."""
    path = OutDir(directory).runners / "shards.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


@contextmanager
def _merging(directory: Path, stores: Stores) -> Iterator[None]:
    """Hold the shard runners' lock exclusively, or refuse naming who is still writing."""
    if fcntl is None:
        yield
        return
    fd = _shards_lock(directory)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            alive = [r for shard in stores.shards for r in shard.runners()]
            who = (f"runner {alive[0]['host']}:{alive[0]['pid']} is still writing into "
                   f"{Path(alive[0]['store']).name}" + (f" (and {len(alive) - 1} more)"
                                                         if len(alive) > 1 else "")
                   if alive else "a --shard-store runner is still writing into its shard file")
            raise ScalelabError(f"{directory}: {who}; merge when every shard runner has "
                                "finished (or was stopped)") from None
        except OSError:  # no locks on this filesystem: the runners' rows must tell
            alive = [r for shard in stores.shards for r in shard.runners()]
            if alive:
                raise ScalelabError(
                    f"{directory}: runner {alive[0]['host']}:{alive[0]['pid']} is still "
                    f"writing into {Path(alive[0]['store']).name}; merge when every shard "
                    "runner has finished (or was stopped)") from None
        yield
    finally:
        os.close(fd)


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
