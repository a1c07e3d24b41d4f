"""Task base class: a task turns its config into fixed train/validation/test tensors."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..errors import ScalelabError, first_line
from ..files import open_atomically
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


def check_writable_cache(folder: Path) -> None:
    """Refuse in one line, before anything is generated or trained, a cache ``folder``
    (inside :func:`cache_dir`) that data cannot be written to: the cache is a file, or a
    place this user may not write."""
    name = "SCALELAB_CACHE" if os.environ.get("SCALELAB_CACHE") else "the dataset cache"
    advice = ("generated datasets are kept there: point SCALELAB_CACHE at a folder you may "
              "write to")
    existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise ScalelabError(f"{name}: {existing} is a file, not a folder; {advice}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ScalelabError(f"{name}: {existing} cannot be written to (permission denied or "
                            f"a read-only disk); {advice}")


def damaged_cache(path: Path, what: str, problem: str) -> None:
    """Say, in one line, that a cached file or folder is damaged and is generated again."""
    from ..output import Output

    Output().warn(f"{path}: the cached {what} is damaged ({problem}), e.g. cut short by a "
                  "power loss; generating it again")


#: What loading a damaged ``.npz`` raises (cut short, zero-filled, overwritten).
_DAMAGED_NPZ = (zipfile.BadZipFile, EOFError, ValueError, KeyError, zlib.error)


def cached_arrays(
    name: str, key: dict, build: Callable[[], dict[str, np.ndarray]], generate: bool = True
) -> dict[str, np.ndarray] | None:
    """Arrays from ``build()``, generated once per ``key`` and kept as an ``.npz`` file.

    The file is written to a temporary name, flushed to the disk and renamed, so concurrent
    workers, a killed process and a power loss never leave a truncated cache behind; a
    damaged one found (from an older version, or a disk that lied) is generated again, once,
    with a line saying so. ``generate=False``: only check (and repair) the cache, returning
    None when the file is not there yet, and refusing a cache folder it could not be
    written to.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / name / f"{digest}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except _DAMAGED_NPZ as exc:
            check_writable_cache(path.parent)
            damaged_cache(path, f"{name} dataset", first_line(exc, 80))
        except OSError as exc:
            if exc.errno is not None:  # unreadable (permissions, I/O): the CLI says so
                raise
            check_writable_cache(path.parent)
            damaged_cache(path, f"{name} dataset", first_line(exc, 80))
    else:
        check_writable_cache(path.parent)
        if not generate:
            return None
    arrays = build()
    with open_atomically(path, "wb") as f:  # fsynced before it is renamed into place
        np.savez(f, **arrays)
    return arrays
