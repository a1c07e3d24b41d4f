"""Beyond one process: the Ray executor against local workers, a node lost mid-study, and
two runners sharing one directory through run claims.

1. The same 16-run MNIST-1D study (runs of about 5 s) through the Ray executor on a Ray
   cluster of two simulated worker nodes with one CPU each, and through the local executor
   with two worker processes: median of time(Ray)/time(local) over alternating repeats.
   Goal: <= 1.15.
2. The study on that cluster with one worker node removed once the first runs are stored:
   runs lost and runs stored twice. Goal: 0 and 0.
3. A 12-run study trained by one `scalelab run`, and by two started together on the same
   directory, each runner on one core (one worker, OMP_NUM_THREADS=1) as on its own
   machine: runs trained twice (goal 0) and time(one)/time(two) (goal >= 1.6).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, median, report  # noqa: E402

from scalelab.store import Store  # noqa: E402

TASK = {"name": "mnist1d", "num_train": 2000, "num_val": 500, "pool_size": 3000}
STUDY = {
    "name": "cluster_bench", "task": TASK, "model": {"name": "mlp", "width": 64, "depth": 2},
    "train": {"optimizer": "adam", "lr": 0.003, "batch_size": 100, "max_steps": 8000,
              "eval_every": 1000},
    "grid": {"train.lr": [0.001, 0.002, 0.003, 0.005]}, "seeds": [0, 1, 2, 3],
    "stack_runs": "off",
}
SHARED = {**STUDY, "train": {**STUDY["train"], "max_steps": 4000},
          "grid": {"train.lr": [0.001, 0.003, 0.01]}}


def scalelab(study: Path, out: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scalelab", "run", str(study), "--out", out,
                             "--no-report", "--format", "json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)


def trained(proc: subprocess.Popen) -> int:
    stdout, _ = proc.communicate()
    assert proc.returncode == 0
    return sum(json.loads(stdout)["trained"].values())


def ray_vs_local(study: Path, address: str, repeats: int) -> list[float]:
    def once(*extra):
        with tempfile.TemporaryDirectory() as out:
            assert trained(scalelab(study, out, *extra)) == 16

    return alternate(lambda: once("--backend", "ray", "--address", address),
                     lambda: once("--workers", "2"), repeats)


def node_loss(study: Path, cluster, workers) -> dict:
    with tempfile.TemporaryDirectory() as out:
        proc = scalelab(study, out, "--backend", "ray", "--address", cluster.address)
        while True:  # until the first runs are stored
            time.sleep(0.5)
            if (Path(out) / "results.sqlite").exists():
                with Store.open(out) as store:
                    if sum(s == "completed" for s in store.statuses().values()) >= 2:
                        break
        cluster.remove_node(workers[0])
        count = trained(proc)
        with Store.open(out) as store:
            stored = list(store.statuses().values())
    return {"runs_lost": 16 - stored.count("completed"), "runs_stored_twice": len(stored) - 16,
            "runs_trained": count}


def shared(study: Path, repeats: int) -> tuple[list[float], int]:
    twice = []

    def runners(count: int) -> None:
        with tempfile.TemporaryDirectory() as out:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            total = sum(trained(p) for p in [scalelab(study, out, "--workers", "1", env=env)
                                             for _ in range(count)])
            twice.append(total - 12)

    runners(1)  # warm the dataset cache
    ratios = alternate(lambda: runners(1), lambda: runners(2), repeats)
    return ratios, max(twice)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory() as tmp:
        study, small = Path(tmp) / "cluster_bench.yaml", Path(tmp) / "shared_bench.yaml"
        study.write_text(yaml.safe_dump(STUDY))
        small.write_text(yaml.safe_dump(SHARED))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        try:
            ratios = ray_vs_local(study, cluster.address, args.repeats)
            fault = node_loss(study, cluster, workers)
        finally:
            cluster.shutdown()
        shared_ratios, duplicated = shared(small, args.repeats)
    print(f"  node removed mid-study: {fault}; two runners: {duplicated} run(s) trained twice, "
          f"speed-up {median(shared_ratios):.3f}", flush=True)
    report("ray_time_over_local_time", median(ratios), "<= 1.15", runs=16,
           ratios=[round(r, 4) for r in ratios], node_loss=fault,
           node_loss_goal="0 lost, 0 stored twice", two_runners_duplicated=duplicated,
           two_runners_speedup=round(median(shared_ratios), 4),
           two_runners_ratios=[round(r, 4) for r in shared_ratios],
           two_runners_goal="0 duplicated, speed-up >= 1.6")


if __name__ == "__main__":
    main()
