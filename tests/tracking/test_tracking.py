"""Experiment tracking from the driver: MLflow against a real `mlflow server` (SQLite
backend on 127.0.0.1), W&B in offline mode (its files checked), and the one-line refusal
when a tracker's library is missing."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from typer.testing import CliRunner

from scalelab.cli import app

from ..conftest import TINY

pytestmark = pytest.mark.slow


def study_file(tmp_path, track):
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump({**TINY, "name": "tracked", "trackers": track}))
    return path


@pytest.fixture
def mlflow_server(tmp_path):
    pytest.importorskip("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow server did not start") from None
                time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_gets_each_run_once_with_config_metrics_curves_and_the_report(tmp_path,
                                                                            mlflow_server):
    from mlflow import MlflowClient

    path = study_file(tmp_path, {"mlflow": {"tracking_uri": mlflow_server}})
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--workers", "1",
                                      "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--no-report"])
    assert again.exit_code == 0  # nothing trained: nothing logged again
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    trained = [r for r in runs if "scalelab.run_id" in r.data.tags]
    assert len(trained) == 4 and len({r.data.tags["scalelab.run_id"] for r in trained}) == 4
    one = trained[0]
    assert one.data.params["train.lr"] == "0.01" and one.data.params["model.name"] == "mlp"
    assert one.data.tags["scalelab.status"] == "completed" and one.info.status == "FINISHED"
    assert "test_loss" in one.data.metrics
    history = client.get_metric_history(one.info.run_id, "curve/val_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [10, 20, 30, 40]
    [report] = [r for r in runs if r.data.tags.get("scalelab.report") == "true"]
    names = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"report.html", "report.md", "scaling_law.json"} <= names


def test_wandb_offline_writes_one_run_per_trained_run_and_the_report(tmp_path):
    pytest.importorskip("wandb")
    path = study_file(tmp_path, {"wandb": {"mode": "offline", "dir": str(tmp_path)}})
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out"),
                                      "--workers", "1", "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    offline = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 4 + 1  # each trained run, and the report
    assert all(list(run.glob("run-*.wandb")) for run in offline)


def test_a_missing_tracker_library_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def without_mlflow(name, *args, **kwargs):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_mlflow)
    path = study_file(tmp_path, {"mlflow": {}})
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: trackers: mlflow needs mlflow: pip install "
                                     "'scalelab[mlflow]'")
    assert not (tmp_path / "out").exists()


def test_an_unknown_tracker_is_refused_when_the_study_is_read(tmp_path):
    path = study_file(tmp_path, {"tensorboard": {}})
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "trackers.tensorboard: unknown tracker 'tensorboard'" \
        in result.output
