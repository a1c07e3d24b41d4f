"""Per-shape optimum: for each scientific point, the nuisance setting with the best
*validation* loss (mean over seeds) — never the test metric."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np


@dataclass
class Winner:
    """The nuisance values chosen at one scientific point."""

    point: dict[str, Any]
    nuisance: dict[str, Any]
    val_loss: float
    at_edge: list[str]  # nuisance axes whose winning value is the grid's smallest or largest
    diverged: int = 0   # seeds of the winning setting that diverged (only when every setting had some)

    def to_dict(self) -> dict[str, Any]:
        return {"point": self.point, "nuisance": self.nuisance, "val_loss": self.val_loss,
                "at_edge": self.at_edge, "diverged": self.diverged}


def best_over_nuisance(
    records: Sequence[dict[str, Any]],
    scientific: Sequence[str],
    nuisance: Sequence[str],
    grid: Mapping[str, Sequence[Any]] | None = None,
    metric: str = "val_loss",
) -> tuple[list[dict[str, Any]], list[Winner]]:
    """(the completed runs of each point's winning nuisance setting, the winners).

    A setting is ranked by how many of its seeds diverged first, then by mean validation loss
    of the rest: a setting that diverges on some seeds never wins on its survivors' loss.
    Without nuisance axes every completed run is kept. ``grid`` gives each axis's values, for
    the edge flag (defaults to the values seen in ``records``).
    """
    done = [r for r in records if r.get("status") == "completed" and r.get(metric) is not None]
    if not nuisance:
        return done, []
    seen: dict[str, set] = defaultdict(set)
    cells: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("status") not in ("completed", "diverged") or (
                r.get("status") == "completed" and r.get(metric) is None):
            continue
        cells[tuple(r[a] for a in scientific)][tuple(r[a] for a in nuisance)].append(r)
        for a in nuisance:
            seen[a].add(r[a])
    grid = grid or {a: sorted(v) for a, v in seen.items()}
    selected, winners = [], []
    for point, options in cells.items():
        def rank(key, options=options):
            runs = options[key]
            ok = [r[metric] for r in runs if r["status"] == "completed"]
            return (len(runs) - len(ok), np.mean(ok) if ok else np.inf)

        best = min(options, key=rank)
        diverged, val_loss = rank(best)
        if diverged == len(options[best]):  # every seed of every setting diverged here
            continue
        selected.extend(r for r in options[best] if r["status"] == "completed")
        chosen = dict(zip(nuisance, best))
        edges = [a for a, v in chosen.items() if at_edge(v, grid.get(a, []))]
        winners.append(Winner(dict(zip(scientific, point)), chosen, float(val_loss), edges,
                              diverged))
    return selected, winners


def at_edge(value: Any, values: Sequence[Any]) -> bool:
    """Whether ``value`` is the smallest or largest number of a tuned grid."""
    numeric = [v for v in values if isinstance(v, Real) and not isinstance(v, bool)]
    if len(numeric) < 2 or not isinstance(value, Real):
        return False
    return value in (min(numeric), max(numeric))


def value_order(value: Any) -> tuple:
    """Sort key for grid values: numbers numerically (16 before 128), then text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value, "")
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0, str(value))
