"""Writing a file so that a crash or kill never leaves it half-written: under a temporary
name beside it, then renamed over it in one step. The one writer of every file scalelab
makes (reports, figures, checkpoints, exports).

What the path names decides how it is written:

- a regular file, or nothing yet: a temporary file beside it, renamed over it (removed again
  if anything fails: no temporary is ever left behind);
- a symbolic link: the file it points to, as above; the link stays a link;
- a device, a pipe or a process's open file (``/dev/stdout``, ``/dev/null``, a FIFO):
  written directly, never replaced by a regular file;
- a folder or a socket: refused (a folder as the operating system's own "Is a directory").
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import ScalelabError


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` whole or not at all."""
    with open_atomically(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


@contextlib.contextmanager
def open_atomically(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """A file object to write ``path`` through (``mode`` ``w`` or ``wb``; ``kwargs`` as for
    :func:`open`): replaced in one step when the block ends without an error."""
    path = Path(path)
    try:
        info = os.stat(path)  # through links: what the path leads to
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if info is not None and stat.S_ISSOCK(info.st_mode):
        raise ScalelabError(f"{path}: a socket, not a file; give a file, a device or a pipe")
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    # A device or a pipe; or a process's open file (/dev/stdout -> /proc/self/fd/1): written
    # where it is, as a shell's `>` would (a rename would not reach what that fd refers to).
    if info is not None and (not stat.S_ISREG(info.st_mode) or target.parts[:2] == ("/", "proc")):
        with open(path, mode, **kwargs) as f:
            yield f
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # Created anew (O_EXCL), with the permissions a plain open would give it (umask).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if info is not None:  # keep the permissions of the file it replaces
            os.chmod(tmp, stat.S_IMODE(info.st_mode))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
