"""End-to-end: the CLI over tiny studies, resume after SIGKILL, shards, failures, exports."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

import scalelab
from scalelab.cli import app
from scalelab.spec import load_study

from ..conftest import TINY

cli = CliRunner()


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_run_then_rerun_trains_nothing(tmp_path, tiny_study):
    study, out = tiny_study(tmp_path), tmp_path / "out"
    first = invoke("run", study, "--out", out, "--workers", 2, "--no-report", "--format", "json")
    assert first.exit_code == 0, first.output
    payload = json.loads(first.stdout)
    assert payload["trained"] == {"completed": 4} and payload["already_done"] == 0
    assert payload["summary"]["metric"] == "test_loss" and payload["laws"] == []  # no report
    second = json.loads(invoke("run", study, "--out", out, "--no-report", "--format", "json").stdout)
    assert second["trained"] == {} and second["already_done"] == 4
    frame = scalelab.load(out)
    assert len(frame) == 4 and set(frame["status"]) == {"completed"}
    assert sorted(frame["width"]) == [4, 4, 8, 8]


def test_text_output_has_table_and_fit(tmp_path, tiny_study):
    study = tiny_study(tmp_path, grid={"width": [4, 8, 16, 32]}, seeds=[0])  # a backtested law
    result = invoke("run", study, "--out", tmp_path / "o", "--workers", 1, "--bootstrap", 20)
    assert result.exit_code == 0
    assert "mean test_loss (± std over seeds) by n_params" in result.output
    laws = json.loads((tmp_path / "o" / "scaling_law.json").read_text())["fits"]
    assert "laws fitted by the analysis" in result.output and laws  # the report's, printed
    assert all(f"{law['title']} " in result.output and law["form"] in result.output
               for law in laws)
    assert f"report: {tmp_path / 'o' / 'report.html'}" in result.output
    assert (tmp_path / "o" / "scaling_law.json").exists()
    before = (tmp_path / "o" / "report.html").stat().st_mtime_ns
    again = invoke("run", study, "--out", tmp_path / "o", "--bootstrap", 20)
    assert "up to date: nothing new was trained" in again.output
    assert (tmp_path / "o" / "report.html").stat().st_mtime_ns == before
    status = invoke("status", tmp_path / "o")
    assert "completed" in status.output and "best 4 by validation loss" in status.output


def test_bad_study_exits_2_and_writes_nothing(tmp_path, tiny_study):
    path = tiny_study(tmp_path, model={"name": "mlp", "widht": 3})
    result = invoke("run", path, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert f"error: {path}: model.widht: unknown key" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_runs_and_writes_nothing(tmp_path, tiny_study):
    result = invoke("run", tiny_study(tmp_path), "--out", tmp_path / "o", "--dry-run", "--format", "json")
    assert result.exit_code == 0
    runs = json.loads(result.stdout)
    assert len(runs) == 4 and {r["state"] for r in runs} == {"new"}
    assert not (tmp_path / "o").exists()


def test_shards_partition_the_study(tmp_path, tiny_study):
    study = tiny_study(tmp_path, grid={"width": [2, 3, 4, 5, 6]})
    ids = {r.run_id for r in load_study(study).runs}
    out = tmp_path / "o"
    for i in range(3):
        result = invoke("run", study, "--out", out, "--shard", f"{i}/3", "--workers", 1)
        assert result.exit_code == 0 and "no report for one slice" in result.output
    frame = scalelab.load(out)
    assert sorted(frame["run_id"]) == sorted(ids)
    assert invoke("run", study, "--out", out, "--shard", "1/3x").exit_code == 2


def test_diverged_run_is_stored_and_the_study_goes_on(tmp_path, tiny_study):
    study = tiny_study(tmp_path, grid={"lr": [0.01, 1e12]}, seeds=[0],
                       train={"optimizer": "sgd", "momentum": 0.0, "batch_size": 50,
                              "max_steps": 40, "eval_every": 10})
    result = invoke("run", study, "--out", tmp_path / "o", "--workers", 1, "--no-report")
    assert result.exit_code == 0, result.output
    rows = {r["lr"]: r for r in scalelab.api.records(tmp_path / "o")}
    assert rows[0.01]["status"] == "completed" and rows[1e12]["status"] == "diverged"
    assert rows[1e12]["diverged_step"] >= 1


def test_failed_run_exits_1_and_names_it(tmp_path, tiny_study, exploding_model):
    study = tiny_study(tmp_path, grid={"model.name": ["mlp", "_explodes"]}, seeds=[0],
                       model={"name": "mlp"})
    result = invoke("run", study, "--out", tmp_path / "o", "--workers", 1, "--no-report")
    assert result.exit_code == 1
    assert "failed: RuntimeError: boom at build" in result.output
    assert "1 run(s) failed" in result.output
    statuses = sorted(r["status"] for r in scalelab.api.records(tmp_path / "o"))
    assert statuses == ["completed", "failed"]


def test_export_formats_round_trip(tmp_path, tiny_study):
    out = tmp_path / "o"
    invoke("run", tiny_study(tmp_path), "--out", out, "--workers", 1, "--no-report")
    import pandas as pd

    frame = scalelab.load(out)
    for fmt, reader in (("csv", pd.read_csv), ("json", pd.read_json), ("parquet", pd.read_parquet)):
        assert invoke("export", out, "--to", fmt).exit_code == 0
        back = reader(out / f"results.{fmt}")
        assert sorted(back["run_id"]) == sorted(frame["run_id"])
        assert back.set_index("run_id")["test_loss"].to_dict() == pytest.approx(
            frame.set_index("run_id")["test_loss"].to_dict())
    assert invoke("export", out, "--curves", "-o", tmp_path / "c.csv").exit_code == 0
    assert len(pd.read_csv(tmp_path / "c.csv")) == len(scalelab.load(out, curves=True))


@pytest.mark.slow
def test_checkpoints_are_saved_when_asked(tmp_path, tiny_study):
    out = tmp_path / "o"
    invoke("run", tiny_study(tmp_path, save_checkpoints=True), "--out", out, "--workers", 2,
           "--no-report")
    assert len(list((out / "checkpoints").glob("*.pt"))) == 4


def test_list_shows_every_family():
    result = invoke("list")
    for name in ("mnist1d", "digits", "mlp", "cnn", "standard"):
        assert name in result.output
    assert invoke("list", "gadget").exit_code == 2


@pytest.mark.slow
def test_sigkill_mid_study_then_rerun_completes_exactly_the_missing_runs(tmp_path, tiny_study):
    study = tiny_study(tmp_path, grid={"width": [2, 3, 4, 5, 6, 7]},
                       train={**TINY["train"], "max_steps": 300})
    out, db = tmp_path / "o", tmp_path / "o" / "results.sqlite"
    command = [sys.executable, "-m", "scalelab.cli", "run", str(study), "--out", str(out),
               "--workers", "2", "--no-report"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.time() + 120
    while time.time() < deadline and done < 3:
        time.sleep(0.2)
        if db.exists():
            with sqlite3.connect(db) as con:
                done = con.execute("SELECT count(*) FROM runs WHERE status='completed'").fetchone()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done < 12, "the kill should land mid-study"
    rerun = subprocess.run([*command, "--format", "json"], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    payload = json.loads(rerun.stdout)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT run_id, status FROM runs").fetchall()
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(rows) == 12 and len({r for r, _ in rows}) == 12
    assert {s for _, s in rows} == {"completed"}
    assert payload["already_done"] + payload["trained"]["completed"] == 12
    assert payload["already_done"] >= 3


def test_shard_stores_read_as_one_and_merge(tmp_path, tiny_study):
    study = tiny_study(tmp_path)
    together = tmp_path / "together"
    scalelab.run(study, out=together, device="cpu", workers=1)
    out = tmp_path / "sharded"
    for i in range(2):  # a job array: each shard writes its own store file
        result = invoke("run", study, "--out", out, "--shard", f"{i}/2", "--shard-store",
                        "--workers", 1, "--no-report")
        assert result.exit_code == 0, result.output
    assert not (out / "results.sqlite").exists()
    assert sorted(p.name for p in out.glob("results*.sqlite")) == [
        "results.shard-0-of-2.sqlite", "results.shard-1-of-2.sqlite"]
    expected = {r["run_id"]: r for r in scalelab.api.records(together)}
    sharded = {r["run_id"]: r for r in scalelab.api.records(out)}  # readers see all files
    assert sharded.keys() == expected.keys()
    for run_id, record in expected.items():
        assert sharded[run_id]["test_loss"] == record["test_loss"]
    status = invoke("status", out, "--format", "json")
    assert json.loads(status.output)["counts"] == {"completed": 4}
    rerun = invoke("run", study, "--out", out, "--workers", 1, "--no-report")
    assert "all 4 runs are already stored" in rerun.output  # the plan sees the shard files
    refused = invoke("evaluate", out)
    assert refused.exit_code == 2 and "shard store(s); run `scalelab merge" in refused.output
    curves_before = scalelab.api.export(out, "json", tmp_path / "c.json", curves=True)
    merged = invoke("merge", out)
    assert merged.exit_code == 0 and "4 run(s) merged from shard stores" in merged.output
    assert sorted(p.name for p in out.glob("results*")) == ["results.sqlite"]
    after = {r["run_id"]: r for r in scalelab.api.records(out)}
    assert {k: r["test_loss"] for k, r in after.items()} == \
        {k: r["test_loss"] for k, r in sharded.items()}
    curves_after = scalelab.api.export(out, "json", tmp_path / "d.json", curves=True)
    assert json.loads(curves_after.read_text()) == json.loads(curves_before.read_text())
    assert "nothing to merge" in invoke("merge", out).output


def test_shard_store_needs_a_shard(tmp_path, tiny_study):
    result = invoke("run", tiny_study(tmp_path), "--out", tmp_path / "o", "--shard-store")
    assert result.exit_code == 2 and "--shard-store: only with --shard i/k" in result.output
    assert not (tmp_path / "o").exists()


def test_a_runner_sharing_the_store_with_another_trains_on_its_share_of_the_threads():
    """Two runners on one directory each spinning every core's threads ran 10x slower."""
    import torch

    from scalelab.runner.local import LocalExecutor

    before = torch.get_num_threads()
    executor = LocalExecutor("cpu", 1, False)
    try:
        executor.share(2)
        assert torch.get_num_threads() == max(1, before // 2)
        executor.share(1)  # alone again: all of them back
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_status_counts_the_runs_of_the_study_not_started(tmp_path, tiny_study):
    """An interrupted (or half-sharded) study: status says how many of its runs exist."""
    study, out = tiny_study(tmp_path), tmp_path / "o"
    assert invoke("run", study, "--out", out, "--shard", "0/2", "--workers", 1,
                  "--no-report").exit_code == 0
    counts = json.loads(invoke("status", out, "--format", "json").output)["counts"]
    stored = counts.get("completed", 0)
    assert 0 < stored < 4 and counts["not started"] == 4 - stored
    text = invoke("status", out).output
    assert f"{stored} of the study's 4 runs stored" in text and "not started" in text
