"""Precomputed feature arrays (e.g. CLIP image embeddings) with labels, for linear or MLP heads.

A folder holds ``{split}_features`` and ``{split}_labels`` as ``.npy`` or ``.pt`` files for the
``train`` and ``test`` splits, and optionally ``val``; without validation files the last
``num_val`` training rows are held out for validation. Train with ``model: {name: mlp,
depth: 0}`` for a linear probe.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from ..errors import ScalelabError, first_line
from ..plugin import PluginConfig
from ..registry import tasks
from ._base import Task, TaskData

SUFFIXES = (".npy", ".pt")


def _load_array(path: Path) -> np.ndarray:
    """A plain numeric array: never unpickled (``allow_pickle=False``, ``weights_only``)."""
    try:
        if path.suffix == ".npy":
            value = np.load(path, allow_pickle=False)
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not the format, an object array, a pickled object
        first = first_line(exc, 160)
        raise ScalelabError(f"{path}: not a readable {path.suffix} array ({first}); write "
                            "plain numeric arrays (numpy.save, or torch.save of a tensor)") from None
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    if not isinstance(value, np.ndarray) or not (np.issubdtype(value.dtype, np.number)
                                                 or value.dtype == np.bool_):
        kind = type(value).__name__ if not isinstance(value, np.ndarray) else value.dtype
        raise ScalelabError(f"{path}: expected a numeric array or tensor, found {kind}")
    return value


def _find(root: Path, stem: str, required: bool) -> Path | None:
    for suffix in SUFFIXES:
        if (root / f"{stem}{suffix}").exists():
            return root / f"{stem}{suffix}"
    if required:
        expected = " or ".join(str(root / f"{stem}{s}") for s in SUFFIXES)
        raise ScalelabError(f"task.path: missing {expected} (an embeddings folder holds "
                            "train_/test_ features and labels as .npy or .pt)")
    return None


@lru_cache(maxsize=4)
def _read(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ScalelabError(f"task.path: {root} is not a folder of feature arrays")
    splits = {}
    for split in ("train", "val", "test"):
        required = split != "val"
        features = _find(root, f"{split}_features", required)
        labels = _find(root, f"{split}_labels", required or features is not None)
        if features is None:
            continue
        x, y = _load_array(features), _load_array(labels)
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise ScalelabError(f"{features}: features must be (n, dim) with n labels; got "
                                f"{x.shape} and {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise ScalelabError(f"{labels}: labels must be non-negative integers")
        splits[split] = (x.astype(np.float32), y.astype(np.int64))
    return splits


@tasks.register("embeddings")
class Embeddings(Task):
    """Precomputed features + labels (.npy/.pt), e.g. CLIP embeddings, for linear/MLP heads."""

    class Config(PluginConfig):
        path: str = Field("", description="folder with {train,val,test}_{features,labels}.npy/.pt")
        num_train: int | None = Field(None, ge=1, description="training rows used (a prefix)")
        num_val: int = Field(1000, ge=1, description="validation rows taken from the end of "
                                                     "train when there are no val files")
        normalize: bool = Field(False, description="L2-normalise every feature vector (CLIP)")

    def check(self) -> None:
        self._splits()

    def _splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not self.config.path:
            raise ScalelabError("task.path: the embeddings task needs the folder of features")
        return _read(self.config.path)

    def load(self) -> TaskData:
        c = self.config
        splits = self._splits()
        x, y = splits["train"]
        if "val" in splits:
            x_val, y_val = splits["val"]
        else:
            if c.num_val >= len(y):
                raise ScalelabError(f"task.num_val: {c.num_val} leaves no training rows of "
                                    f"{len(y)}")
            x, y, x_val, y_val = x[:-c.num_val], y[:-c.num_val], x[-c.num_val:], y[-c.num_val:]
        if c.num_train is not None:
            if c.num_train > len(y):
                raise ScalelabError(f"task.num_train: {c.num_train} exceeds the {len(y)} "
                                    "training rows")
            x, y = x[: c.num_train], y[: c.num_train]
        x_test, y_test = splits["test"]
        classes = int(max(y.max(), y_val.max(), y_test.max())) + 1
        tensors = [torch.from_numpy(a) for a in (x, y, x_val, y_val, x_test, y_test)]
        if c.normalize:
            for i in (0, 2, 4):
                tensors[i] = torch.nn.functional.normalize(tensors[i], dim=1)
        return TaskData(*tensors, num_classes=classes)
