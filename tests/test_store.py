import sqlite3

import pytest

from scalelab.errors import ScalelabError
from scalelab.spec import RunSpec
from scalelab.store import Store
from scalelab.train import COMPLETED, FAILED, RunResult


def spec(i: int) -> RunSpec:
    return RunSpec(f"{i:012x}", {"model": {"width": i}, "seed": 0}, {"width": i, "seed": 0})


def test_round_trip(tmp_path):
    with Store.open(tmp_path, create=True) as store:
        store.mark_running([spec(1), spec(2)])
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


def test_finished_runs_are_never_marked_running_again(tmp_path):
    with Store.open(tmp_path, create=True) as store:
        store.write_result(spec(1), RunResult(COMPLETED, {"x": 1}))
        store.mark_running([spec(1)])
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
