"""Downloading one file whole: under a temporary name, resumed with an HTTP Range request
after an interruption, checked against its publisher's checksum before it is renamed into
place. Every failure is one line (:class:`FetchError`) naming the URL and what went wrong:

- no network: the URL, and that this machine looks offline;
- an HTTP error: its status (the next documented mirror is tried first);
- the server stops mid-file: the download resumes where it stopped (up to 3 tries), else the
  partial file is kept for the next attempt to resume;
- a checksum mismatch: the file is removed and the line gives the expected and actual sums
  (a resumed download that does not match is fetched once more from its first byte);
- a full disk: refused before the first byte when the server says the size, else the
  partial file is removed. Ctrl-C keeps the partial file, for a resumed download.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ScalelabError
from ..output import Output
from . import cache

#: Seconds to wait for a server to answer, or to send the next block.
TIMEOUT = 30
#: Attempts at one URL when the server stops sending mid-file (each one resumes).
TRIES = 3
BLOCK = 1 << 20


class FetchError(ScalelabError):
    """A download that failed; ``kind`` says how: offline, http, stopped, checksum, disk."""

    def __init__(self, message: str, kind: str):
        self.kind = kind
        super().__init__(message)


def open_url(url: str, offset: int = 0, timeout: float = TIMEOUT):
    """The server's response to a GET of ``url`` from byte ``offset`` (a Range request)."""
    from .. import __version__

    headers = {"User-Agent": f"scalelab/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                  timeout=timeout)


def failure(url: str, exc: BaseException) -> FetchError:
    """The one line for a request of ``url`` that failed with ``exc``."""
    host = urlsplit(url).hostname or url
    if isinstance(exc, urllib.error.HTTPError):
        return FetchError(f"{url}: the server answered HTTP {exc.code} {exc.reason}", "http")
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, socket.gaierror) or getattr(cause, "errno", None) in (
            errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
        return FetchError(f"{url}: cannot reach {host}: this machine looks offline "
                          f"({_words(cause)})", "offline")
    if isinstance(cause, ConnectionRefusedError):
        return FetchError(f"{url}: {host} refused the connection", "offline")
    if isinstance(cause, TimeoutError):
        return FetchError(f"{url}: {host} did not answer within {TIMEOUT} s", "offline")
    return FetchError(f"{url}: the download failed ({_words(cause)})", "offline")


def _words(exc: object) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


def fetch(urls: tuple[str, ...], target: Path, partial: Path, checksum: tuple[str, str], *,
          expected_size: int | None, output: Output) -> None:
    """Download the file published at ``urls`` (tried in order) through ``partial`` (kept
    for a resumed download) to ``target``, checked against ``checksum`` ((algorithm, hex
    digest)) before it is renamed into place."""
    algorithm, expected = checksum
    failures: list[FetchError] = []
    for url in urls:
        fresh = False
        while True:
            try:
                resumed = _download(url, partial, expected_size, output)
            except FetchError as exc:
                if exc.kind == "disk":
                    raise
                failures.append(exc)
                break
            actual = cache.digest(partial, algorithm)
            if actual == expected:
                os.replace(partial, target)
                with contextlib.suppress(OSError):
                    partial.parent.rmdir()  # empty once nothing else is under way
                return
            partial.unlink()
            if resumed and not fresh:
                output.warn(f"{target.name}: the resumed download does not match its "
                            f"{algorithm}; downloading it again from the first byte")
                fresh = True
                continue
            failures.append(FetchError(f"{url}: {algorithm} mismatch: expected {expected}, got "
                                       f"{actual}; the bad file was removed", "checksum"))
            break
    first = failures[0]
    if len(failures) > 1:
        raise FetchError(f"{first} (mirror: {'; '.join(map(str, failures[1:]))})", first.kind)
    raise first


def _download(url: str, partial: Path, expected_size: int | None, output: Output) -> bool:
    """Fill ``partial`` with the whole file at ``url``, resuming what it already holds;
    whether any of it was resumed."""
    name = partial.name.removesuffix(".part")
    resumed, tries, created = False, 0, []
    while True:
        offset = partial.stat().st_size if partial.exists() else 0
        try:
            response = open_url(url, offset)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # nothing after it: whole, or not this file at all
                return True  # (its checksum decides; a resumed mismatch starts again)
            cache.remove_if_empty(created)
            raise failure(url, exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            cache.remove_if_empty(created)
            raise failure(url, exc) from None
        with response:
            if offset and not (response.status == 206 and _range_start(response) == offset):
                offset = 0  # the server sends the whole file again: start from its first byte
            resumed = resumed or offset > 0
            length = response.headers.get("Content-Length", "")
            total = offset + int(length) if length.isdigit() else expected_size
            if not partial.parent.exists():
                created = cache.made_dirs(partial.parent)
            if total is not None and total - offset > shutil.disk_usage(partial.parent).free:
                partial.unlink(missing_ok=True)
                cache.remove_if_empty(created)
                raise FetchError(cache.no_space(partial.parent.parent, total - offset), "disk")
            done = offset
            try:
                with open(partial, "ab" if offset else "wb") as f, \
                        output.transfer(name, total, offset) as bar:
                    while block := response.read(BLOCK):
                        f.write(block)
                        done += len(block)
                        bar.advance(len(block))
                    f.flush()
                    os.fsync(f.fileno())
                    if total is None or done == total:
                        bar.finish()
            except (ConnectionError, TimeoutError, http.client.IncompleteRead):
                pass  # the server stopped sending: resumed below
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                partial.unlink(missing_ok=True)
                cache.remove_if_empty(created)
                raise FetchError(cache.no_space(partial.parent.parent, (total or done) - offset),
                                 "disk") from None
        if total is None or done == total:
            return resumed
        if done > total:
            partial.unlink()
            raise FetchError(f"{url}: the server sent {done:,} bytes where it announced "
                             f"{total:,}; the file was removed", "stopped")
        tries += 1
        if tries >= TRIES:
            raise FetchError(f"{url}: the server stopped sending after {done:,} of {total:,} "
                             f"bytes ({TRIES} tries); the partial file is kept in "
                             f"{partial.parent} and the next attempt resumes it", "stopped")
        output.warn(f"{name}: the server stopped after {done:,} of {total:,} bytes; resuming")


def _range_start(response) -> int | None:
    """The first byte a 206 response holds (``Content-Range: bytes START-END/TOTAL``)."""
    try:
        return int(response.headers.get("Content-Range", "").split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
