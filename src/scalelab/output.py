"""The one object that owns all printing: messages, tables, progress and JSON.

``text`` mode prints rich tables to stdout and messages to stderr; ``json`` mode prints one
JSON document to stdout and nothing else there, so output can be piped into other tools.
Progress bars appear only on a terminal; elsewhere each finished run is one plain line.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

Format = Literal["text", "json"]


class Output:
    def __init__(self, fmt: Format = "text", stdout: TextIO | None = None,
                 stderr: TextIO | None = None):
        self.format = fmt
        self.out = _console(stdout or sys.stdout)
        self.err = _console(stderr or sys.stderr)

    @property
    def is_json(self) -> bool:
        return self.format == "json"

    # Messages and cells carry user text (paths, grid values, errors): never parsed as markup.

    def info(self, message: str) -> None:
        """A human message (stderr, so stdout stays clean for tables or JSON)."""
        if not self.is_json:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.err.print(Text.assemble(("warning:", "yellow"), " ", message))

    def error(self, message: str) -> None:
        self.err.print(Text.assemble(("error:", "red"), " ", message))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.is_json or not rows:
            return
        table = Table(title=Text(title), title_justify="left")
        for i, column in enumerate(columns):
            numeric = all(isinstance(row[i], int | float) or row[i] is None for row in rows)
            table.add_column(Text(str(column)), justify="right" if numeric and i > 0 else "left")
        for row in rows:
            table.add_row(*(Text(fmt_value(v)) for v in row))
        self.out.print(table)

    def emit(self, payload: Any) -> None:
        """The machine-readable result of a command (json mode only)."""
        if self.is_json:
            self.out.file.write(json.dumps(payload, indent=2, default=str) + "\n")

    def emit_each(self, items: Iterable[Any]) -> None:
        """The machine-readable result as one JSON array written an item at a time (json mode
        only): a result too long to hold in memory (a dry run of a million cells)."""
        if not self.is_json:
            return
        write = self.out.file.write
        separator = "[\n  "
        for item in items:
            write(separator + json.dumps(item, default=str))
            separator = ",\n  "
        write("[]\n" if separator.startswith("[") else "\n]\n")

    @contextmanager
    def progress(self, total: int, description: str):
        counter = _RunCounter(self, total, description)
        try:
            yield counter
        finally:
            counter.close()


    @contextmanager
    def transfer(self, name: str, total: int | None, done: int = 0):
        """The bytes of one download (``done`` of ``total`` already there): a bar with the
        size, rate and time left on a terminal; elsewhere one line when it is whole."""
        transfer = _Transfer(self, name, total, done)
        try:
            yield transfer
        finally:
            transfer.close()


def _console(file: TextIO) -> Console:
    # Off a terminal (logs, pipes, CI) tables get room instead of rich's 80-column default.
    width = None if file.isatty() else 200
    return Console(file=file, highlight=False, soft_wrap=True, width=width)


class _RunCounter:
    """Counts finished runs by status; drives a rich bar or prints one line per run."""

    def __init__(self, output: Output, total: int, description: str):
        self.output, self.total, self.done = output, total, 0
        self.counts: Counter = Counter()
        self.bar: Progress | None = None
        if not output.is_json and output.err.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("{task.fields[issues]}"), console=output.err, transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, issues="")

    def advance(self, status: str, label: str = "") -> None:
        self.done += 1
        self.counts[status] += 1
        if self.bar is not None:
            issues = " ".join(f"[red]{s}: {self.counts[s]}[/]"
                              for s in ("failed", "diverged", "pruned") if self.counts[s])
            self.bar.update(self.task, advance=1, issues=issues)
        else:
            self.output.info(f"[{self.done}/{self.total}] {status:9} {label}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _Transfer:
    """Drives a byte bar (terminal) or prints ``name: size in time (rate)`` when finished."""

    def __init__(self, output: Output, name: str, total: int | None, done: int):
        self.output, self.name, self.start, self.done = output, name, done, done
        self.began = time.monotonic()
        self.bar: Progress | None = None
        if not output.is_json and output.err.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=output.err, transient=False)
            self.bar.start()
            self.task = self.bar.add_task(name, total=total, completed=done)

    def advance(self, size: int) -> None:
        self.done += size
        if self.bar is not None:
            self.bar.update(self.task, advance=size)

    def finish(self) -> None:
        """The file is whole: off a terminal, its one line."""
        if self.bar is None:
            seconds = max(time.monotonic() - self.began, 1e-3)
            resumed = f", resumed at {fmt_bytes(self.start)}" if self.start else ""
            rate = fmt_bytes((self.done - self.start) / seconds)
            self.output.info(f"{self.name}: {fmt_bytes(self.done)} in {seconds:,.1f} s "
                             f"({rate}/s{resumed})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def fmt_bytes(size: float) -> str:
    """A byte count in kB, MB or GB (powers of 1000), as download tools show them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size:,.0f} bytes"


def fmt_value(value: Any) -> str:
    """Compact cell text: 4 significant digits for floats, thousands separators for ints."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)
