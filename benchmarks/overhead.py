"""Overhead of scalelab's trainer and runner over a plain hand-written PyTorch loop.

Both train the same MNIST-1D MLP (width 128, depth 2, Adam, constant lr, batch 100) for the
same number of steps on the same data, and end by evaluating the test set; scalelab also
does what it always does (FLOP counting, validation every 500 steps, train/val/test metrics,
storing the run in SQLite). The figure is the median of time(scalelab)/time(plain) over
alternating repeats in one process. Goal: <= 1.05.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, median, report  # noqa: E402

from scalelab.output import Output  # noqa: E402
from scalelab.plugin import instantiate  # noqa: E402
from scalelab.registry import tasks  # noqa: E402
from scalelab.runner import execute_study  # noqa: E402
from scalelab.spec import validate_study  # noqa: E402

TASK = {"name": "mnist1d", "num_train": 4000}


def study(steps: int):
    return validate_study({
        "name": "overhead", "task": TASK, "model": {"name": "mlp", "width": 128, "depth": 2},
        "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 100, "max_steps": steps,
                  "schedule": "constant", "eval_every": 500},
    }, "overhead")


def scalelab_run(steps: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        execute_study(study(steps), Path(out), workers=1, device="cpu",
                      output=Output("json"))


def plain_run(steps: int) -> None:
    data = instantiate(tasks, TASK).load()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 128), nn.ReLU(), nn.Linear(128, 128),
                          nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y, n = data.x_train, data.y_train, len(data.y_train)
    g = torch.Generator().manual_seed(0)
    order, cursor = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if cursor + 100 > n:
            order, cursor = torch.randperm(n, generator=g), 0
        idx = order[cursor:cursor + 100]
        cursor += 100
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        F.cross_entropy(model(data.x_test), data.y_test).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    plain_run(10)  # warm up: data generation/cache, torch kernels
    scalelab_run(10)
    ratios = alternate(lambda: scalelab_run(args.steps), lambda: plain_run(args.steps), args.repeats)
    report("scalelab_time_over_plain_loop", median(ratios), "<= 1.05",
           steps=args.steps, repeats=args.repeats, ratios=[round(r, 4) for r in ratios])


if __name__ == "__main__":
    main()
