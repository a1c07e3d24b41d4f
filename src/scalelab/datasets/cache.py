"""Where fetched datasets live and how a folder proves it is whole.

``$SCALELAB_CACHE/data/<name>/`` (or the folder ``--to`` names) holds a dataset's files as
its task reads them, a record of them (``.scalelab-data.json``: every file's size and
checksum, written last, through the one atomic writer) and, while a download is under way,
``.partial/`` (files being downloaded, kept for a resumed download). A file the record lists
but whose checksum no longer matches is damaged: it is fetched again, with a line saying so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..files import write_atomically
from .catalog import Dataset, Part

RECORD = ".scalelab-data.json"
PARTIAL = ".partial"


def data_root() -> Path:
    """The cache's folder of fetched datasets (moved by ``SCALELAB_CACHE``)."""
    from ..tasks._base import cache_dir  # the one cache location (tasks import this package)

    return cache_dir() / "data"


def folder_of(dataset: Dataset, to: str | Path | None = None) -> Path:
    return Path(to).expanduser() if to is not None else data_root() / dataset.name


def digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_record(folder: Path) -> dict:
    """The record of what ``folder`` holds ({} when there is none or it is unreadable)."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    parts = record.get("parts") if isinstance(record, dict) else None
    return parts if isinstance(parts, dict) else {}


def write_record(folder: Path, dataset: Dataset, parts: dict) -> None:
    write_atomically(folder / RECORD, json.dumps(
        {"dataset": dataset.name, "parts": parts}, indent=1, sort_keys=True) + "\n")


#: (folder, part) pairs whose files this process has checked in full.
_sound: set[tuple[str, str]] = set()


def problem(folder: Path, part: Part, record: dict, full: bool = True) -> str | None:
    """What is wrong with ``part`` in ``folder``: ``"absent"``, a damage in words, or None
    when every file is there with its recorded size (and, when ``full``, checksum). A file
    with a published checksum is recognised without a record (copied in by hand)."""
    key = (str(folder), part.name)
    if key in _sound:
        return None
    entry = record.get(part.name)
    files = entry.get("files") if isinstance(entry, dict) else None
    if not isinstance(files, dict) or not files:
        if part.unpack is None and part.checksum is not None and (folder / part.name).is_file():
            files = {part.name: [(folder / part.name).stat().st_size, *part.checksum]}
            fresh = True
        else:
            return "absent"
    else:
        fresh = False
    for name, spec in sorted(files.items()):
        path = folder / name
        try:
            size, algorithm, expected = spec
            actual_size = path.stat().st_size
        except (ValueError, TypeError):
            return "its record is unreadable"
        except FileNotFoundError:
            return "absent" if fresh else f"{name} is missing"
        if actual_size != size:
            return f"{name} has {actual_size:,} bytes, {size:,} recorded"
        if full:
            actual = digest(path, algorithm)
            if actual != expected:
                return (f"{name}: {algorithm} {actual} where {expected} is expected"
                        if part.unpack is None else f"{name} does not match its {algorithm}")
    if full:
        _sound.add(key)
    return None


def forget(folder: Path, part: Part) -> None:
    _sound.discard((str(folder), part.name))


def size_on_disk(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@contextlib.contextmanager
def locked(folder: Path, waiting: str) -> Iterator[None]:
    """Hold ``folder`` for this process (an advisory lock on the folder itself, so no lock
    file is left behind); ``waiting`` is said once when another process holds it."""
    from ..output import Output

    while True:
        fd = os.open(folder, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                Output().info(waiting)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # the holder may have removed the (empty) folder meanwhile: take it anew
                same = os.path.samestat(os.fstat(fd), os.stat(folder))
            except FileNotFoundError:
                same = False
            if not same:
                folder.mkdir(parents=True, exist_ok=True)
                continue
            yield
            return
        finally:
            os.close(fd)


def made_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, deepest first (to be
    removed again, when still empty, if nothing could be fetched into them)."""
    missing = []
    for p in (folder, *folder.parents):
        if os.path.lexists(p):
            break
        missing.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; stop at one that is not."""
    for p in folders:
        try:
            p.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def discard(path: Path) -> None:
    """Remove a folder in one step as readers see it (renamed aside, then deleted)."""
    if not os.path.lexists(path):
        return
    aside = path.with_name(f".{path.name}.{secrets.token_hex(6)}.old")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def no_space(path: Path, needed: int) -> str:
    """The one line for a disk without room for ``needed`` more bytes under ``path``."""
    free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free
    return (f"{path}: {os.strerror(errno.ENOSPC)} (needs about {needed / 1e6:,.0f} MB more, "
            f"{free / 1e6:,.0f} MB free); free some space, or fetch it to a larger disk "
            "(SCALELAB_CACHE, or `scalelab data get --to DIR`); nothing was kept")
