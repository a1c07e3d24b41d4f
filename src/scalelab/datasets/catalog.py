"""The public datasets ``scalelab data get`` fetches: where each file is published, the
checksum its publisher gives for it, and the folder a task reads once it is unpacked.

Every checksum below is the publisher's (or the published reference loaders'), copied from
the cited source, never computed from a download. FineWeb's token shards have no published
list of sums: their SHA-256 is read at download time from the Hugging Face hub's own listing
of the repository (each LFS file's ``oid`` is the SHA-256 of its content), and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Megabytes, for the sizes shown before a download (the download itself is checked by sum).
MB = 1_000_000


@dataclass(frozen=True)
class Part:
    """One published file."""

    name: str                       # its name as published (and as kept, unless unpacked)
    urls: tuple[str, ...]           # the official URL first, then documented mirrors
    checksum: tuple[str, str] | None  # (md5 or sha256, hex digest); None: from the index
    approx_bytes: int               # shown before a download; not checked (the sum is)
    unpack: str | None = None       # an archive: the one folder it holds, extracted in place


@dataclass(frozen=True)
class Dataset:
    """A dataset as the cache holds it: ``parts`` downloaded into one folder."""

    name: str
    title: str
    about: str                      # what it is, in a line
    licence: str
    task: str                       # the task that reads it
    parts: tuple[Part, ...]
    reads: str = ""                 # the subfolder the task reads ("": the folder itself)
    #: The publisher's listing of each file's SHA-256 (a Hugging Face tree API URL), for
    #: parts whose checksum is None.
    index: str | None = None
    #: Token shards: parts after the first are training shards fetched ``--shards N`` at a
    #: time (the first, the validation shard, always).
    sharded: bool = False
    default_shards: int = 1

    def selected(self, shards: int | None = None) -> tuple[Part, ...]:
        """The parts a fetch needs: all of them, or for a sharded set the validation shard
        and the first ``shards`` training shards."""
        if not self.sharded:
            return self.parts
        n = self.default_shards if shards is None else shards
        return self.parts[: 1 + n]

    @property
    def max_shards(self) -> int:
        return len(self.parts) - 1 if self.sharded else 0


# MNIST: the four IDX files, md5 as torchvision lists them (pytorch/vision
# torchvision/datasets/mnist.py @ 01977a18, class MNIST: `mirrors` lines 37-40, `resources`
# lines 42-47). yann.lecun.com is the official page; torchvision's S3 copy is its mirror.
_MNIST_BASES = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
_MNIST = (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9_912_422),
          ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28_881),
          ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1_648_877),
          ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4_542))

# Fashion-MNIST: md5 as zalandoresearch/fashion-mnist's README table and torchvision
# (torchvision/datasets/mnist.py @ 01977a18, class FashionMNIST `mirrors` and `resources`)
# list them; the official S3 site first, the files in the GitHub repository (data/fashion)
# as the mirror.
_FASHION_BASES = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                  "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
_FASHION = (("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26_421_880),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 29_515),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 4_422_102),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 5_148))


def _files(bases: tuple[str, ...], files) -> tuple[Part, ...]:
    return tuple(Part(name, tuple(b + name for b in bases), ("md5", md5), size)
                 for name, md5, size in files)


# FineWeb 10B as GPT-2 tokens in llm.c's .bin format: the files modded-nanogpt's
# data/cached_fineweb10B.py fetches (KellerJordan/modded-nanogpt @ f411b3d3, lines 9-16:
# repo kjj0/fineweb10B-gpt2, fineweb_val_000000.bin, then fineweb_train_000001..000103.bin),
# 100 M tokens (200,001,024 bytes) each.
_FINEWEB_REPO = "https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main/"
_FINEWEB_SHARD = 200_001_024
_FINEWEB = tuple(
    Part(name, (_FINEWEB_REPO + name,), None, _FINEWEB_SHARD)
    for name in ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, 104)])


CATALOG: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mnist", "MNIST", "handwritten digits, 28 x 28 grey: 60,000 training and 10,000 "
            "test images", "Y. LeCun, C. Cortes and C. Burges; distributed under CC BY-SA "
            "3.0", "mnist", _files(_MNIST_BASES, _MNIST)),
    Dataset("fashion_mnist", "Fashion-MNIST", "clothing, 28 x 28 grey, 10 classes: 60,000 "
            "training and 10,000 test images", "Zalando Research; MIT licence",
            "fashion_mnist", _files(_FASHION_BASES, _FASHION)),
    # CIFAR: the python version, md5 as https://www.cs.toronto.edu/~kriz/cifar.html gives it
    # (and torchvision/datasets/cifar.py, class CIFAR10 `tgz_md5` line 21; CIFAR100
    # `tgz_md5`). No mirror is documented.
    Dataset("cifar10", "CIFAR-10", "32 x 32 colour images, 10 classes: 50,000 training and "
            "10,000 test images", "A. Krizhevsky, 2009 (the tech report is the citation); no "
            "licence is stated", "cifar10",
            (Part("cifar-10-python.tar.gz",
                  ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                  ("md5", "c58f30108f718f92721af3b95e74349a"), 170_498_071,
                  unpack="cifar-10-batches-py"),)),
    Dataset("cifar100", "CIFAR-100", "32 x 32 colour images, 100 classes (20 superclasses): "
            "50,000 training and 10,000 test images", "A. Krizhevsky, 2009; no licence is "
            "stated", "cifar100",
            (Part("cifar-100-python.tar.gz",
                  ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                  ("md5", "eb9058c3a382ffc7106e4002c42a8d85"), 169_001_437,
                  unpack="cifar-100-python"),)),
    # Imagenette, the 320 px version (shorter side 320: ImageNet's 256-resize and 224-crop
    # work on it as on ImageNet), md5 as torchvision lists it (torchvision/datasets/
    # imagenette.py @ 051ba349, `_ARCHIVES` line 33); the URL is the one fastai/imagenette's
    # README links. No mirror is documented.
    Dataset("imagenette", "Imagenette (320 px)", "10 easy ImageNet classes as JPEG folders: "
            "9,469 training and 3,925 validation images, shorter side 320 px",
            "fast.ai, Apache 2.0; the images are ImageNet's (research, non-commercial use)",
            "imagefolder",
            (Part("imagenette2-320.tgz",
                  ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",),
                  ("md5", "3df6f0d01a2c9592104656642f5e78a3"), 341 * MB,
                  unpack="imagenette2-320"),),
            reads="imagenette2-320"),
    Dataset("fineweb10B", "FineWeb 10B, GPT-2 tokens", "web text (FineWeb's 10B-token sample) "
            "as GPT-2 token shards in llm.c's .bin format: one validation shard and 103 "
            "training shards of 100 M tokens", "FineWeb by Hugging Face, ODC-By 1.0 (and "
            "Common Crawl's terms of use)", "text", _FINEWEB,
            index="https://huggingface.co/api/datasets/kjj0/fineweb10B-gpt2/tree/main",
            sharded=True, default_shards=1),
)}
