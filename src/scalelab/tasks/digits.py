"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, offline)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from pydantic import Field

from ..plugin import PluginConfig
from ..registry import tasks
from ._base import Task, TaskData

NUM_TEST, NUM_VAL = 360, 180  # fixed split; the remaining 1,257 images form the training pool


@lru_cache(maxsize=1)
def _shuffled() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    x = torch.from_numpy((d.images[order] / 16.0).astype(np.float32)).unsqueeze(1)
    return x, torch.from_numpy(d.target[order].astype(np.int64))


@tasks.register("digits")
class Digits(Task):
    """scikit-learn 8x8 digits (10 classes), fixed test/validation split, 1,257-image pool."""

    class Config(PluginConfig):
        num_train: int = Field(1257, ge=1, le=1797 - NUM_TEST - NUM_VAL,
                               description="training images taken from the 1,257-image pool")

    def shape(self) -> tuple[tuple[int, ...], int, int]:
        return (1, 8, 8), 10, self.config.num_train

    def load(self) -> TaskData:
        x, y = _shuffled()
        n = self.config.num_train
        return TaskData(
            x_test=x[:NUM_TEST], y_test=y[:NUM_TEST],
            x_val=x[NUM_TEST:NUM_TEST + NUM_VAL], y_val=y[NUM_TEST:NUM_TEST + NUM_VAL],
            x_train=x[NUM_TEST + NUM_VAL:][:n], y_train=y[NUM_TEST + NUM_VAL:][:n],
            num_classes=10,
        )
