"""Two runners sharing one output directory through run claims, against one runner alone.

The same 12-run MNIST-1D study (batch_runs off) is trained into a fresh directory by one
`scalelab run`, and by two started together on the same directory; each run is trained once
either way (checked). Each runner gets one core (one worker, OMP_NUM_THREADS=1), as it would
have its own machine or GPU: runners on one machine share its cores, and two runners that
each use all of them only fight over them. The figure is the median of time(one runner) /
time(two runners) over alternating repeats. Goal: >= 1.6 on a 2-core machine (the work is
shared, close to half the time; process start-up is the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, median, report  # noqa: E402

STUDY = {
    "name": "claims_bench",
    "task": {"name": "mnist1d", "num_train": 2000, "num_val": 500, "pool_size": 3000},
    "model": {"name": "mlp", "width": 64, "depth": 2},
    "train": {"optimizer": "adam", "lr": 0.003, "batch_size": 100, "max_steps": 4000,
              "eval_every": 500},
    "grid": {"train.lr": [0.001, 0.003, 0.01]},
    "seeds": [0, 1, 2, 3],
    "batch_runs": "off",
}


def runners(study: Path, count: int) -> None:
    """``count`` runners on one fresh directory; every run trained exactly once."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "scalelab", "run", str(study), "--out", out,
                   "--workers", "1", "--no-report", "--format", "json"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, env=env) for _ in range(count)]
        trained = sum(sum(json.loads(p.communicate()[0])["trained"].values()) for p in procs)
        assert trained == 12, trained


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "claims_bench.yaml"
        study.write_text(yaml.safe_dump(STUDY))
        runners(study, 1)  # warm the dataset cache
        ratios = alternate(lambda: runners(study, 1), lambda: runners(study, 2), args.repeats)
    report("one_runner_time_over_two_runners_time", median(ratios), ">= 1.6", runs=12,
           repeats=args.repeats, ratios=[round(r, 4) for r in ratios])


if __name__ == "__main__":
    main()
