"""Time to accuracy on MNIST-1D: scalelab's recipe against the MNIST-1D reference recipe.

Model, both sides: the MNIST-1D CNN (3 conv layers of 25 channels, kernel 5, stride 2, then
a linear head; scalelab's `cnn` family), 4,000 training examples, 5 seeds.
Reference recipe: Adam, lr 1e-2 constant, batch 100, 6,000 steps, each seed trained alone.
scalelab's recipe: AdamW, lr 2e-2, 50 warmup steps then cosine decay, batch 100, 1,500 steps,
the 5 seeds trained together as one batched group.
Both run through scalelab's trainers in this process and report the same test metric (the
best-validation checkpoint). scalelab must reach a mean test accuracy at least the
reference's; the figure is time(reference) / time(scalelab). Goal: >= 3.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from scalelab.spec import validate_study  # noqa: E402
from scalelab.train import train_group, train_run  # noqa: E402

CNN = {"name": "cnn", "channels": 25, "depth": 3, "kernel_size": 5, "stride": 2}
REFERENCE = {"optimizer": "adam", "lr": 1e-2, "batch_size": 100, "max_steps": 6000,
             "schedule": "constant", "eval_every": 500}
SCALELAB = {"optimizer": "adamw", "lr": 2e-2, "batch_size": 100, "max_steps": 1500,
            "schedule": "cosine", "warmup_steps": 50, "eval_every": 250}


def configs(train: dict, seeds: int) -> list[dict]:
    study = validate_study({"name": "tta", "task": {"name": "mnist1d", "num_train": 4000},
                            "model": CNN, "train": train, "seeds": seeds}, "time_to_accuracy")
    return [r.config for r in study.runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    train_run(configs({**REFERENCE, "max_steps": 20}, 1)[0])  # warm up

    start = time.perf_counter()
    reference = [train_run(c) for c in configs(REFERENCE, args.seeds)]
    t_reference = time.perf_counter() - start
    start = time.perf_counter()
    ours = train_group(configs(SCALELAB, args.seeds))
    t_ours = time.perf_counter() - start

    acc_ref = [r.metrics["test_acc"] for r in reference]
    acc_ours = [r.metrics["test_acc"] for r in ours]
    print(f"reference: {t_reference:.1f} s, test acc {statistics.mean(acc_ref):.4f} {acc_ref}")
    print(f"scalelab:  {t_ours:.1f} s, test acc {statistics.mean(acc_ours):.4f} {acc_ours}")
    met = statistics.mean(acc_ours) >= statistics.mean(acc_ref)
    report("reference_time_over_scalelab_time_at_equal_accuracy", t_reference / t_ours, ">= 3",
           accuracy_condition_met=met, mean_test_acc_scalelab=statistics.mean(acc_ours),
           mean_test_acc_reference=statistics.mean(acc_ref), seconds_scalelab=t_ours,
           seconds_reference=t_reference, seeds=args.seeds)


if __name__ == "__main__":
    main()
