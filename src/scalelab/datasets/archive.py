"""Unpacking a downloaded archive whole or not at all, refusing members that could write
outside the dataset's folder.

Every member is checked before anything is written: a path that is absolute or climbs out
(``..``), a symbolic or hard link, a device or a pipe is refused in one line. The archive
is unpacked into a temporary folder beside the dataset, each file's size and SHA-256 are
recorded, and the one folder it holds is renamed into place; a damaged archive, a full disk
or Ctrl-C leave no half-unpacked folder behind.
"""

from __future__ import annotations

import errno
import secrets
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import ScalelabError, first_line
from . import cache


def _unsafe(member: tarfile.TarInfo, folder: str) -> str | None:
    """Why ``member`` may not be unpacked (None: it may)."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ":" in path.parts[0]:
        return "an absolute path"
    if ".." in path.parts:
        return "a path that climbs out of the folder (..)"
    if member.issym() or member.islnk():
        return f"a link (to {member.linkname!r})"
    if not (member.isfile() or member.isdir()):
        return "a device, pipe or other special file"
    if path.parts[0] != folder:
        return f"a path outside its folder {folder}/"
    return None


def unpack(archive: Path, folder: Path, holds: str) -> dict[str, list]:
    """Unpack ``archive`` (a tar, gzipped or not) into ``folder``, where the one folder it
    ``holds`` appears whole; the record of its files (relative path -> [size, "sha256",
    digest])."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                why = _unsafe(member, holds)
                if why is not None:
                    archive.unlink(missing_ok=True)
                    raise ScalelabError(f"{archive}: member {member.name!r} is {why}; refused "
                                        "(nothing was unpacked and the archive was removed)")
            needed = sum(m.size for m in members if m.isfile())
            if needed > shutil.disk_usage(folder).free:
                raise ScalelabError(cache.no_space(folder, needed))
            scratch = folder / f".unpack-{secrets.token_hex(6)}"
            scratch.mkdir()
            try:
                tar.extractall(scratch, members=members, filter="data")
                record = {}
                for path in sorted(p for p in (scratch / holds).rglob("*") if p.is_file()):
                    record[path.relative_to(scratch).as_posix()] = [
                        path.stat().st_size, "sha256", cache.digest(path, "sha256")]
                cache.discard(folder / holds)  # a stale, unrecorded copy
                (scratch / holds).rename(folder / holds)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ScalelabError(cache.no_space(folder, needed)) from None
                raise
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        archive.unlink(missing_ok=True)
        raise ScalelabError(f"{archive}: a damaged archive ({first_line(exc, 120)}); nothing "
                            "was unpacked and it was removed: fetch it again") from None
    return record
