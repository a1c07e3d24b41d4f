"""Public datasets fetched into the cache: ``scalelab data get NAME``, or on a task's first
use when the study allows it (``download: true`` in its task, or ``scalelab run
--download``). Offline first: nothing is fetched unless asked for, and a task whose files are
absent says in one line the command that fetches them.

Each file comes from its official URL (then a documented mirror), is checked against its
publisher's checksum before it is used, is written under a temporary name and renamed when
whole, and resumes after an interruption. ``SCALELAB_DATA_URL`` replaces every URL's base
with ``<base>/<dataset>/<file>`` (a private mirror; the tests' local server).
"""

from __future__ import annotations

import json
import os
import urllib.error
from pathlib import Path

from ..errors import ScalelabError
from ..output import Output, fmt_bytes
from . import cache
from .archive import unpack
from .catalog import CATALOG, Dataset, Part
from .download import FetchError, failure, fetch, open_url

__all__ = ["CATALOG", "Dataset", "Part", "FetchError", "dataset", "ensure", "get", "state",
           "command"]

#: Set to 1 to let every task whose ``path`` is empty fetch its dataset on first use.
DOWNLOAD_ENV = "SCALELAB_DOWNLOAD"
#: A base URL serving ``<base>/<dataset>/<file>`` instead of the publishers' URLs.
URL_ENV = "SCALELAB_DATA_URL"


def dataset(name: str) -> Dataset:
    if name not in CATALOG:
        raise ScalelabError(f"data: unknown dataset {name!r} (allowed: {', '.join(CATALOG)})")
    return CATALOG[name]


def downloads_allowed(setting: bool) -> bool:
    """Whether a task may fetch its data: its ``download`` setting, or ``SCALELAB_DOWNLOAD``
    (which ``scalelab run --download`` sets)."""
    return setting or os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def command(ds: Dataset, shards: int | None = None) -> str:
    """The command that fetches ``ds`` (with its shards)."""
    n = ds.default_shards if shards is None else shards
    return f"scalelab data get {ds.name}" + (f" --shards {n}" if ds.sharded else "")


def _urls(ds: Dataset, part: Part) -> tuple[str, ...]:
    base = os.environ.get(URL_ENV, "").rstrip("/")
    return (f"{base}/{ds.name}/{part.name}",) if base else part.urls


def _check_shards(ds: Dataset, shards: int | None) -> None:
    if shards is None:
        return
    if not ds.sharded:
        raise ScalelabError(f"--shards: only a dataset of token shards has shards; {ds.name} "
                            "is fetched whole")
    if not 1 <= shards <= ds.max_shards:
        raise ScalelabError(f"--shards: {shards} is not between 1 and {ds.max_shards} (the "
                            f"training shards {ds.name} has)")


def _damaged(ds: Dataset, folder: Path, parts, output: Output | None) -> dict[Part, str]:
    """The parts not whole in ``folder`` (checked by checksum) and what is wrong with each
    ("absent", or the damage); a damaged one is said, in a line, when ``output`` is given."""
    record = cache.read_record(folder)
    todo = {}
    for part in parts:
        problem = cache.problem(folder, part, record)
        if problem is None:
            continue
        todo[part] = problem
        if problem != "absent" and output is not None:
            output.warn(f"{folder}: the cached {part.name} of {ds.name} is damaged ({problem}); "
                        "fetching it again")
    return todo


def get(name: str, *, to: str | Path | None = None, shards: int | None = None,
        output: Output | None = None) -> Path:
    """Fetch dataset ``name`` (for token shards: the validation shard and the first
    ``shards`` training shards) into the cache, or the folder ``to``, unless it is already
    there whole; returns the folder its task reads. A damaged file is fetched again."""
    ds = dataset(name)
    _check_shards(ds, shards)
    output = output or Output()
    folder = cache.folder_of(ds, to)
    parts = ds.selected(shards)
    if not _damaged(ds, folder, parts, None):
        return folder / ds.reads
    if to is None:
        from ..tasks._base import check_writable_cache

        check_writable_cache(folder)
    created = cache.made_dirs(folder)
    try:
        with cache.locked(folder, f"{folder}: another scalelab process is fetching {name}; "
                                  "waiting for it"):
            todo = _damaged(ds, folder, parts, output)
            sums = _published_sums(ds, todo) if any(p.checksum is None for p in todo) else {}
            for part in todo:
                _fetch_part(ds, folder, part, sums, output)
    except BaseException:
        cache.remove_if_empty([folder / cache.PARTIAL, *created])
        raise
    return folder / ds.reads


def _fetch_part(ds: Dataset, folder: Path, part: Part, sums: dict, output: Output) -> None:
    checksum, size = (part.checksum, None) if part.checksum else sums[part.name]
    cache.forget(folder, part)
    if part.unpack is None:
        target = folder / part.name
        fetch(_urls(ds, part), target, folder / cache.PARTIAL / f"{part.name}.part", checksum,
              expected_size=size, output=output)
        files = {part.name: [target.stat().st_size, *checksum]}
    else:
        archive = folder / cache.PARTIAL / part.name
        if not (archive.is_file() and cache.digest(archive, checksum[0]) == checksum[1]):
            fetch(_urls(ds, part), archive, folder / cache.PARTIAL / f"{part.name}.part",
                  checksum, expected_size=size, output=output)
        output.info(f"{ds.name}: unpacking {part.name}")
        files = unpack(archive, folder, part.unpack)
        archive.unlink()
        cache.remove_if_empty([folder / cache.PARTIAL])
    record = cache.read_record(folder)
    record[part.name] = {"files": files}
    cache.write_record(folder, ds, record)


def _published_sums(ds: Dataset, parts: list[Part]) -> dict[str, tuple[tuple[str, str], int]]:
    """Each part's (("sha256", digest), size) from the publisher's listing (a Hugging Face
    tree API answer: each LFS file's ``lfs.oid`` is the SHA-256 of its content)."""
    base = os.environ.get(URL_ENV, "").rstrip("/")
    url = f"{base}/{ds.name}/index.json" if base else ds.index
    listed: dict[str, tuple[tuple[str, str], int]] = {}
    while url:
        try:
            with open_url(url) as response:
                entries = json.loads(response.read())
                url = _next_page(response.headers.get("Link", ""))
        except (urllib.error.URLError, OSError) as exc:
            raise failure(url, exc) from None
        except ValueError as exc:
            raise FetchError(f"{url}: the publisher's file listing is not JSON ({exc})",
                             "http") from None
        for entry in entries if isinstance(entries, list) else []:
            lfs = entry.get("lfs") if isinstance(entry, dict) else None
            if isinstance(lfs, dict) and isinstance(lfs.get("oid"), str):
                listed[entry.get("path")] = (("sha256", lfs["oid"]), int(lfs.get("size") or 0)
                                             or None)
    missing = [p.name for p in parts if p.name not in listed]
    if missing:
        raise FetchError(f"{ds.index if not base else base}: the publisher's listing has no "
                         f"SHA-256 for {missing[0]}", "http")
    return listed


def _next_page(link: str) -> str | None:
    """The ``rel="next"`` URL of a Link header (the hub pages long listings)."""
    for item in link.split(","):
        if 'rel="next"' in item and "<" in item:
            return item[item.index("<") + 1: item.index(">")]
    return None


def ensure(name: str, *, task: str, download: bool, shards: int | None = None) -> Path:
    """The folder a task whose ``path`` is empty reads: the cached dataset, fetched first
    when it is absent and ``download`` (or ``SCALELAB_DOWNLOAD``) allows it; otherwise one
    line saying the command that fetches it."""
    ds = dataset(name)
    folder = cache.folder_of(ds)
    parts = ds.selected(shards)
    todo = _damaged(ds, folder, parts, None)
    if not todo:
        return folder / ds.reads
    fetch_it = command(ds, shards)
    if not downloads_allowed(download):
        size = sum(p.approx_bytes for p in todo)
        damage = next((f"holds a damaged {p.name} ({why})" for p, why in todo.items()
                       if why != "absent"), "does not hold it yet")
        alternatives = "synthetic: N` for generated images" if ds.task != "text" else \
            "source: pydocs` for a corpus that ships with Python"
        raise ScalelabError(
            f"task.path is empty, so the {task} task reads {ds.title} from the dataset cache "
            f"({folder}), which {damage}: run `{fetch_it}` (about {fmt_bytes(size)}), "
            f"or set `download: true` in the task (or `scalelab run --download`) to fetch it "
            f"on first use; or give task.path a folder with its files, or `{alternatives}")
    try:
        return get(name, shards=shards)
    except FetchError as exc:
        advice = (f"run `{fetch_it}` once this machine is online" if exc.kind == "offline"
                  else f"`{fetch_it}` tries again, resuming what was downloaded")
        raise ScalelabError(f"{exc}; {advice}") from None


def state(name: str, to: str | Path | None = None) -> dict:
    """What the cache (or ``to``) holds of ``name``, by size (checksums are checked when a
    dataset is used or fetched): a row of ``scalelab data list``."""
    ds = dataset(name)
    folder = cache.folder_of(ds, to)
    record = cache.read_record(folder)
    whole = [p for p in ds.parts if cache.problem(folder, p, record, full=False) is None]
    if ds.sharded:
        train = sum(1 for p in whole if p is not ds.parts[0])
        cached = "no" if not whole else (
            f"{train} of {ds.max_shards} shards" + ("" if ds.parts[0] in whole else
                                                    ", no validation shard"))
    else:
        cached = "yes" if len(whole) == len(ds.parts) else "partly" if whole else "no"
    return {"name": ds.name, "title": ds.title, "cached": cached, "task": ds.task,
            "where": str(folder / ds.reads) if whole else str(folder),
            "size_on_disk": cache.size_on_disk(folder) if folder.is_dir() else 0,
            "download_size": sum(p.approx_bytes for p in ds.selected()),
            "about": ds.about, "licence": ds.licence, "command": command(ds)}
