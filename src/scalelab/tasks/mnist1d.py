"""MNIST-1D, generated locally by the ``mnist1d`` package (no download)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from pydantic import Field, model_validator

from ..plugin import PluginConfig
from ..registry import tasks
from ._base import Task, TaskData, cached_arrays


def _generate(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, 1.0
    state = np.random.get_state()  # mnist1d seeds numpy's global generator; leave it as found
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    return {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64)}


def _cached(num_samples: int, seed: int, generate: bool = True) -> dict[str, np.ndarray] | None:
    return cached_arrays("mnist1d", {"num_samples": num_samples, "seed": seed, "v": 1},
                         lambda: _generate(num_samples, seed), generate)


@lru_cache(maxsize=8)
def _split(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = _cached(num_samples, seed)
    return torch.from_numpy(arrays["x"]).unsqueeze(1), torch.from_numpy(arrays["y"])


@tasks.register("mnist1d")
class MNIST1D(Task):
    """MNIST-1D (40-sample 1-D digits, 10 classes), generated locally; fixed test set."""

    class Config(PluginConfig):
        num_train: int = Field(4000, ge=1, description="training examples taken from the pool")
        num_val: int = Field(1000, ge=1, description="validation examples (early stopping)")
        num_test: int = Field(2000, ge=10, description="held-out test examples")
        pool_size: int = Field(10000, ge=2, description="generated pool for train + validation")
        pool_seed: int = Field(0, description="seed of the train/validation pool")
        test_seed: int = Field(10_000, description="seed of the separately generated test set")

        @model_validator(mode="after")
        def _fits_in_pool(self):
            if self.num_train + self.num_val > self.pool_size:
                raise ValueError(
                    f"num_train + num_val = {self.num_train + self.num_val} exceeds "
                    f"pool_size = {self.pool_size}; raise pool_size"
                )
            if self.pool_seed == self.test_seed:
                raise ValueError("pool_seed and test_seed must differ")
            return self

    def check(self) -> None:
        """Before any run: a damaged cached set is generated again here, once (not in every
        worker), and a cache folder the sets still to generate cannot be written to is
        refused in one line. Generates nothing that is missing."""
        c = self.config
        for num_samples, seed in ((c.pool_size, c.pool_seed), (c.num_test, c.test_seed)):
            _cached(num_samples, seed, generate=False)

    def shape(self) -> tuple[tuple[int, ...], int, int]:
        return (1, 40), 10, self.config.num_train

    def load(self) -> TaskData:
        c = self.config
        x_pool, y_pool = _split(c.pool_size, c.pool_seed)
        x_test, y_test = _split(c.num_test, c.test_seed)
        # Training sets are nested prefixes of the pool; validation is the pool's fixed tail,
        # so a num_train axis changes the training data and nothing else.
        return TaskData(
            x_train=x_pool[: c.num_train], y_train=y_pool[: c.num_train],
            x_val=x_pool[-c.num_val:], y_val=y_pool[-c.num_val:],
            x_test=x_test, y_test=y_test, num_classes=10,
        )
