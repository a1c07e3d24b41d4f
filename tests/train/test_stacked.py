"""Batched training behaves like training each run alone; grouping never mixes shapes."""

import sqlite3
from pathlib import Path

import pytest

import scalelab
from scalelab.runner.stacks import plan_groups
from scalelab.spec import validate_study
from scalelab.store import SCHEMA_VERSION, Store
from scalelab.train import DIVERGED, train_group, train_run
from scalelab.train.stacking import estimate_bytes, group_key

from ..conftest import TINY


def study(**changes):
    spec = {**TINY, "model": {"name": "mlp", "width": 16, "depth": 2}, **changes}
    spec["train"] = {**TINY["train"], **changes.get("train", {})}
    return validate_study(spec, "t.yaml")


@pytest.mark.parametrize("optimizer,extra", [("adam", {}), ("sgd", {"nesterov": True}),
                                             ("adamw", {"weight_decay": 0.05})])
def test_batched_runs_match_single_runs(optimizer, extra):
    runs = study(grid={"lr": [0.01, 0.05]}, seeds=[0, 1],
                 train={"optimizer": optimizer, "max_steps": 60, **extra}).runs
    configs = [r.config for r in runs]
    assert len({group_key(c) for c in configs}) == 1
    together = train_group(configs, group="g")
    for config, batched in zip(configs, together):
        alone = train_run(config)
        assert batched.status == alone.status == "completed"
        assert batched.batch_group == "g" and batched.metrics["group_size"] == 4
        for key in ("test_loss", "val_loss", "train_loss", "final_test_loss"):
            assert batched.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-4), key
        assert batched.metrics["flops_per_step"] == alone.metrics["flops_per_step"]
        curve = {(s, n): v for s, n, v in alone.curves}
        for s, n, v in batched.curves:
            assert v == pytest.approx(curve[(s, n)], rel=1e-4, abs=1e-6)


def test_widths_padded_into_one_group_train_as_at_their_own_width():
    runs = study(grid={"width": [4, 8, 16], "lr": [0.01, 0.05]}, seeds=[0],
                 train={"max_steps": 60, "eval_every": 10, "early_stopping": {"patience": 2}}).runs
    configs = [r.config for r in runs]
    assert len({group_key(c, pad=True) for c in configs}) == 1
    assert len({group_key(c) for c in configs}) == 3
    together = train_group(configs)
    for config, batched in zip(configs, together):
        alone = train_run(config)
        for key in ("n_params", "flops_per_step", "steps", "best_step"):
            assert batched.metrics[key] == alone.metrics[key], key
        for key in ("test_loss", "val_loss", "final_test_loss"):
            assert batched.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-4), key


def test_early_stopping_is_per_run():
    runs = study(grid={"lr": [0.3, 0.003]}, seeds=[0],
                 train={"max_steps": 300, "eval_every": 5, "schedule": "constant",
                        "early_stopping": {"patience": 3}}).runs
    together = train_group([r.config for r in runs])
    alone = [train_run(r.config) for r in runs]
    assert [b.metrics["steps"] for b in together] == [a.metrics["steps"] for a in alone]
    assert [b.metrics["best_step"] for b in together] == [a.metrics["best_step"] for a in alone]
    assert together[0].metrics["stopped_early"] and together[0].metrics["steps"] < 300
    assert [b.metrics["eval_flops"] for b in together] == [a.metrics["eval_flops"] for a in alone]
    for b, a in zip(together, alone):
        assert b.metrics["test_loss"] == pytest.approx(a.metrics["test_loss"], rel=1e-4)


def test_a_diverged_run_does_not_disturb_its_group_mates():
    runs = study(grid={"lr": [0.02, 1e12, 0.05]}, seeds=[0],
                 train={"optimizer": "sgd", "momentum": 0.0, "max_steps": 40}).runs
    together = train_group([r.config for r in runs])
    assert [r.status for r in together] == ["completed", DIVERGED, "completed"]
    assert together[1].metrics["diverged_step"] == train_run(runs[1].config).metrics["diverged_step"]
    for i in (0, 2):
        alone = train_run(runs[i].config)
        assert together[i].metrics["test_loss"] == pytest.approx(alone.metrics["test_loss"], rel=1e-5)


def test_grouping_never_mixes_incompatible_runs():
    runs = study(grid={"depth": [1, 2], "width": [8, 16], "lr": [0.01, 0.02],
                       "batch_size": [25, 50]}, seeds=[0, 1]).runs
    groups = plan_groups(runs)  # lr and seed are per-run scalars; each shape its own group
    assert sorted(len(g) for g in groups) == [4] * 8
    for g in groups:
        shapes = {(r.config["model"]["depth"], r.config["model"]["width"],
                   r.config["train"]["batch_size"]) for r in g}
        assert len(shapes) == 1 and len({group_key(r.config) for r in g}) == 1
    padded = plan_groups(runs, pad=True)  # widths share a group; depth and batch size never
    assert sorted(len(g) for g in padded) == [8] * 4
    for g in padded:
        shapes = {(r.config["model"]["depth"], r.config["train"]["batch_size"]) for r in g}
        assert len(shapes) == 1 and len({group_key(r.config, pad=True) for r in g}) == 1
    assert all(len(g) == 1 for g in plan_groups(runs, "off"))
    same_shape = study(grid={"lr": [0.01, 0.02]}, seeds=[0, 1, 2, 3]).runs
    per_run = estimate_bytes(same_shape[0].config)
    small = plan_groups(same_shape, memory_mb=3.5 * per_run / 2**20)
    assert sorted(len(g) for g in small) == [2, 3, 3]  # an MLP pair is worth stacking
    assert sorted(len(g) for g in plan_groups(same_shape, min_runs=3,  # a pair trains one by one
                                              memory_mb=3.5 * per_run / 2**20)) == [1, 1, 3, 3]
    assert {r.run_id for g in small for r in g} == {r.run_id for r in same_shape}


def test_families_and_methods_opt_in(exploding_model):
    runs = study(seeds=[0], grid={}).runs
    assert group_key(runs[0].config) is not None
    config = {**runs[0].config, "model": {"name": "_explodes"}}
    assert group_key(config) is None  # a family must declare itself stackable


def test_runner_batches_by_default_and_records_the_group(tmp_path, tiny_study):
    path = tiny_study(tmp_path, grid={"lr": [0.01, 0.02]}, seeds=[0, 1])  # one group of 4
    batched = scalelab.run(path, out=tmp_path / "a", workers=1)
    alone = scalelab.run(path, out=tmp_path / "b", workers=1, overrides=["stack_runs=off"])
    assert batched.trained == alone.trained == {"completed": 4}
    a = {r["run_id"]: r for r in scalelab.api.records(tmp_path / "a")}
    b = {r["run_id"]: r for r in scalelab.api.records(tmp_path / "b")}
    assert a.keys() == b.keys()
    assert len({r["batch_group"] for r in a.values()}) == 1 and None not in {
        r["batch_group"] for r in a.values()}
    assert {r["batch_group"] for r in b.values()} == {None}
    for run_id in a:
        assert a[run_id]["test_loss"] == pytest.approx(b[run_id]["test_loss"], rel=1e-4)


def test_a_schema_1_store_gains_the_newer_columns_and_evaluations_table(tmp_path):
    db = sqlite3.connect(tmp_path / "results.sqlite")
    db.executescript("CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
                     "config TEXT NOT NULL, point TEXT NOT NULL, metrics TEXT, error TEXT, "
                     "provenance TEXT, started_at REAL, finished_at REAL);"
                     "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('schema_version', '1');"
                     "INSERT INTO runs VALUES ('a', 'completed', '{}', '{}', '{}', NULL, '{}', 0, 1);")
    db.commit()
    db.close()
    with Store.open(tmp_path) as store:
        assert store.records()[0]["batch_group"] is None
        assert store.evaluations() == []
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION)
        assert store.statuses() == {"a": "completed"}
        columns = [row[1] for row in store._db.execute("PRAGMA table_info(runs)")]
        assert {"batch_group", "owner", "heartbeat", "claimed_at"} <= set(columns)


@pytest.mark.slow
def test_the_whole_quickstart_gives_the_same_numbers_however_it_is_scheduled(tmp_path,
                                                                             monkeypatch):
    """The full quickstart trained as stacked seed groups, and again sliced into two shards
    (one batched, one with stack_runs: off): every run's numbers and early-stopping decisions
    are identical. A --quick look first goes to its own directory and mixes into nothing."""
    import scalelab
    from scalelab.api import summary

    quickstart = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"
    monkeypatch.chdir(tmp_path)  # default output directories land under runs/ here
    quick = scalelab.run(quickstart, quick=True, device="cpu")
    assert quick.out_dir == Path("runs/quickstart-quick") and quick.ok
    batched = scalelab.run(quickstart, device="cpu")
    assert batched.out_dir == Path("runs/quickstart") and batched.already_done == 0
    table = summary(batched.out_dir)
    assert sum(runs for _, _, runs in table.cells.values()) == len(batched.selected) == 45
    scalelab.run(quickstart, out="sliced", device="cpu", shard="0/2")
    scalelab.run(quickstart, out="sliced", device="cpu", shard="1/2",
                 overrides=["stack_runs=off"])
    together = {r["run_id"]: r for r in scalelab.api.records(batched.out_dir)}
    sliced = {r["run_id"]: r for r in scalelab.api.records("sliced")}
    assert set(together) == set(sliced) and len(together) == 45
    assert any(r["group_size"] > 1 for r in together.values())
    assert any(r["group_size"] == 1 for r in sliced.values())
    for run_id, r in together.items():
        for key in ("test_loss", "val_loss", "test_acc", "steps", "best_step", "stopped_early"):
            assert sliced[run_id][key] == r[key], (run_id, key)


def test_only_runs_without_potential_group_mates_take_the_single_run_loop(tmp_path, tiny_study):
    from scalelab.runner.stacks import without_mates
    from scalelab.spec import load_study

    alone = load_study(tiny_study(tmp_path, seeds=[0]))  # widths 4 and 8, one seed: no mates
    assert without_mates(alone.runs) == {r.run_id for r in alone.runs}
    paired = load_study(tiny_study(tmp_path, seeds=[0, 1]))  # each width has a seed partner
    assert without_mates(paired.runs) == frozenset()
