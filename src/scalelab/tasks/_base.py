"""Task base class: a task turns its config into fixed train/validation/test tensors."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..plugin import Plugin


@dataclass
class TaskData:
    """Tensors for one run. The test split never depends on the training-set size."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: list[str] | None = None  # for per-class reports; None: class indices

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> TaskData:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in self.__dict__.items()}
        return TaskData(**moved)


class Task(Plugin, ABC):
    """A data source. Subclasses implement :meth:`load`."""

    #: What :meth:`load` returns: ``classification`` (a :class:`TaskData`) or ``language``
    #: (token streams); a model family declares which kinds it can learn.
    data_kind: ClassVar[str] = "classification"
    #: Whether :meth:`load` holds every split in memory as tensors (a :class:`TaskData`);
    #: a streamed task (image folders) cannot stack runs or be re-scored by evaluators.
    in_memory: ClassVar[bool] = True

    @abstractmethod
    def load(self) -> TaskData:
        """The fixed train/validation/test tensors this config describes."""

    def check(self) -> None:
        """Refuse, when the study is validated, data this task could never load (a missing
        or unreadable file); raise :class:`~scalelab.errors.ScalelabError`. Tasks that
        generate their data have nothing to check."""

    def shape(self) -> tuple[tuple[int, ...], int, int]:
        """(input shape, number of classes, training examples), for planning; a task that
        knows them from its config says so without loading its data."""
        data = self.load()
        return data.input_shape, data.num_classes, len(data.y_train)


def cache_dir() -> Path:
    """Where generated datasets are kept (``$SCALELAB_CACHE`` or ``~/.cache/scalelab``)."""
    root = os.environ.get("SCALELAB_CACHE") or Path.home() / ".cache" / "scalelab"
    return Path(root)


def cached_arrays(
    name: str, key: dict, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Arrays from ``build()``, generated once per ``key`` and kept as an ``.npz`` file.

    The file is written to a temporary name and renamed, so concurrent workers and a killed
    process never leave a truncated cache behind.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / name / f"{digest}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays
