"""The end-of-run summary: mean metric by model size and data size, and a first power law.

This is a quick look, not the fitting machinery: an ordinary least-squares line through the
per-size means in log-log space, L ~ A * N^(-alpha), one line per data size.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class LogLogFit:
    """``y = coefficient * x ** (-exponent)`` fitted by least squares on log y vs log x."""

    coefficient: float
    exponent: float
    r_squared: float
    points: int

    def predict(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.coefficient * np.asarray(x, dtype=float) ** (-self.exponent)


def fit_loglog(x, y) -> LogLogFit:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("a log-log fit needs at least two points with positive x and y")
    line = stats.linregress(np.log(x), np.log(y))
    return LogLogFit(math.exp(line.intercept), -line.slope, line.rvalue**2, len(x))


@dataclass
class Summary:
    """Mean ± std of ``metric`` over seeds, rows by parameter count, columns by the other axes."""

    metric: str
    row_labels: list[str]
    column_labels: list[str]
    # (n_params, column) -> mean, std (None for a single run), runs
    cells: dict[tuple[int, str], tuple[float, float | None, int]]
    fits: dict[str, LogLogFit]
    n_params: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "rows": [
                {"n_params": n, "label": label,
                 **{c: {"mean": m, "std": s, "runs": k}
                    for c in self.column_labels
                    if (cell := self.cells.get((n, c))) for m, s, k in [cell]}}
                for n, label in zip(self.n_params, self.row_labels)
            ],
            "fits": {c: {"coefficient": f.coefficient, "exponent": f.exponent,
                         "r_squared": f.r_squared, "points": f.points}
                     for c, f in self.fits.items()},
        }


def summarize(records: list[dict[str, Any]], axes: dict[str, str], metric: str = "test_loss") -> Summary:
    """Summary of completed runs; ``axes`` maps each grid axis label to its config path.

    Rows are the numeric model axes (sizes); every other axis, a model setting such as the
    parametrization included, makes columns, so two models of one size never share a row."""
    done = [r for r in records if r["status"] == "completed" and r.get(metric) is not None]
    model_axes = [label for label, path in axes.items() if path.startswith("model.")
                  and all(isinstance(r.get(label), int | float) for r in done)]
    other_axes = [label for label in axes if label not in model_axes]
    groups: dict[tuple[int, str], list[float]] = defaultdict(list)
    row_names: dict[int, str] = {}
    for r in done:
        n = r["n_params"]
        column = ", ".join(f"{a}={r[a]:g}" if isinstance(r[a], float) else f"{a}={r[a]}"
                           for a in other_axes) or metric
        groups[(n, column)].append(r[metric])
        row_names[n] = ", ".join(f"{a}={r[a]}" for a in model_axes)
    n_params = sorted(row_names)
    columns = list(dict.fromkeys(c for _, c in groups))
    cells = {key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None, len(v))
             for key, v in groups.items()}
    fits = {}
    for column in columns:
        xs = [n for n in n_params if (n, column) in cells]
        if len(xs) >= 3:  # through two points any line fits (R² = 1): no evidence of a law
            fits[column] = fit_loglog(xs, [cells[(n, column)][0] for n in xs])
    return Summary(metric, [row_names[n] for n in n_params], columns, cells, fits, n_params)
