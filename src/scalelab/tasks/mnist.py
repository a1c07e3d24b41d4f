"""MNIST and Fashion-MNIST from their IDX files (gzipped or not): the official 60,000
training and 10,000 test images; validation is the tail of the training set. With ``path``
empty they are read from the dataset cache (``scalelab data get mnist``, ``fashion_mnist``)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import ScalelabError
from ..registry import tasks
from ._base import Task, TaskData
from ._images import ImageConfig, data_folder, missing, read_once, split

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x0000080N, N dimensions), checked against its
    own header: a cut-off or foreign file is refused in one line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise ScalelabError(f"{path}: not a readable IDX file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise ScalelabError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    dims = raw[3]
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ScalelabError(f"{path}: truncated or padded IDX file ({len(raw):,} bytes where "
                            f"its header {shape} says {expected:,})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 ``array`` as an IDX file (gzipped when the name ends in .gz)."""
    data = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape) + array.astype(np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)


def _write_synthetic(folder: Path, x_train, y_train, x_test, y_test) -> None:
    for key, array in (("train_images", x_train[..., 0]), ("train_labels", y_train),
                       ("test_images", x_test[..., 0]), ("test_labels", y_test)):
        write_idx(folder / f"{FILES[key]}.gz", array)


class _IDX(Task):
    """An MNIST-format dataset; subclasses name it and its classes."""

    Config = ImageConfig
    title: str
    where: str
    classes: list[str]

    def check(self) -> None:
        self._arrays()

    def _arrays(self) -> dict:
        expected = ", ".join(FILES.values()) + " (each optionally .gz)"
        root = data_folder(self.title, self.config, expected, self.where, _write_synthetic,
                           (28, 28, 1), len(self.classes))

        def read() -> dict:
            arrays = {}
            for key, stem in FILES.items():
                path = next((root / f"{stem}{s}" for s in (".gz", "") if (root / f"{stem}{s}")
                             .exists()), None)
                if path is None:  # torchvision's layout names the dots differently
                    alt = root / f"{stem.replace('-idx', '.idx')}"
                    path = next((p for p in (alt, alt.with_name(alt.name + ".gz"))
                                 if p.exists()), None)
                if path is None:
                    raise missing(self.title, root, expected, self.where)
                arrays[key] = read_idx(path)
            for part in ("train", "test"):
                images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
                if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                    raise ScalelabError(f"{root}: {part} images {images.shape} and labels "
                                        f"{labels.shape} do not match (N x 28 x 28, N)")
                if labels.max(initial=0) >= len(self.classes):
                    raise ScalelabError(f"{root}: {part} labels go up to {labels.max()}; "
                                        f"{self.title} has {len(self.classes)} classes")
            return arrays

        return read_once((self.title, str(root)), read)

    def shape(self):
        a = self._arrays()
        n = self.config.num_train or len(a["train_labels"]) - self.config.num_val
        return (1, 28, 28), len(self.classes), n

    def load(self) -> TaskData:
        a = self._arrays()
        return split(self.config, self.title, a["train_images"][..., None], a["train_labels"],
                     a["test_images"][..., None], a["test_labels"], self.classes)


@tasks.register("mnist")
class MNIST(_IDX):
    """MNIST handwritten digits from the four IDX files (60k train, 10k test)."""

    title = "mnist"
    where = ("`scalelab data get mnist` fetches them; or from https://yann.lecun.com/exdb/mnist/ "
             "or any mirror of the four files")
    classes = [str(d) for d in range(10)]


@tasks.register("fashion_mnist")
class FashionMNIST(_IDX):
    """Fashion-MNIST clothing images from the four IDX files (60k train, 10k test)."""

    title = "fashion_mnist"
    where = ("`scalelab data get fashion_mnist` fetches them; or from "
             "https://github.com/zalandoresearch/fashion-mnist (data/fashion)")
    classes = FASHION_CLASSES
