"""What the in-memory image tasks (MNIST, CIFAR) share: their settings, the split of the
official training set into nested training prefixes and a validation tail, normalisation,
the one-line error for missing files, and small synthetic sets written in the real format.

A task reads the files at ``path``; with ``path`` empty, the dataset as ``scalelab data get``
keeps it in the cache, fetched on first use only when ``download: true`` (or ``scalelab run
--download``) allows it, else refused in one line naming the command that fetches it.
``synthetic: N`` instead writes N images per class of class-dependent noise in the task's
own file format into the cache and reads them back through the same reader, so quick studies
and tests run the real loading code on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from ..datasets import ensure
from ..errors import ScalelabError
from ..plugin import PluginConfig
from ._base import TaskData, cache_dir, check_writable_cache, damaged_cache


class ImageConfig(PluginConfig):
    #: ``download`` came after stores existed: at its default it stays out of run ids.
    later_settings: ClassVar[dict[str, object]] = {"download": False}

    path: str = Field("", description="folder holding the dataset's standard files; empty: "
                      "the dataset cache (`scalelab data get NAME`)")
    download: bool = Field(False, description="with path empty: fetch the dataset into the "
                           "cache on first use (checksummed, resumable) instead of refusing")
    num_train: int | None = Field(None, ge=1, description="training images used: a prefix of "
                                  "the official training set (nested across sizes)")
    num_val: int = Field(5000, ge=0, description="validation images: the tail of the official "
                         "training set, never trained on; 0 trains on all of it (no early "
                         "stopping or best-weights restore; the test set is scored once, at "
                         "the end)")
    synthetic: int = Field(0, ge=0, description="when > 0: ignore path, write this many images "
                           "per class in the real file format into the cache and read them")


#: Folders of readers already parsed in this process (tests, one worker's many runs).
_read_cache: dict[tuple, Any] = {}


def read_once(key: tuple, read: Callable[[], Any]) -> Any:
    """``read()``, once per ``key`` in this process (the last four kept)."""
    if key not in _read_cache:
        if len(_read_cache) >= 4:
            _read_cache.pop(next(iter(_read_cache)))
        _read_cache[key] = read()
    return _read_cache[key]


def data_folder(task: str, config: ImageConfig, expected: str, where: str,
                write_synthetic: Callable[[Path, np.ndarray, np.ndarray, np.ndarray,
                                           np.ndarray], None],
                shape: tuple[int, int, int], classes: int) -> Path:
    """The folder to read: the user's ``path``, a synthetic set written once in the cache, or
    (``path`` empty) the dataset as ``scalelab data get`` caches it. A missing folder is
    refused in one line naming the files expected and where to get them."""
    if config.synthetic:
        return synthetic_folder(task, config.synthetic, write_synthetic, shape, classes)
    if not config.path:  # the dataset cache (the catalog names each dataset as its task)
        return ensure(task, task=task, download=config.download)
    root = Path(config.path).expanduser()
    if not root.is_dir():
        raise ScalelabError(f"task.path: {root} is not a folder; the {task} task expects "
                            f"{expected} there ({where})")
    return root


def missing(task: str, root: Path, expected: str, where: str) -> ScalelabError:
    return ScalelabError(f"task.path: {root} has no {task} files: expected {expected} "
                         f"({where})")


#: The record of a synthetic set's files (name -> size and sha256), written last.
MANIFEST = "scalelab-files.json"
#: Synthetic folders this process has checked against their record.
_sound: set[Path] = set()


def synthetic_folder(task: str, per_class: int,
                     write: Callable[[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                                     None],
                     shape: tuple[int, int, int], classes: int, spread: float = 15.0) -> Path:
    """A folder of ``per_class`` training and ``per_class // 5`` (at least 2) test images per
    class (H x W x C ``shape``; class templates ``spread`` apart) in the task's format,
    written by ``write``, generated once per size, flushed to the disk with a record of its
    files and renamed into place whole. A folder whose files do not match the record (cut
    short by a power loss) is generated again, once, with a line saying so."""
    digest = hashlib.sha256(f"{task}:{per_class}:{shape}:{classes}:{spread}:v2".encode()
                            ).hexdigest()[:12]
    folder = cache_dir() / "synthetic" / f"{task}-{per_class}-{digest}"
    if folder.is_dir():
        problem = _damage(folder)
        if problem is None:
            return folder
        check_writable_cache(folder.parent)
        damaged_cache(folder, f"synthetic {task} set", problem)
        _discard(folder)
    check_writable_cache(folder.parent)
    rng = np.random.default_rng(per_class)
    h, w, c = shape
    coarse = rng.uniform(60, 195, size=(1, 4, 4, c)) + rng.normal(0, spread, size=(classes, 4, 4, c))
    templates = coarse.repeat(-(-h // 4), 1).repeat(-(-w // 4), 2)[:, :h, :w]
    x_train, y_train = synthetic_images(rng, templates, per_class)
    x_test, y_test = synthetic_images(rng, templates, max(2, per_class // 5))
    partial = folder.with_name(f".{folder.name}.{secrets.token_hex(6)}.tmp")
    partial.mkdir(parents=True)
    try:
        write(partial, x_train, y_train, x_test, y_test)
        _seal(partial)
        try:
            partial.rename(folder)
        except OSError:  # another process finished first: its folder is the same set
            if not folder.is_dir():
                raise
            shutil.rmtree(partial, ignore_errors=True)
        else:
            _fsync(folder.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a full disk keeps no half-written set
        raise
    _sound.add(folder)
    return folder


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(folder: Path) -> None:
    """Flush every file of ``folder`` to the disk and record its size and sha256 last."""
    record = {}
    for path in _files(folder):
        _fsync(path)
        record[path.relative_to(folder).as_posix()] = [path.stat().st_size, _sha256(path)]
    for sub in {p.parent for p in _files(folder)} | {folder}:
        _fsync(sub)
    with open(folder / MANIFEST, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync(folder)


def _damage(folder: Path) -> str | None:
    """What is wrong with a synthetic folder against its record (None: nothing)."""
    if folder in _sound:
        return None
    try:
        record = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return "no record of its files"
    found = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
    for name, (size, sha) in record.items():
        path = found.get(name)
        if path is None:
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes of {size:,}"
        if _sha256(path) != sha:
            return f"{name} does not match its checksum"
    _sound.add(folder)
    return None


def _discard(folder: Path) -> None:
    """Move a damaged folder out of the way (in one step, so a reader never sees it half
    removed) and remove it."""
    aside = folder.with_name(f".{folder.name}.{secrets.token_hex(6)}.damaged")
    try:
        folder.rename(aside)
    except FileNotFoundError:
        return  # another process moved it first
    shutil.rmtree(aside, ignore_errors=True)


def synthetic_images(rng: np.random.Generator, templates: np.ndarray, per_class: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, C) in shuffled order: each one its class's template (one
    blocky random image, nudged per class), randomly shifted, plus heavy pixel noise: a
    small net learns it, not perfectly."""
    classes = len(templates)
    labels = np.repeat(np.arange(classes), per_class)
    rng.shuffle(labels)
    shifts = rng.integers(-2, 3, size=(len(labels), 2))
    images = np.stack([np.roll(templates[y], tuple(s), axis=(0, 1))
                       for y, s in zip(labels, shifts)])
    images = images + rng.normal(0, 60, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def split(config: ImageConfig, task: str, x_train: np.ndarray, y_train: np.ndarray,
          x_test: np.ndarray, y_test: np.ndarray, classes: list[str]) -> TaskData:
    """TaskData from uint8 (N, H, W, C) arrays: validation from the tail of the official
    training set, training images a prefix of the rest, pixels normalised per channel with
    the statistics of the training pool."""
    n = len(y_train)
    if config.num_val >= n:
        raise ScalelabError(f"task.num_val: {config.num_val} leaves no training images of the "
                            f"{n} in {task}'s training set")
    pool = n - config.num_val
    num_train = config.num_train or pool
    if num_train > pool:
        raise ScalelabError(f"task.num_train: {num_train} exceeds the {pool} training images "
                            f"of {task} left after num_val={config.num_val}")
    # airbench normalises by CIFAR-10's published channel statistics; these, taken over
    # the whole 50,000-image pool (num_val: 0), are the same to 3 decimals.
    mean = x_train[:pool].reshape(-1, x_train.shape[-1]).mean(0) / 255
    std = x_train[:pool].reshape(-1, x_train.shape[-1]).std(0) / 255

    def tensor(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div_(255)
        return x.sub_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)).div_(
            torch.tensor(std, dtype=torch.float32).clamp_min(1e-6).view(1, -1, 1, 1))

    labels = [torch.from_numpy(y.astype(np.int64)) for y in (y_train, y_test)]
    return TaskData(
        x_train=tensor(x_train[:num_train]), y_train=labels[0][:num_train],
        x_val=tensor(x_train[pool:]), y_val=labels[0][pool:],
        x_test=tensor(x_test), y_test=labels[1], num_classes=len(classes),
        class_names=list(classes))
