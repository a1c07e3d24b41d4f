"""User-facing errors: one line that says what is wrong and what is allowed.

Anything raised as a :class:`ScalelabError` is the user's to fix; the CLI prints its message
without a traceback and exits with code 2, as it does for the operating system's expected
refusals (:func:`os_error_line`: a full disk, a read-only or missing place). Everything else
is a bug or a crash: one line pointing at a log file with the traceback, exit code 1.
"""

from __future__ import annotations

import errno
import os
import time
import traceback
from pathlib import Path

#: What to do about each expected refusal of the operating system.
_OS_ADVICE = {
    errno.ENOSPC: "free some space and rerun the same command (finished runs are kept)",
    errno.EDQUOT: "free some space and rerun the same command (finished runs are kept)",
    errno.EROFS: "choose a writable place (e.g. --out on a writable disk)",
    errno.EACCES: "choose a place you may write to, or change its permissions",
    errno.EPERM: "choose a place you may write to, or change its permissions",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "the path is a folder; give a file",
    errno.EEXIST: "the path exists and is not a folder; choose another",
    errno.ENAMETOOLONG: "choose a shorter path",
}


class ScalelabError(Exception):
    """A problem with the user's input (study file, command-line option, data on disk)."""

    exit_code = 2


class StudyError(ScalelabError):
    """A study file that cannot be used, located by file and field path."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field, self.message = source, field, message
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {message}")


class RenamedSetting(FutureWarning):
    """A study uses a setting's old name: it still works; the one-line notice says the new
    one (the CLI prints it as ``warning: ...``)."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), for a
    one-line error that quotes what a library said."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line[:limit] if limit else line


def os_error_line(exc: OSError) -> str | None:
    """The one line for an expected OS refusal (None for one that is not expected)."""
    advice = _OS_ADVICE.get(exc.errno)
    if advice is None:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or os.strerror(exc.errno)}; {advice}"


def log_crash(exc: BaseException) -> Path | None:
    """Write the traceback of an unexpected exception to a log file; its path (None when even
    that cannot be written)."""
    root = Path(os.environ.get("SCALELAB_CACHE") or Path.home() / ".cache" / "scalelab")
    path = root / "logs" / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return path
