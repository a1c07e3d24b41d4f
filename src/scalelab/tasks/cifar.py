"""CIFAR-10 and CIFAR-100 in any of their three common formats, found in ``path``:

- the python version (``cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta``;
  ``cifar-100-python/train, test, meta``), pickles read with an unpickler that builds only
  the dicts, lists, bytes and numpy arrays the format holds: a user's file is never run;
- the binary version (``cifar-10-batches-bin/data_batch_1..5.bin, test_batch.bin``;
  ``cifar-100-binary/train.bin, test.bin``): fixed-size records of label byte(s) + 3,072
  pixel bytes;
- airbench's ``train.pt`` / ``test.pt`` (``{"images": uint8 N x 32 x 32 x 3, "labels": N,
  "classes": [...]}``), read with ``torch.load(weights_only=True)``.

The folder itself may be the format's folder, or hold it. With ``path`` empty, the python
version as ``scalelab data get cifar10`` (``cifar100``) keeps it in the dataset cache.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import ScalelabError, first_line
from ..registry import tasks
from ._base import Task, TaskData
from ._images import ImageConfig, data_folder, missing, read_once, split

WHERE = ("`scalelab data get cifar10` (or cifar100) fetches the python version; or from "
         "https://www.cs.toronto.edu/~kriz/cifar.html (python or binary version, unpacked)")


class _ArraysOnly(pickle.Unpickler):
    """Builds what CIFAR's pickles contain (dicts, lists, bytes, numpy arrays) and nothing
    else: any other global a file names is refused instead of imported and called."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds "
                                         "only arrays, lists and bytes")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            value = _ArraysOnly(f, encoding="bytes").load()
    except Exception as exc:  # truncated, foreign, or naming code to run
        raise ScalelabError(f"{path}: not a readable CIFAR python batch "
                            f"({first_line(exc, 160)})") from None
    if not isinstance(value, dict):
        raise ScalelabError(f"{path}: a CIFAR python batch is a dict, found "
                            f"{type(value).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in value.items()}


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class _CIFAR(Task):
    """A CIFAR dataset; subclasses give the file names of each format."""

    Config = ImageConfig
    title: str
    classes: int
    python: tuple[str, list[str], str, str, str]   # folder, train files, test, meta, label key
    binary: tuple[str, list[str], str, int]        # folder, train files, test, label bytes

    def check(self) -> None:
        self._arrays()

    def _expected(self) -> str:
        folder, train, test, *_ = self.python
        bin_folder, bin_train, bin_test, _ = self.binary
        return (f"{folder}/{{{','.join(train + [test])}}}, or {bin_folder}/"
                f"{{{','.join(bin_train + [bin_test])}}}, or train.pt and test.pt")

    def _arrays(self) -> dict:
        root = data_folder(self.title, self.config, self._expected(), WHERE, self._write_synthetic,
                           (32, 32, 3), self.classes)
        return read_once((self.title, str(root)), lambda: self._read(root))

    def _find(self, root: Path, folder: str, files: list[str]) -> Path | None:
        for base in (root / folder, root):
            if all((base / f).exists() for f in files):
                return base
        return None

    def _read(self, root: Path) -> dict:
        folder, train, test, meta, label_key = self.python
        base = self._find(root, folder, train + [test])
        if base is not None:
            parts = [self._python_part(base / f, label_key) for f in train]
            x_test, y_test = self._python_part(base / test, label_key)
            names = None
            if (base / meta).exists():
                info = read_pickle(base / meta)
                names = _names(info.get("label_names") or info.get("fine_label_names") or [])
            return self._arrays_of(root, parts, (x_test, y_test), names)
        bin_folder, bin_train, bin_test, label_bytes = self.binary
        base = self._find(root, bin_folder, bin_train + [bin_test])
        if base is not None:
            parts = [self._binary_part(base / f, label_bytes) for f in bin_train]
            meta_txt = base / ("batches.meta.txt" if label_bytes == 1 else "fine_label_names.txt")
            names = ([line.strip() for line in meta_txt.read_text().splitlines() if line.strip()]
                     if meta_txt.exists() else None)
            return self._arrays_of(root, parts, self._binary_part(base / bin_test, label_bytes),
                                   names)
        if (root / "train.pt").exists() and (root / "test.pt").exists():
            train_part, names = self._pt_part(root / "train.pt")
            return self._arrays_of(root, [train_part], self._pt_part(root / "test.pt")[0], names)
        raise missing(self.title, root, self._expected(), WHERE)

    def _arrays_of(self, root: Path, parts, test, names) -> dict:
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        for label_set, which in ((y, "train"), (test[1], "test")):
            if len(label_set) and (label_set.min() < 0 or label_set.max() >= self.classes):
                raise ScalelabError(f"{root}: {which} labels outside 0..{self.classes - 1}")
        names = names if names and len(names) == self.classes else \
            [str(i) for i in range(self.classes)]
        return {"x_train": x, "y_train": y, "x_test": test[0], "y_test": test[1],
                "classes": names}

    def _python_part(self, path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
        batch = read_pickle(path)
        data, labels = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or labels is None:
            raise ScalelabError(f"{path}: a CIFAR python batch needs 'data' and '{label_key}'")
        labels = np.asarray(labels, dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise ScalelabError(f"{path}: 'data' must be N x 3072 with N labels; got "
                                f"{data.shape} and {labels.shape}")
        return data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    def _binary_part(self, path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
        raw = np.fromfile(path, dtype=np.uint8)
        record = label_bytes + 3072
        if len(raw) == 0 or len(raw) % record:
            raise ScalelabError(f"{path}: truncated CIFAR binary file ({len(raw):,} bytes is not "
                                f"a whole number of {record}-byte records)")
        rows = raw.reshape(-1, record)
        labels = rows[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: coarse, then fine
        return rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    def _pt_part(self, path: Path) -> tuple[tuple[np.ndarray, np.ndarray], list[str] | None]:
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ScalelabError(f"{path}: not a readable airbench-style .pt file "
                                f"({first_line(exc, 160)})") from None
        images = value.get("images") if isinstance(value, dict) else None
        labels = value.get("labels") if isinstance(value, dict) else None
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor) or \
                tuple(images.shape[1:]) != (32, 32, 3) or len(images) != len(labels):
            raise ScalelabError(f"{path}: expected {{'images': uint8 N x 32 x 32 x 3, "
                                "'labels': N, 'classes': [...]}")
        names = value.get("classes")
        return ((images.to(torch.uint8).numpy(), labels.long().numpy()),
                _names(names) if isinstance(names, list) else None)

    def _write_synthetic(self, folder: Path, x_train, y_train, x_test, y_test) -> None:
        """The python version, as the dataset's authors pickle it."""
        name, train, test, meta, label_key = self.python
        base = folder / name
        base.mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(len(y_train)), len(train))):
            self.write_python_batch(base / train[i], x_train[part], y_train[part], label_key)
        self.write_python_batch(base / test, x_test, y_test, label_key)
        names_key = b"label_names" if label_key == "labels" else b"fine_label_names"
        with (base / meta).open("wb") as f:
            pickle.dump({names_key: [f"synthetic-{i}".encode() for i in range(self.classes)]},
                        f, protocol=2)

    @staticmethod
    def write_python_batch(path: Path, images: np.ndarray, labels: np.ndarray,
                           label_key: str) -> None:
        """uint8 (N, 32, 32, 3) images as a python-version CIFAR batch file."""
        data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        with path.open("wb") as f:
            pickle.dump({b"data": data, label_key.encode(): [int(v) for v in labels]}, f,
                        protocol=2)

    def shape(self):
        a = self._arrays()
        n = self.config.num_train or len(a["y_train"]) - self.config.num_val
        return (3, 32, 32), self.classes, n

    def load(self) -> TaskData:
        a = self._arrays()
        return split(self.config, self.title, a["x_train"], a["y_train"], a["x_test"],
                     a["y_test"], a["classes"])


@tasks.register("cifar10")
class CIFAR10(_CIFAR):
    """CIFAR-10 (50k train, 10k test, 10 classes): python, binary or airbench .pt files."""

    title, classes = "cifar10", 10
    python = ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
              "batches.meta", "labels")
    binary = ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
              "test_batch.bin", 1)


@tasks.register("cifar100")
class CIFAR100(_CIFAR):
    """CIFAR-100 (50k train, 10k test, 100 fine classes): python, binary or .pt files."""

    title, classes = "cifar100", 100
    python = ("cifar-100-python", ["train"], "test", "meta", "fine_labels")
    binary = ("cifar-100-binary", ["train.bin"], "test.bin", 2)
