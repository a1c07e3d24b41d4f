"""The Ray executor on a real Ray cluster on this machine (a head and two worker nodes): the
same numbers as local training, node loss survived with no run lost or stored twice, a run's
own failure stored and not retried, and a killed driver resumed. Needs `scalelab[ray]`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

import scalelab
from scalelab.store import Store

from ..conftest import TINY

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (no CPUs: it only schedules) and two worker nodes of one CPU each; a plug-in
    package on PYTHONPATH registers a model that fails when built and one that marks each
    attempt to build it and holds its task on a chosen node (so that node dies mid-task)."""
    from ray.cluster_utils import Cluster

    site = tmp_path_factory.mktemp("site")
    (site / "explodes").mkdir()
    (site / "explodes" / "__init__.py").write_text(textwrap.dedent('''
        import os
        import pathlib
        import time

        import ray
        import torch

        from scalelab.models import ModelFamily
        from scalelab.models.mlp import MLP
        from scalelab.registry import models

        SITE = pathlib.Path(SITE_PATH)

        @models.register("explodes_on_worker")
        class Explodes(ModelFamily):
            """Fails when built (a run's own exception)."""

            def build(self, input_shape, num_classes):
                raise RuntimeError("boom in the run")

        @models.register("held_on_node")
        class HeldOnNode(MLP):
            """An MLP whose build, in a Ray task, leaves a mark named by its node and run
            (width and seed) and, on the node named in the file `hold`, waits there until the
            node is gone."""

            def build(self, input_shape, num_classes):
                context = ray.get_runtime_context() if ray.is_initialized() else None
                if context is not None and context.worker.mode == ray.WORKER_MODE:
                    node, run = context.get_node_id(), torch.initial_seed()
                    (SITE / "marks" / f"{node}.{self.config.width}-{run}.{os.getpid()}").touch()
                    hold = SITE / "hold"
                    if hold.exists() and hold.read_text() == node:
                        time.sleep(300)
                return super().build(input_shape, num_classes)
        ''').replace("SITE_PATH", repr(str(site))))
    (site / "marks").mkdir()
    info = site / "explodes-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: explodes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[scalelab.plugins]\nexplodes = explodes\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), old]))
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [made.add_node(num_cpus=1) for _ in range(2)]
    made.wait_for_nodes()
    yield made, workers, site
    made.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def study_file(tmp_path, **changes):
    spec = {**TINY, "grid": {"width": [4, 8, 16]}, "seeds": [0, 1, 2], "stack_runs": "off",
            **changes}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def scalelab_run(path, out, address, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scalelab", "run", str(path), "--out", str(out), "--backend",
         "ray", "--address", address, "--no-report", "--format", "json", *map(str, extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_completed(out, count, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "results.sqlite").exists():
            with Store.open(out) as store:
                if sum(s == "completed" for s in store.statuses().values()) >= count:
                    return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} runs completed in {timeout} s")


def test_a_study_on_ray_gives_the_local_numbers(tmp_path, cluster):
    made, *_ = cluster
    path = study_file(tmp_path)
    proc = scalelab_run(path, tmp_path / "ray", made.address)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["trained"] == {"completed": 9}
    local = scalelab.run(path, out=tmp_path / "local", device="cpu", workers=1)
    assert local.ok
    on_ray = {r["run_id"]: r for r in scalelab.api.records(tmp_path / "ray")}
    here = {r["run_id"]: r for r in scalelab.api.records(tmp_path / "local")}
    assert on_ray.keys() == here.keys()
    for run_id, record in here.items():
        for key in ("test_loss", "val_loss", "steps", "best_step"):
            assert on_ray[run_id][key] == record[key], (run_id, key)


def test_losing_a_worker_node_mid_study_loses_no_run_and_stores_none_twice(tmp_path,
                                                                           cluster):
    made, workers, site = cluster
    doomed = workers[0].node_id
    (site / "hold").write_text(doomed)  # the first task there waits for the node to die
    path = study_file(tmp_path, model={**TINY["model"], "name": "held_on_node"})
    out = tmp_path / "out"
    proc = scalelab_run(path, out, made.address)
    try:
        deadline = time.time() + 120
        while not list((site / "marks").glob(f"{doomed}.*")):
            assert time.time() < deadline and proc.poll() is None, "no task reached the node"
            time.sleep(0.1)
        made.remove_node(workers[0])  # its task in flight dies with it and is retried elsewhere
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        (site / "hold").unlink()
        workers[0] = made.add_node(num_cpus=1)  # for the tests after this one
    assert proc.returncode == 0, stderr
    [lost] = list((site / "marks").glob(f"{doomed}.*"))
    run = lost.name.split(".")[1]
    retried = [m for m in (site / "marks").glob(f"*.{run}.*") if m != lost]
    assert retried, "the task lost with its node was not run again"
    with Store.open(out) as store:
        statuses = store.statuses()
        curves = store.curves()
    assert len(statuses) == 9 and set(statuses.values()) == {"completed"}
    assert json.loads(stdout)["trained"] == {"completed": 9}
    steps = {(c["run_id"], c["name"], c["step"]) for c in curves}
    assert len(steps) == len(curves)  # no curve point stored twice either


def test_a_run_that_raises_is_stored_failed_with_its_traceback(tmp_path, cluster):
    made, *_ = cluster
    path = study_file(tmp_path, grid={"model.name": ["mlp", "explodes_on_worker"]},
                      seeds=[0], model={"name": "mlp"})
    proc = scalelab_run(path, tmp_path / "out", made.address)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr  # some runs failed
    assert json.loads(stdout)["trained"] == {"completed": 1, "failed": 1}
    [failed] = [r for r in scalelab.api.records(tmp_path / "out") if r["status"] == "failed"]
    assert "RuntimeError: boom in the run" in failed["error"] and "Traceback" in failed["error"]


def test_a_killed_driver_is_resumed_training_only_what_is_missing(tmp_path, cluster):
    made, *_ = cluster
    path = study_file(tmp_path, train={**TINY["train"], "max_steps": 400, "eval_every": 100})
    out = tmp_path / "out"
    first = scalelab_run(path, out, made.address)
    wait_for_completed(out, 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    with Store.open(out) as store:
        done = sum(s == "completed" for s in store.statuses().values())
    second = scalelab_run(path, out, made.address)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["already_done"] == done and report["trained"] == {"completed": 9 - done}
    with Store.open(out) as store:
        assert set(store.statuses().values()) == {"completed"} and len(store.statuses()) == 9


def test_a_halving_search_on_ray_decides_through_the_drivers_store(tmp_path, cluster):
    """Workers on other nodes never open the store: their rungs go through one actor on the
    driver's node, and every setting is decided once."""
    made, *_ = cluster
    path = study_file(tmp_path, grid={"width": [4], "lr": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]},
                      seeds=[0, 1], nuisance=["lr"], nuisance_search="halving",
                      train={**TINY["train"], "max_steps": 90, "eval_every": 10})
    proc = scalelab_run(path, tmp_path / "ray", made.address)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert sum(json.loads(stdout)["trained"].values()) == 12
    with Store.open(tmp_path / "ray") as store:
        rungs, decisions = store.rung_records()
        records = store.records()
    # every run, trained on a worker node, reported its first rung through the actor; runs
    # arrive one by one there (asynchronous halving: the first to arrive go on)
    assert {x["run_id"] for x in rungs if x["rung"] == 1} == {r["run_id"] for r in records}
    keys = [(d["setting"], d["rung"]) for d in decisions]
    assert len(keys) == len(set(keys))
    decided = {k: d["promoted"] for k, d in zip(keys, decisions)}
    for r in records:
        setting = f'{{"lr": {r["lr"]}}}'
        if r["status"] == "pruned":
            assert decided[(setting, r["pruned_rung"])] == 0
        else:
            assert all(decided[(setting, x["rung"])] for x in rungs
                       if x["run_id"] == r["run_id"])
