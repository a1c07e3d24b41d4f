"""A stand-in for ``runner._base.train_group_of`` (importable by spawned workers): the run
whose grid point has width 8 kills its worker process; every other run completes."""

import os

from scalelab.train import COMPLETED, RunResult


def train_group_of(group, device, checkpoint):
    if any(r.point.get("width") == 8 for r in group.runs):
        os._exit(3)
    return [RunResult(COMPLETED, {"test_loss": 1.0, "val_loss": 1.0, "n_params": 10})
            for _ in group.runs]
