"""Image folders (ImageNet, ImageNet-100, any custom set): ``train/`` and ``val/`` folders of
one subfolder per class, *streamed*: images are decoded with Pillow in DataLoader worker
processes, batch by batch, never loaded whole.

- training images: random-resized crop (scale 0.08-1, aspect 3/4-4/3) to ``image_size``
  and a random horizontal flip; evaluation: resize the shorter side to ``resize``, centre
  crop ``image_size``; pixels standardised with ImageNet's channel statistics;
- ``num_train`` takes the first images of every class (sorted by file name): nested
  per-class subsets for data-scaling axes; the last ``num_val`` images of every class in
  ``train/`` are the validation split; ``val/`` is the reported test split (ImageNet's
  labelled held-out set);
- class names are the folder names, kept for per-class reports.

With ``path`` empty the task reads Imagenette (10 ImageNet classes, 320 px) from the dataset
cache: ``scalelab data get imagenette``, or ``download: true`` to fetch it on first use.

Only training classification runs (one model at a time) read folders: stacking and the
re-scoring evaluators need tensors in memory and refuse folders in words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from ..datasets import ensure
from ..errors import ScalelabError, first_line
from ..plugin import PluginConfig
from ..registry import tasks
from ._base import Task
from ._images import read_once, synthetic_folder

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's channel statistics
WHERE = ("train/CLASS/*.jpg and val/CLASS/*.jpg (ImageNet: the ILSVRC2012 train and val "
         "archives with val sorted into class folders, from https://image-net.org)")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ScalelabError("task: imagefolder needs Pillow: pip install pillow") from None
    return Image


class ImageFiles(torch.utils.data.Dataset):
    """(image tensor, label, row) for each file, decoded when asked for (in a worker)."""

    def __init__(self, files: list[tuple[str, int]], image_size: int, resize: int,
                 train: bool):
        self.files, self.size, self.resize, self.train = files, image_size, resize, train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, row: int):
        path, label = self.files[row]
        image_module = _pil()
        try:
            with image_module.open(path) as f:
                w, h = f.size
                box = self._random_box(w, h) if self.train else self._centre_box(w, h)
                # JPEG: decode at the smallest DCT scale that keeps the box at least `size`
                # pixels across (ImageNet photos shrink 2-4x before any pixel is decoded).
                f.draft("RGB", (math.ceil(w * self.size / (box[2] - box[0])),
                                math.ceil(h * self.size / (box[3] - box[1]))))
                sx, sy = f.size[0] / w, f.size[1] / h
                image = f.convert("RGB").resize(
                    (self.size, self.size), image_module.BILINEAR,
                    box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
        except Exception as exc:  # truncated, not an image
            raise ScalelabError(f"{path}: not a readable image ({first_line(exc)})") from None
        if self.train and torch.rand(()).item() < 0.5:
            image = image.transpose(image_module.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        x = x.float().div_(255)
        return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1), \
            label, row

    def _random_box(self, w: int, h: int) -> tuple[int, int, int, int]:
        """Random-resized crop: 8-100% of the area at an aspect ratio of 3/4-4/3 (torch's
        RNG, seeded per worker by the loader); the central square if 10 draws miss."""
        for _ in range(10):
            area = w * h * (0.08 + 0.92 * torch.rand(()).item())
            ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(()).item())
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                left = int(torch.randint(0, w - cw + 1, ()).item())
                top = int(torch.randint(0, h - ch + 1, ()).item())
                return left, top, left + cw, top + ch
        side = min(w, h)
        return (w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2

    def _centre_box(self, w: int, h: int) -> tuple[int, int, int, int]:
        """Resize the shorter side to ``resize`` and centre-crop ``size``, as one box in the
        original image."""
        side = max(1, round(self.size * min(w, h) / self.resize))
        left, top = (w - side) // 2, (h - side) // 2
        return left, top, left + side, top + side


@dataclass
class FolderData:
    """A streamed image-folder split set: the same questions as in-memory TaskData, answered
    through DataLoaders."""

    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    class_names: list[str]
    image_size: int
    resize: int
    workers: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    @property
    def y_train(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.train])

    def to(self, device) -> FolderData:
        return self  # images reach the device batch by batch

    def dataset(self, split: str, train_view: bool = False) -> ImageFiles:
        return ImageFiles(getattr(self, split), self.image_size, self.resize, train_view)

    def loader(self, split: str, batch_size: int, limit: int | None = None
               ) -> torch.utils.data.DataLoader:
        """An evaluation loader over ``split`` (its first ``limit`` images)."""
        dataset = self.dataset(split)
        if limit is not None and limit < len(dataset):
            dataset = torch.utils.data.Subset(dataset, range(limit))
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                           num_workers=self.workers)


@tasks.register("imagefolder")
class ImageFolder(Task):
    """train/ and val/ folders of class subfolders (ImageNet layout), streamed with Pillow."""

    in_memory = False

    class Config(PluginConfig):
        #: ``download`` came after stores existed: at its default it stays out of run ids.
        later_settings: ClassVar[dict[str, object]] = {"download": False}

        path: str = Field("", description="folder holding train/ and val/ class folders; "
                          "empty: Imagenette from the dataset cache (`scalelab data get "
                          "imagenette`)")
        download: bool = Field(False, description="with path empty: fetch Imagenette into "
                               "the cache on first use instead of refusing")
        num_train: int | None = Field(None, ge=1, description="training images per class "
                                      "(the first by file name: nested subsets)")
        num_val: int = Field(10, ge=1, description="images per class from the end of train/ "
                             "held out for validation")
        image_size: int = Field(224, ge=8, description="side of the square crops")
        resize: int = Field(256, ge=8, description="evaluation: shorter side resized to this, "
                            "then centre-cropped to image_size")
        workers: int = Field(2, ge=0, description="DataLoader worker processes decoding images")
        synthetic: int = Field(0, ge=0, description="when > 0: ignore path, write this many "
                               "PNG/JPEG images per class (4 classes) into the cache and read them")

    def _root(self) -> Path:
        c = self.config
        if c.synthetic:
            return synthetic_image_folder(c.synthetic)
        if not c.path:  # Imagenette, the public ImageNet subset, from the dataset cache
            return ensure("imagenette", task="imagefolder", download=c.download)
        root = Path(c.path).expanduser()
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise ScalelabError(f"task.path: {root} needs train/ and val/ folders of class "
                                f"folders: {WHERE}")
        return root

    def _scan(self) -> FolderData:
        """The folder's file lists (listed once per process and settings: ImageNet's 1.3 M
        files take seconds to list, and planning asks for the shape of every run)."""
        key = ("imagefolder", self.config.model_dump_json())
        return read_once(key, self._list)

    def _list(self) -> FolderData:
        c = self.config
        root = self._root()
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if not classes:
            raise ScalelabError(f"{root / 'train'}: no class folders")
        by_class = {name: sorted(str(f) for f in (root / "train" / name).iterdir()
                                 if f.suffix.lower() in EXTENSIONS) for name in classes}
        train, val = [], []
        for label, name in enumerate(classes):
            files = by_class[name]
            if len(files) <= c.num_val:
                raise ScalelabError(f"{root / 'train' / name}: {len(files)} images, not more "
                                    f"than task.num_val = {c.num_val}")
            pool = files[:-c.num_val]
            if c.num_train is not None and c.num_train > len(pool):
                raise ScalelabError(f"task.num_train: {c.num_train} per class exceeds the "
                                    f"{len(pool)} training images of class {name!r}")
            train += [(f, label) for f in pool[: c.num_train]]
            val += [(f, label) for f in files[-c.num_val:]]
        test = []
        for label, name in enumerate(classes):
            folder = root / "val" / name
            if folder.is_dir():
                test += [(str(f), label) for f in sorted(folder.iterdir())
                         if f.suffix.lower() in EXTENSIONS]
        unknown = {p.name for p in (root / "val").iterdir() if p.is_dir()} - set(classes)
        if unknown or not test:
            raise ScalelabError(f"{root / 'val'}: " + (
                f"class folders not in train/: {', '.join(sorted(unknown)[:3])}" if unknown
                else "no images in class folders"))
        return FolderData(train, val, test, classes, c.image_size, c.resize, c.workers)

    def check(self) -> None:
        self._scan()

    def shape(self):
        data = self._scan()
        return data.input_shape, data.num_classes, len(data.train)

    def load(self) -> FolderData:
        return self._scan()


def synthetic_image_folder(per_class: int, classes: int = 4) -> Path:
    """A train/ and val/ folder of generated 48 x 64 images (not square, as photos are not):
    PNG for training, JPEG for validation."""
    image = _pil()

    def write(folder: Path, x_train, y_train, x_val, y_val) -> None:
        for split, x, y, suffix in (("train", x_train, y_train, ".png"),
                                    ("val", x_val, y_val, ".jpg")):
            for i, (pixels, label) in enumerate(zip(x, y)):
                target = folder / split / f"class_{label}"
                target.mkdir(parents=True, exist_ok=True)
                image.fromarray(pixels).save(target / f"{i:05d}{suffix}")

    return synthetic_folder("imagefolder", per_class, write, (48, 64, 3), classes, spread=25.0)

