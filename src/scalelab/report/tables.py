"""Table cells as a paper's appendix sets them: every number to four significant digits, one
decimal place per column where the column spans less than a decade (so its digits line up),
a mean ± std as one cell whose std shares its mean's decimal place, fractions quoted as the
percentages the text uses, and numbers (and their headers) right-aligned, words left-aligned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SIG = 4  # significant digits of every number
EMPTY = "—"

#: The caption line of every table that shows a ±; ``{n}`` names the column that counts n.
PM_DEFINITION = ("± is the sample standard deviation over {over} (n − 1 in the denominator); "
                 "n = the {n} column.")


def pm_caption(n: str, over: str = "seeds") -> str:
    """The definition of ± for a table whose ``n`` column counts what it is taken over."""
    return PM_DEFINITION.format(n=n, over=over)


@dataclass(frozen=True)
class MeanStd:
    """A mean and its standard deviation (None: a single value), set as one cell."""

    mean: float
    std: float | None = None


@dataclass(frozen=True)
class Percent:
    """A fraction shown as a percentage (0.0351 -> 3.51%), as the report's text quotes it."""

    value: float | None


def format_table(rows: Sequence[Sequence[Any]], columns: int) -> tuple[list[list[str]], list[bool]]:
    """Each cell's text, and for each column whether it holds numbers (right-aligned)."""
    by_column = [[row[i] for row in rows] for i in range(columns)]
    texts = [_format_column(values) for values in by_column]
    numeric = [_numeric_column(values) for values in by_column]
    return [list(cells) for cells in zip(*texts)] if rows else [], numeric


def is_number(value: Any) -> bool:
    """Whether a cell is a number (or a text that reads as one: '+0.012 [-0.003, +0.027]')."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float | MeanStd | Percent):
        return True
    if not isinstance(value, str):
        return False
    head = value.strip().lstrip("+-−[").split(" ")[0].replace(",", "").rstrip("%×")
    try:
        float(head)
    except ValueError:
        return False
    return True


def _numeric_column(values: Sequence[Any]) -> bool:
    filled = [v for v in values if v is not None and v != EMPTY]
    return bool(filled) and sum(map(is_number, filled)) * 2 >= len(filled)


def _format_column(values: Sequence[Any]) -> list[str]:
    floats = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    means = [v.mean for v in values if isinstance(v, MeanStd) and v.mean is not None
             and math.isfinite(v.mean)]
    decimals = _decimals(floats)
    mean_decimals = _decimals(means)
    return [_cell(v, decimals, mean_decimals) for v in values]


def _cell(value: Any, decimals: int | None, mean_decimals: int | None) -> str:
    if value is None:
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return number(value, decimals)
    if isinstance(value, MeanStd):
        return mean_std(value.mean, value.std, mean_decimals)
    if isinstance(value, Percent):
        return EMPTY if value.value is None else f"{value.value:.2%}"
    return str(value)


def _decimals(values: Sequence[float]) -> int | None:
    """One decimal place for a column of numbers that spans under a decade (lowest magnitude
    to four significant digits), or None: each number to four significant digits."""
    if not values:
        return None
    magnitudes = [abs(v) for v in values if v != 0]
    if all(v == int(v) for v in values) and max(map(abs, values)) < 1e5:
        return 0  # whole numbers: counts and sizes, with thousands separators
    if not magnitudes:
        return SIG - 1
    lo, hi = min(magnitudes), max(magnitudes)
    if lo < 1e-3 or hi >= 1e5 or hi / lo >= 10:
        return None
    return max(0, SIG - 1 - math.floor(math.log10(lo)))


def number(value: float, decimals: int | None = None) -> str:
    """``value`` at ``decimals`` places, or (None) to four significant digits."""
    if not math.isfinite(value):
        return str(value)
    if decimals is not None:
        return f"{value:,.{decimals}f}"
    text = f"{value:#.{SIG}g}"
    mantissa, e, exponent = text.partition("e")
    return mantissa.rstrip(".") + e + exponent


def mean_std(mean: float | None, std: float | None, decimals: int | None = None) -> str:
    """'mean ± std', the std at its mean's decimal place (two significant digits of it where
    the mean is in scientific notation or the std would round to zero)."""
    if mean is None:
        return EMPTY
    text = number(mean, decimals)
    if std is None:
        return text
    if decimals is None and "e" not in text:
        decimals = len(text.split(".")[1]) if "." in text else 0
    if decimals is None or round(std, decimals) == 0:
        return f"{text} ± {std:.2g}"
    return f"{text} ± {std:.{decimals}f}"
