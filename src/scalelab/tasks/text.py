"""Text for language models: corpora, tokenizers, and llm.c-style token shards.

Sources: the built-in corpora ``pydocs`` (CPython's English documentation,
``pydoc_data.topics``) and ``pystdlib`` (the standard library's own ``.py`` files), local text
files or folders, and uint16 ``.bin`` token shards in the layout of llm.c / modded-nanogpt
(with no ``path``: FineWeb 10B's GPT-2 shards as ``scalelab data get fineweb10B`` caches them).
Documents, not characters, are split into train/validation/test, deterministically, so no
document straddles two splits.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..errors import ScalelabError
from ..plugin import PluginConfig
from ..registry import tasks
from ._base import Task

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
GPT2_VOCAB = 50257


@dataclass
class TokenData:
    """Token streams of one text task; ``bytes_per_token`` turns nats/token into bits/byte
    (``None`` where the bytes behind the tokens are unknown, as for pre-tokenized shards)."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab_size: int
    bytes_per_token: dict[str, float | None]

    @property
    def num_classes(self) -> int:  # the model's output layer predicts a token
        return self.vocab_size

    @property
    def input_shape(self) -> tuple[int, ...]:  # sequences of token ids; their length is the model's
        return ()

    def to(self, device: torch.device | str) -> TokenData:
        return TokenData(self.train.to(device), self.val.to(device), self.test.to(device),
                         self.vocab_size, self.bytes_per_token)


# ----------------------------------------------------------------------------- tokenizers


class Tokenizer(ABC):
    """Text <-> token ids."""

    vocab_size: int

    @abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (int64)."""

    @abstractmethod
    def decode(self, ids) -> str:
        """The text of ``ids``."""


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: vocabulary 256, nothing to download, one token per byte."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """One token per Unicode character; the vocabulary is the corpus's sorted character set."""

    def __init__(self, alphabet: str):
        self.chars = sorted(set(alphabet))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE through tiktoken, when tiktoken and its encoding files are available locally."""

    vocab_size = GPT2_VOCAB

    def __init__(self):
        try:
            import tiktoken
        except ImportError:
            raise ScalelabError("task.tokenizer gpt2 needs the tiktoken package "
                                "(pip install tiktoken); or use tokenizer: byte") from None
        try:
            self.encoding = tiktoken.get_encoding("gpt2")
        except Exception as exc:  # tiktoken downloads its files on first use
            raise ScalelabError(
                "task.tokenizer gpt2: tiktoken could not load the gpt2 encoding files "
                f"({type(exc).__name__}); put them in $TIKTOKEN_CACHE_DIR on a machine without "
                "network access, or use tokenizer: byte") from None

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.encoding.encode_ordinary(text), dtype=np.int64)

    def decode(self, ids) -> str:
        return self.encoding.decode([int(i) for i in ids])


# --------------------------------------------------------------------------------- shards


def write_shard(path: str | Path, tokens) -> None:
    """Write uint16 tokens with the llm.c header (magic, version, token count)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("shard tokens must fit in uint16")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def read_shard(path: str | Path) -> np.ndarray:
    """Tokens of one ``.bin`` shard; a wrong header or a short file is a clear error."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 4 * HEADER_INTS:
        raise ScalelabError(f"{path}: not a token shard (shorter than its 1024-byte header)")
    header = np.frombuffer(raw[: 4 * HEADER_INTS], dtype=np.int32)
    if header[0] != SHARD_MAGIC:
        raise ScalelabError(f"{path}: not a token shard (magic number {header[0]}, expected "
                            f"{SHARD_MAGIC})")
    if header[1] != SHARD_VERSION:
        raise ScalelabError(f"{path}: shard version {header[1]} is not supported "
                            f"(expected {SHARD_VERSION})")
    count, body = int(header[2]), len(raw) - 4 * HEADER_INTS
    if body != 2 * count:
        raise ScalelabError(f"{path}: truncated or corrupt shard (header says {count} tokens, "
                            f"the file holds {body / 2:g})")
    return np.frombuffer(raw[4 * HEADER_INTS:], dtype=np.uint16).astype(np.int64)


# -------------------------------------------------------------------------------- corpora


def _pydocs() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return sorted(topics.items())


def _pystdlib() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(("site-packages/", "dist-packages/")):
            continue
        docs.append((relative, path.read_text(encoding="utf-8", errors="replace")))
    return docs


def _files(path: str, pattern: str) -> list[tuple[str, str]]:
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.glob(pattern) if p.is_file())
        if not files:
            raise ScalelabError(f"task.path: no files matching {pattern!r} in {root}")
    else:
        raise ScalelabError(f"task.path: {root} does not exist (expected a text file or a "
                            "folder of text files)")
    return [(p.as_posix(), p.read_text(encoding="utf-8", errors="replace")) for p in files]


def _documents(source: str, path: str | None, pattern: str,
               chunk_chars: int) -> list[tuple[str, str]]:
    docs = {"pydocs": _pydocs, "pystdlib": _pystdlib}[source]() if source != "files" else \
        _files(path, pattern)
    if len(docs) >= 20:
        return docs
    # Too few documents to split by document: cut each into pieces of about chunk_chars at
    # line breaks, and split those instead.
    pieces = []
    for name, text in docs:
        lines, size, part = [], 0, 0
        for line in text.splitlines(keepends=True):
            lines.append(line)
            size += len(line)
            if size >= chunk_chars:
                pieces.append((f"{name}#{part}", "".join(lines)))
                lines, size, part = [], 0, part + 1
        if lines:
            pieces.append((f"{name}#{part}", "".join(lines)))
    return pieces


def split_documents(docs: list[tuple[str, str]], val_fraction: float, test_fraction: float,
                    seed: int) -> dict[str, list[str]]:
    """Documents in a seeded hash order fill validation, then test, to their character share;
    the rest train. The same corpus and seed always give the same split."""
    def rank(name: str) -> str:
        return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()

    total = sum(len(t) for _, t in docs)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    filled = {"val": 0, "test": 0}
    targets = {"val": val_fraction * total, "test": test_fraction * total}
    for _, text in sorted(docs, key=lambda d: rank(d[0])):
        where = next((s for s in ("val", "test") if filled[s] < targets[s]), "train")
        if where != "train":
            filled[where] += len(text)
        splits[where].append(text)
    if not splits["train"]:
        raise ScalelabError("task: the corpus is too small to leave any training documents")
    return splits


# ----------------------------------------------------------------------------------- task


@tasks.register("text")
class Text(Task):
    """Language modelling on real text (byte-level by default): pydocs, pystdlib, files, shards."""

    data_kind = "language"

    class Config(PluginConfig):
        #: Settings that came after stores existed: at their defaults they stay out of run ids.
        later_settings: ClassVar[dict[str, object]] = {"shards": 1, "download": False}

        source: Literal["pydocs", "pystdlib", "files", "shards"] = Field(
            "pydocs", description="built-in corpus, local text files, or llm.c .bin token shards")
        path: str | None = Field(None, description="file or folder (files, shards); shards "
                                 "with no path: FineWeb 10B's GPT-2 shards from the dataset "
                                 "cache (`scalelab data get fineweb10B`)")
        pattern: str = Field("**/*.txt", description="files taken from a folder (files)")
        tokenizer: Literal["byte", "char", "gpt2"] = Field(
            "byte", description="byte (vocab 256), char (corpus alphabet), gpt2 (tiktoken)")
        val_fraction: float = Field(0.05, gt=0, lt=0.5, description="characters for validation")
        test_fraction: float = Field(0.05, gt=0, lt=0.5, description="characters for test")
        split_seed: int = Field(0, description="seed of the document split")
        num_train_tokens: int | None = Field(
            None, ge=2, description="use only this many training tokens (a data-size axis)")
        max_eval_tokens: int = Field(
            65_536, ge=2, description="validation/test tokens kept (a prefix), for eval cost")
        chunk_chars: int = Field(16_384, ge=256,
                                 description="piece size when a source has under 20 documents")
        vocab_size: int = Field(GPT2_VOCAB, ge=2, description="vocabulary of token shards")
        shards: int = Field(1, ge=1, le=103, description="source shards with no path: FineWeb "
                            "training shards read from the cache (100 M tokens each), beside "
                            "its validation shard")
        download: bool = Field(False, description="source shards with no path: fetch the "
                               "shards into the cache on first use instead of refusing")

        @model_validator(mode="after")
        def _needs_path(self):
            if self.source == "files" and not self.path:
                raise ValueError("source files needs path: (a file or folder)")
            if self.shards != 1 and (self.source != "shards" or self.path):
                raise ValueError("shards counts the FineWeb shards read from the cache: only "
                                 "with source shards and no path")
            if self.source == "shards" and self.tokenizer != "byte":
                raise ValueError("token shards are already tokenized; leave tokenizer unset")
            return self

    def shape(self) -> tuple[tuple[int, ...], int, int]:
        """(no input shape: token ids; the vocabulary; training tokens, when known without
        reading the corpus, else 0)."""
        c = self.config
        if c.source == "shards":
            return (), c.vocab_size, c.num_train_tokens or 0
        if c.tokenizer == "byte":
            return (), ByteTokenizer.vocab_size, c.num_train_tokens or 0
        data = self.load()  # the vocabulary depends on the corpus (char) or tokenizer files
        return (), data.vocab_size, len(data.train)

    def check(self) -> None:
        c = self.config
        if c.source == "shards" and not c.path:
            self._cached_shards()
            return
        if c.source in ("files", "shards") and not Path(c.path).expanduser().exists():
            raise ScalelabError(f"task.path: {c.path} does not exist (source {c.source} reads "
                                "a text file or folder there)" if c.source == "files" else
                                f"task.path: {c.path} does not exist (source shards reads "
                                "llm.c .bin token shards there)")

    def _cached_shards(self) -> tuple[Path, ...]:
        """FineWeb's validation shard and first ``shards`` training shards, from the cache
        (fetched first when ``download`` allows it)."""
        from ..datasets import CATALOG, ensure

        folder = ensure("fineweb10B", task="text", download=self.config.download,
                        shards=self.config.shards)
        return tuple(folder / p.name for p in CATALOG["fineweb10B"].selected(self.config.shards))

    def load(self) -> TokenData:
        c = self.config
        if c.source == "shards":
            files = self._cached_shards() if not c.path else _shard_files(c.path)
            streams, vocab, per_token = _shard_streams(files, c.vocab_size), c.vocab_size, None
            bytes_per_token = dict.fromkeys(("train", "val", "test"), per_token)
        else:
            streams, vocab, bytes_per_token = _text_streams(
                c.source, c.path, c.pattern, c.tokenizer, c.val_fraction, c.test_fraction,
                c.split_seed, c.chunk_chars)
        train = streams["train"]
        if c.num_train_tokens is not None:
            if c.num_train_tokens > len(train):
                raise ScalelabError(f"task.num_train_tokens: {c.num_train_tokens} exceeds the "
                                    f"{len(train)} training tokens of this corpus")
            train = train[: c.num_train_tokens]
        return TokenData(
            train=torch.from_numpy(train), val=torch.from_numpy(streams["val"][: c.max_eval_tokens]),
            test=torch.from_numpy(streams["test"][: c.max_eval_tokens]), vocab_size=vocab,
            bytes_per_token=bytes_per_token)


@lru_cache(maxsize=4)
def _text_streams(source, path, pattern, tokenizer_name, val_fraction, test_fraction, seed,
                  chunk_chars):
    docs = _documents(source, path, pattern, chunk_chars)
    splits = split_documents(docs, val_fraction, test_fraction, seed)
    if tokenizer_name == "byte":
        tokenizer: Tokenizer = ByteTokenizer()
    elif tokenizer_name == "char":
        tokenizer = CharTokenizer("".join(t for _, t in docs))
    else:
        tokenizer = GPT2Tokenizer()
    streams, bytes_per_token = {}, {}
    for name, texts in splits.items():
        text = "".join(texts)
        tokens = tokenizer.encode(text)
        streams[name] = tokens
        bytes_per_token[name] = len(text.encode("utf-8")) / max(1, len(tokens))
    if min(len(s) for s in streams.values()) < 2:
        raise ScalelabError("task: the corpus is too small for a train/validation/test split")
    return streams, tokenizer.vocab_size, bytes_per_token


def _shard_files(path: str) -> tuple[Path, ...]:
    """The ``.bin`` shards at ``path`` (a file, or a folder's sorted ``*.bin``)."""
    root = Path(path).expanduser()
    files = [root] if root.is_file() else sorted(root.glob("*.bin")) if root.is_dir() else []
    if not files:
        raise ScalelabError(f"task.path: no .bin token shards at {root} (expected files like "
                            "fineweb_train_000001.bin and fineweb_val_000000.bin)")
    return tuple(files)


@lru_cache(maxsize=4)
def _shard_streams(files: tuple[Path, ...], vocab_size: int) -> dict[str, np.ndarray]:
    """Shards named ``*val*`` hold validation (first half) and test (second half); the rest
    train. Without a ``*val*`` shard, the last shard is held out instead."""
    held = [f for f in files if "val" in f.name] or list(files[-1:])
    train_files = [f for f in files if f not in held]
    if not train_files:
        raise ScalelabError(f"task.path: {files[0].parent} has no training shards besides the "
                            "held-out one")
    train = np.concatenate([read_shard(f) for f in train_files])
    held_out = np.concatenate([read_shard(f) for f in held])
    for name, tokens in (("train", train), ("held-out", held_out)):
        if tokens.size and tokens.max() >= vocab_size:
            raise ScalelabError(f"task.vocab_size: {name} shards hold token {tokens.max()}, "
                                f"at or above vocab_size {vocab_size}")
    half = math.ceil(len(held_out) / 2)
    return {"train": train, "val": held_out[:half], "test": held_out[half:]}
