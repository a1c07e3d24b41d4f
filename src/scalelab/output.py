"""The one object that owns all printing: messages, tables, progress and JSON.

``text`` mode prints rich tables to stdout and messages to stderr; ``json`` mode prints one
JSON document to stdout and nothing else there, so output can be piped into other tools.
Progress bars appear only on a terminal; elsewhere each finished run is one plain line.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from rich.cells import cell_len
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

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              keep: Iterable[str] = ()) -> None:
        """A table that fits the console's width (see :func:`layout`). A column that is None
        in every row (a setting no run has) is left out, unless named in ``keep``; the first
        column, which names the rows, always stays."""
        if self.is_json or not rows:
            return
        columns, rows = drop_empty_columns(columns, rows, keep)
        cells = [_Cells(str(column), [fmt_value(row[i]) for row in rows],
                        i > 0 and all(isinstance(row[i], int | float) or row[i] is None
                                      for row in rows))
                 for i, column in enumerate(columns)]
        width = self.out.width
        parts = layout(cells, width)
        for n, (chosen, widths) in enumerate(parts):
            self.out.print(Text(title if n == 0 else "(continued)", style="table.title"),
                           soft_wrap=False, overflow="fold")
            table = Table()
            for i, w in zip(chosen, widths):
                column = cells[i]
                table.add_column(Text(wrap_header(column.header, w)), width=w,
                                 justify="right" if column.numeric else "left",
                                 overflow="fold")
            for r in range(len(rows)):
                table.add_row(*(Text(wrap_cell(cells[i].cells[r], w))
                                for i, w in zip(chosen, widths)))
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


#: The width of tables written off a terminal (a pipe, a log, CI) unless ``COLUMNS`` is set.
PIPE_WIDTH = 120


def _console(file: TextIO) -> Console:
    """On a terminal rich's width (its size, or ``COLUMNS``); elsewhere ``COLUMNS`` or
    :data:`PIPE_WIDTH`, never the terminal another stream of this process may be on."""
    width = None
    if not file.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH
    return Console(file=file, highlight=False, soft_wrap=True, width=width)


def drop_empty_columns(columns: Sequence[str], rows: Sequence[Sequence[Any]],
                       keep: Iterable[str] = ()) -> tuple[list[str], list[list[Any]]]:
    """``columns`` and ``rows`` without the columns that are None in every row (but the
    first and those in ``keep``)."""
    keep = set(keep)
    chosen = [i for i, column in enumerate(columns)
              if i == 0 or column in keep or any(row[i] is not None for row in rows)]
    return [columns[i] for i in chosen], [[row[i] for i in chosen] for row in rows]


@dataclass
class _Cells:
    """One column's header and cell texts, and the narrowest widths it prints at."""

    header: str
    cells: list[str]
    numeric: bool

    @property
    def natural(self) -> int:
        return max([cell_len(self.header), *(_text_width(c) for c in self.cells)])

    @property
    def unbroken(self) -> int:
        """The narrowest width that breaks no number and no word (cells wrap at spaces)."""
        if self.numeric:
            return max((_text_width(c) for c in self.cells), default=1)
        return max((cell_len(word) for c in self.cells for word in c.split()), default=1)

    def tightened(self, width: int) -> int:
        """``width``, or less where the header and cells wrapped to fit it need less."""
        header = _text_width(wrap_header(self.header, width))
        cells = max((min(width, _text_width(wrap_cell(c, width))) for c in self.cells),
                    default=0)
        return max(header, cells, 1)

    def lines(self, width: int) -> int:
        """The lines the header and cells take at ``width`` (rich folds a longer word)."""
        texts = Counter(wrap_cell(c, width) for c in self.cells)
        texts[wrap_header(self.header, width)] += 1
        return sum(n * (-(-cell_len(line) // width) or 1)
                   for t, n in texts.items() for line in t.split("\n"))

    def floor(self, wrap_cells: bool) -> int:
        """The narrowest width with the header wrapped and the cells whole (or wrapped)."""
        header = max(cell_len(p.rstrip()) for p in _header_pieces(self.header))
        cells = self.unbroken if wrap_cells else max(map(_text_width, self.cells), default=0)
        return max(header, cells, 1)


def _text_width(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


def _header_pieces(header: str) -> list[str]:
    """A header cut where it may wrap: after spaces and after underscores."""
    return [p for p in re.findall(r"[^\s_]*(?:[\s_]+|$)", header) if p] or [header]


def _fill(pieces: list[str], width: int) -> str:
    """``pieces`` in lines of at most ``width`` cells (a longer piece keeps its own line)."""
    lines = [""]
    for piece in pieces:
        if lines[-1] and cell_len(lines[-1] + piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


def wrap_header(header: str, width: int) -> str:
    """``header`` in lines of at most ``width`` cells, broken after spaces, and after
    underscores in a word still too wide (``target_rate`` -> ``target_`` / ``rate``); a
    piece wider than ``width`` keeps its line."""
    if cell_len(header) <= width:
        return header
    words = re.findall(r"\S+\s*", header) or [header]
    return _fill([piece for word in words for piece in (
        [word] if cell_len(word.rstrip()) <= width else _header_pieces(word))], width)


def wrap_cell(text: str, width: int) -> str:
    """``text`` broken where it reads best: after its commas (``E = 0.17, A = 29.3`` keeps
    each ``k = v`` whole), then after its spaces, outside brackets first (``1.9e+09`` /
    ``[1.3e+09, 2.3e+09]``); a word wider than ``width`` is left to rich."""
    if _text_width(text) <= width or "\n" in text:
        return text
    pieces = [text]
    for pattern, anywhere in ((r",\s+", False), (r"\s+", False), (r"\s+", True)):
        pieces = [q for p in pieces for q in
                  ([p] if cell_len(p.rstrip()) <= width else _split(p, pattern, anywhere))]
    return _fill(pieces, width)


def _split(text: str, pattern: str, anywhere: bool) -> list[str]:
    """``text`` cut after each match of ``pattern`` (unless ``anywhere``, only those outside
    brackets), every piece keeping its separator."""
    depth, level = [], 0
    for char in text:
        level += (char in "([{") - (char in ")]}")
        depth.append(level)
    ends = [m.end() for m in re.finditer(pattern, text) if anywhere or depth[m.start()] <= 0]
    return [text[a:b] for a, b in zip([0, *ends], [*ends, len(text)]) if text[a:b]]


def _room(width: int, columns: int) -> int:
    """The cells' share of ``width`` in a rich table of ``columns`` columns (a border
    between columns and at each edge, a space of padding either side of each cell)."""
    return width - 3 * columns - 1


def _shrink(widths: list[int], floors: list[int], room: int) -> list[int] | None:
    """``widths`` narrowed, the widest first and none below its floor, until they sum to
    ``room`` at most; None when the floors alone exceed it."""
    if sum(floors) > room:
        return None
    widths = [max(w, f) for w, f in zip(widths, floors)]
    for _ in range(sum(widths) - room):
        i = max((i for i, w in enumerate(widths) if w > floors[i]), key=widths.__getitem__)
        widths[i] -= 1
    return widths


def _fit(columns: list[_Cells], width: int, wrap_cells: bool = True) -> list[int] | None:
    """Column widths that fit ``width``: as wide as their text, else with headers wrapped
    (see :func:`wrap_header`), then (``wrap_cells``) text cells too (see :func:`wrap_cell`);
    None when that is not enough. Numbers and words are never broken."""
    natural, room = [c.natural for c in columns], _room(width, len(columns))
    for wrap in (False, True)[:1 + wrap_cells]:
        widths = _shrink(natural, [c.floor(wrap) for c in columns], room)
        if widths is not None:
            return _spend(columns, [c.tightened(w) for c, w in zip(columns, widths)], room)
    return None


def _spend(columns: list[_Cells], widths: list[int], room: int) -> list[int]:
    """``widths`` with the room that wrapping freed given back where it saves most lines."""
    known: dict[tuple[int, int], int] = {}

    def lines(i: int, w: int) -> int:
        if (i, w) not in known:
            known[i, w] = columns[i].lines(w)
        return known[i, w]

    while (spare := room - sum(widths)) > 0:
        best = None  # (lines saved per column of width, column, width)
        for i, c in enumerate(columns):
            for w in range(widths[i] + 1, min(widths[i] + spare, c.natural) + 1):
                saved = lines(i, widths[i]) - lines(i, w)
                if saved > 0 and (best is None or saved / (w - widths[i]) > best[0]):
                    best = (saved / (w - widths[i]), i, w)
        if best is None:
            return widths
        _, i, widths[i] = best
    return widths


def layout(columns: list[_Cells], width: int) -> list[tuple[list[int], list[int]]]:
    """How a table prints within ``width``: parts, each (the columns it shows, their widths).

    One part when the columns fit (wrapping text and headers as :func:`_fit` does); else
    the columns in consecutive parts that fit with their cells whole (headers may wrap),
    each beginning with the first column (which names the rows), as pandas prints a wide
    frame. Only a column that cannot fit beside the
    first even alone has its text folded across lines: a number is split, never dropped."""
    everything = list(range(len(columns)))
    widths = _fit(columns, width)
    if widths is not None:
        return [(everything, widths)]
    parts, current = [], [0]
    for i in everything[1:]:
        trial = current + [i]
        if len(current) > 1 and _fit([columns[j] for j in trial], width,
                                     wrap_cells=False) is None:
            parts.append(current)
            trial = [0, i]
        current = trial
    parts.append(current)
    laid = []
    for part in parts:
        chosen = [columns[j] for j in part]
        widths = _fit(chosen, width) or _shrink([c.natural for c in chosen], [1] * len(part),
                                                max(_room(width, len(part)), len(part)))
        laid.append((part, widths))
    return laid


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
