"""The end-of-run summary: the mean of the study's metric by model size and the other axes.

The table reads the columns the study's analysis fits (``analysis.metric`` against
``analysis.size``, e.g. ``test_ppl`` against ``n_params_nonembed``), so what is printed is
what is analysed. It fits nothing: the laws printed after it are the analysis's own fits, in
the form each analysis chose, with the parameters it found (:func:`law_rows`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Summary:
    """Mean ± std of ``metric`` over seeds, rows by model size (the ``size`` column), columns
    by the other axes."""

    metric: str
    row_labels: list[str]
    column_labels: list[str]
    # (size, column) -> mean, std (None for a single run), runs
    cells: dict[tuple[int, str], tuple[float, float | None, int]]
    sizes: list[int]
    size: str = "n_params"          # the model-size column the rows are keyed by

    @property
    def n_params(self) -> list[int]:
        """The row sizes (of the ``size`` column, which need not be ``n_params``)."""
        return self.sizes

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "size": self.size,
            "rows": [
                {self.size: n, "label": label,
                 **{c: {"mean": m, "std": s, "runs": k}
                    for c in self.column_labels
                    if (cell := self.cells.get((n, c))) for m, s, k in [cell]}}
                for n, label in zip(self.sizes, self.row_labels)
            ],
        }


def summarize(records: list[dict[str, Any]], axes: dict[str, str], metric: str = "test_loss",
              size: str = "n_params") -> Summary:
    """Summary of completed runs; ``axes`` maps each grid axis label to its config path;
    ``metric`` and ``size`` are the study's analysis columns.

    Rows are the numeric model axes (sizes); every other axis, a model setting such as the
    parametrization included, makes columns, so two models of one size never share a row."""
    done = [r for r in records if r["status"] == "completed" and r.get(metric) is not None
            and r.get(size) is not None]
    # A numeric model axis some runs lack (a list of grids: patch_size of the ViTs, None for
    # the ResNets) still names sizes; settings a run lacks are left out of its labels.
    model_axes = [label for label, path in axes.items() if path.startswith("model.")
                  and all(isinstance(r.get(label), int | float | None) for r in done)
                  and any(r.get(label) is not None for r in done)]
    other_axes = [label for label in axes if label not in model_axes]
    groups: dict[tuple[int, str], list[float]] = defaultdict(list)
    row_names: dict[int, str] = {}
    for r in done:
        n = r[size]
        column = settings_label({a: r.get(a) for a in other_axes}) or metric
        groups[(n, column)].append(r[metric])
        row_names[n] = settings_label({a: r.get(a) for a in model_axes})
    sizes = sorted(row_names)
    columns = list(dict.fromkeys(c for _, c in groups))
    cells = {key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None, len(v))
             for key, v in groups.items()}
    return Summary(metric, [row_names[n] for n in sizes], columns, cells, sizes, size)


def settings_label(point: Mapping[str, Any], sep: str = ", ") -> str:
    """A run's grid settings as ``axis=value`` words, leaving out those that do not apply to
    it: None, as a list of grids gives a run the axes of the other grids (``patch_size`` of
    the ViTs on a ResNet run). Floats as ``%g`` where that is exact (``1e-05``, ``0.3``)."""
    return sep.join(f"{k}={_value(v)}" for k, v in point.items() if v is not None)


def _value(v: Any) -> str:
    if isinstance(v, float) and float(f"{v:g}") == v:
        return f"{v:g}"
    return str(v)


def law_rows(fits: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each law the analysis fitted, as the summary prints it: its title, the form the
    analysis chose (and its formula), its parameters as the analysis names them, its points
    and verdict. ``fits``: the fits' ``to_dict()`` (``FitEntry``), or the ``fits`` of a
    stored ``scaling_law.json`` (the same dicts), so a fresh and a stored report print alike."""
    return [{"title": f["title"], "form": f["form"], "formula": f.get("formula", ""),
             "params": dict(f["params"]), "points": f.get("points"),
             "verdict": f["verdict"], "verdict_reasons": f.get("verdict_reasons", "")}
            for f in fits]


def format_params(params: Mapping[str, float]) -> str:
    """``E = 0.6893, A = 26.79, alpha = 0.3957``: 4 significant digits, the analysis's names."""
    return ", ".join(f"{k} = {v:.4g}" for k, v in params.items())
