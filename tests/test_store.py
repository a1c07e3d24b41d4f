import sqlite3

import pytest

from scalelab.errors import ScalelabError
from scalelab.spec import RunSpec
from scalelab.store import SCHEMA_VERSION, Store
from scalelab.train import COMPLETED, FAILED, RunResult


def spec(i: int) -> RunSpec:
    return RunSpec(f"{i:012x}", {"model": {"width": i}, "seed": 0}, {"width": i, "seed": 0})


def test_round_trip(tmp_path):
    with Store.open(tmp_path, create=True) as store:
        store.claim([spec(1), spec(2)])
        store.write_result(spec(1), RunResult(
            COMPLETED, {"test_loss": 0.5, "n_params": 10},
            [(10, "val_loss", 0.7), (20, "val_loss", 0.6)], None, {"device": "cpu"}))
        store.set_meta(study="s", axes={"width": "model.width"})
    with Store.open(tmp_path) as store:
        assert store.statuses() == {spec(1).run_id: COMPLETED, spec(2).run_id: "running"}
        record = store.records()[0]
        assert record["test_loss"] == 0.5 and record["model.width"] == 1 and record["width"] == 1
        assert record["device"] == "cpu"
        assert [c["value"] for c in store.curves(spec(1).run_id)] == [0.7, 0.6]
        assert store.meta()["study"] == "s"


def test_finished_runs_are_never_claimed_again(tmp_path):
    with Store.open(tmp_path, create=True) as store:
        store.write_result(spec(1), RunResult(COMPLETED, {"x": 1}))
        assert store.claim([spec(1)]) == []
        assert store.statuses()[spec(1).run_id] == COMPLETED


def test_rewriting_a_run_replaces_it_and_its_curves(tmp_path):
    with Store.open(tmp_path, create=True) as store:
        store.write_result(spec(1), RunResult(FAILED, error="boom", curves=[(1, "a", 1.0)]))
        store.write_result(spec(1), RunResult(COMPLETED, curves=[(5, "a", 2.0)]))
        assert len(store.records()) == 1 and store.records()[0]["status"] == COMPLETED
        assert [(c["step"], c["value"]) for c in store.curves()] == [(5, 2.0)]


def test_a_failed_write_leaves_nothing_half_written(tmp_path):
    with Store.open(tmp_path, create=True) as store:
        bad = RunResult(COMPLETED, curves=[(1, "a", 1.0), (1, "a", 2.0)])  # duplicate key
        with pytest.raises(sqlite3.IntegrityError):
            store.write_result(spec(1), bad)
        assert store.records() == [] and store.curves() == []


def test_missing_store_says_what_to_run(tmp_path):
    with pytest.raises(ScalelabError, match="no results store.*scalelab run STUDY --out"):
        Store.open(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


_OTHER_RUNNER = """
import sys
from scalelab.records import RunResult, RunSpec
from scalelab.store import Store

runs = [RunSpec(i, {"model": {"width": int(i, 16)}, "seed": 0}, {"width": int(i, 16), "seed": 0})
        for i in sys.argv[2:]]
with Store.open(sys.argv[1], create=True) as store:
    print(len(store.claim(runs)), flush=True)
    sys.stdin.readline()  # told to store its results (after being taken over)
    print(" ".join(store.write_result(r, RunResult("completed", {"x": 2})) for r in runs),
          flush=True)
"""


def _other_runner(directory, *runs):
    """Another runner process that claims ``runs`` and never beats its heartbeat."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", _OTHER_RUNNER, str(directory),
                                *(r.run_id for r in runs)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == str(len(runs))
    return process


def test_a_run_claimed_by_a_live_runner_is_left_to_it_and_taken_over_when_it_is_gone(
        tmp_path):
    Store.open(tmp_path, create=True).close()
    other = _other_runner(tmp_path, spec(1))
    try:
        with Store.open(tmp_path) as store:
            assert store.claim([spec(1), spec(3)]) == [spec(3)]  # run 1 is the other's
            assert store.claim([spec(3)]) == [spec(3)]  # its own claim: still its to train
            assert sorted(c["run_id"] for c in store.claims()) == [spec(1).run_id,
                                                                    spec(3).run_id]
            other.kill()  # its lock goes with it: gone, whatever its pid becomes
            other.wait()
            assert store.statuses()[spec(1).run_id] == "interrupted"
            assert store.claim([spec(1)]) == [spec(1)]  # taken over at once
    finally:
        other.kill()


def test_a_live_runner_whose_heartbeat_stopped_is_taken_over_and_cannot_store(
        tmp_path, monkeypatch):
    """Its lock is held (it is stopped, not dead): its counter, seen unchanged for the
    staleness window by this machine's clock, says it stopped working."""
    import time

    from scalelab import store as store_module

    monkeypatch.setattr(store_module, "STALE_S", 1.0)
    Store.open(tmp_path, create=True).close()
    other = _other_runner(tmp_path, spec(2))
    try:
        with Store.open(tmp_path) as store:
            assert store.claim([spec(2)]) == []  # first sighting of its counter
            time.sleep(1.2)
            assert store.statuses()[spec(2).run_id] == "interrupted"
            assert store.claim([spec(2)]) == [spec(2)]  # compare-and-set: now this one's
            other.stdin.write("store\n")
            other.stdin.flush()
            assert other.stdout.readline().split() == ["lost"]  # it resumes: nothing stored
            assert store.statuses()[spec(2).run_id] == "running"  # still this runner's
            assert store.write_result(spec(2), RunResult(COMPLETED, {"x": 1})) == "stored"
            assert store.records()[0]["x"] == 1
    finally:
        other.kill()


def test_a_run_in_several_store_files_counts_once_as_its_finished_row(tmp_path):
    from scalelab.store import Stores

    with Store.open(tmp_path, create=True, shard=(0, 2)) as first:
        first.write_result(spec(1), RunResult(FAILED, error="boom", curves=[(1, "a", 9.0)]))
        first.write_result(spec(2), RunResult(COMPLETED, {"test_loss": 0.2}))
    with Store.open(tmp_path, create=True, shard=(1, 2)) as second:
        second.write_result(spec(1), RunResult(COMPLETED, {"test_loss": 0.1},
                                               curves=[(5, "a", 1.0)]))
    with Store.open(tmp_path) as both:
        assert isinstance(both, Stores)
        assert both.statuses() == {spec(1).run_id: COMPLETED, spec(2).run_id: COMPLETED}
        assert sorted(r["test_loss"] for r in both.records()) == [0.1, 0.2]
        assert [(c["step"], c["value"]) for c in both.curves(spec(1).run_id)] == [(5, 1.0)]
        assert both.merge() == 2
    with Store.open(tmp_path) as merged:
        assert isinstance(merged, Store)
        assert merged.statuses() == {spec(1).run_id: COMPLETED, spec(2).run_id: COMPLETED}
        assert [(c["step"], c["value"]) for c in merged.curves(spec(1).run_id)] == [(5, 1.0)]


def _open_at_once(directory, barrier) -> str:
    barrier.wait()
    try:
        Store.open(directory, create=True).close()
        return "ok"
    except Exception as exc:  # reported to the parent, which names it in the assertion
        return f"{type(exc).__name__}: {exc}"


def test_processes_creating_one_store_at_the_same_moment_all_open_it(tmp_path):
    """Two `scalelab run` started together once read each other's half-made file as a
    truncated store, or its switch to write-ahead logging as damage (a CI failure)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        for attempt in range(15):
            barrier = manager.Barrier(4)
            directory = tmp_path / str(attempt)
            outcomes = pool.starmap(_open_at_once, [(directory, barrier)] * 4)
            assert outcomes == ["ok"] * 4
            assert sorted(p.name for p in directory.iterdir()
                          if not p.name.endswith(("-wal", "-shm"))) == ["results.sqlite"]


def test_a_store_of_schema_5_opens_and_its_claims_read_as_interrupted(tmp_path):
    """Stores written before runner tokens (schema 5: claims by host:pid) still open; a claim
    of theirs names no runner that can be watched, so it reads as interrupted."""
    import contextlib
    import json
    import socket

    path = tmp_path / "results.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT NOT NULL, config TEXT NOT NULL,
                point TEXT NOT NULL, metrics TEXT, error TEXT, provenance TEXT, started_at REAL,
                finished_at REAL, batch_group TEXT, owner TEXT, heartbeat REAL);
            CREATE TABLE curves (run_id TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL,
                value REAL, PRIMARY KEY (run_id, name, step));
            INSERT INTO meta VALUES ('schema_version', '5');""")
        for i, status in ((1, COMPLETED), (2, "running")):
            db.execute("INSERT INTO runs (run_id, status, config, point, metrics, owner) "
                       "VALUES (?,?,?,?,?,?)", (spec(i).run_id, status, json.dumps(spec(i).config),
                                                json.dumps(spec(i).point), '{"test_loss": 0.5}',
                                                f"{socket.gethostname()}:1"))
    with Store.open(tmp_path) as store:
        assert store.statuses() == {spec(1).run_id: COMPLETED, spec(2).run_id: "interrupted"}
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION)
        assert store.rung_records() == ([], [])   # schema 7's tables, added empty
        assert store.claim([spec(1), spec(2)]) == [spec(2)]
        assert store.records()[0]["test_loss"] == 0.5
