"""Model-steps per second: 16 MNIST-1D MLP seeds trained as one stacked model vs one at a time.

Both sides use scalelab's own trainers on the same configs (width 64, depth 2, Adam, batch
100, num_train 4000, validation every 500 steps), in one process with all cores. The figure
is throughput(batched) / throughput(one at a time), median over alternating repeats.
Goal: >= 4 on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, median, report  # noqa: E402

from scalelab.spec import validate_study  # noqa: E402
from scalelab.train import train_group, train_run  # noqa: E402


def configs(seeds: int, steps: int, width: int) -> list[dict]:
    study = validate_study({
        "name": "batched", "task": {"name": "mnist1d", "num_train": 4000},
        "model": {"name": "mlp", "width": width, "depth": 2},
        "train": {"optimizer": "adam", "lr": 3e-3, "batch_size": 100, "max_steps": steps,
                  "eval_every": 500},
        "seeds": seeds,
    }, "batched")
    return [r.config for r in study.runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfgs = configs(args.seeds, args.steps, args.width)
    train_run(configs(1, 10, args.width)[0])  # warm up data cache and kernels

    def batched():
        assert all(r.status == "completed" for r in train_group(cfgs))

    def one_at_a_time():
        assert all(train_run(c).status == "completed" for c in cfgs)

    # time(one at a time) / time(batched) = throughput(batched) / throughput(one at a time)
    ratios = alternate(one_at_a_time, batched, args.repeats)
    report("batched_over_sequential_model_steps_per_second", median(ratios), ">= 4",
           seeds=args.seeds, steps=args.steps, width=args.width,
           ratios=[round(r, 3) for r in ratios])


if __name__ == "__main__":
    main()
