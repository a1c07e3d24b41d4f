"""Per-shape optimum: for each scientific point, the nuisance setting with the best
*validation* loss (mean over seeds) — never the test metric."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from ..records import PRUNED, PRUNED_RUNG


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
    of the rest: a setting that diverges on some seeds never wins on its survivors' loss. A
    setting a halving search pruned on any seed never wins, and values it never started do
    not count as searched (for the edge flag).
    Without nuisance axes every completed run is kept. ``grid`` gives each axis's values, for
    the edge flag (defaults to the values seen in ``records``); a point is judged on the
    values it ran (stored in any state), so values another point added (a bracket `next`
    proposed) do not move its edge.
    """
    if not nuisance:  # nothing to choose on validation: every completed run (with or without it)
        return [r for r in records if r.get("status") == "completed"], []
    seen: dict[str, set] = defaultdict(set)
    ran: dict[tuple, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    cells: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    pruned = {(tuple(r.get(a) for a in scientific), tuple(r.get(a) for a in nuisance))
              for r in records if r.get("status") == PRUNED}
    for r in records:
        if r.get("status") != PRUNED or r.get(PRUNED_RUNG):  # never started: not searched
            for a in nuisance:
                ran[tuple(r.get(x) for x in scientific)][a].add(r.get(a))
                if r.get("status") == PRUNED:
                    seen[a].add(r.get(a))
        if r.get("status") not in ("completed", "diverged") or (
                (tuple(r.get(a) for a in scientific), tuple(r.get(a) for a in nuisance))
                in pruned) or (
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
        edges = [a for a, v in chosen.items()
                 if at_edge(v, [x for x in grid.get(a, []) if x in ran[point][a]]
                            or grid.get(a, []))]
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


@dataclass
class Transfer:
    """How a tuned setting's optimum moves with model width, at one point of the other
    scientific axes (e.g. per parametrization). ``rows``: per width, the best grid value,
    the optimum interpolated by a parabola in log(value) through the best value and its two
    neighbours, its mean validation loss, whether it is at the grid's edge, and the mean
    validation loss at every grid value (``values``; None where a seed diverged)."""

    axis: str
    values: list[float]
    width_axis: str
    group: dict[str, Any]
    rows: list[dict[str, Any]]
    grid_step: float      # typical ratio between neighbouring grid values
    drift: float          # largest / smallest interpolated optimum across widths
    direction: str        # "falls", "rises" or "" with width

    @property
    def steps(self) -> float:
        """The drift in grid steps."""
        return float(np.log(self.drift) / np.log(self.grid_step))

    @property
    def stays(self) -> bool:
        """Within one grid step across every width: the setting transfers."""
        return self.steps <= 1.0 + 1e-9

    @property
    def edges(self) -> list[Any]:
        return [r[self.width_axis] for r in self.rows if r["at_edge"]]

    def sentence(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.group.items()) or "all runs"
        first, last = self.rows[0], self.rows[-1]
        span = (f"{self.width_axis} {first[self.width_axis]} to {last[self.width_axis]}")
        if self.stays:
            text = (f"{where}: the best {self.axis} stays put across {span} (the interpolated "
                    f"optima are within {self.drift:.2g}x, one grid step = {self.grid_step:.2g}x)")
        else:
            text = (f"{where}: the best {self.axis} {self.direction} with width, by "
                    f"{self.drift:.2g}x ({self.steps:.1f} grid steps) across {span}")
        if self.edges:
            text += (f"; at {self.width_axis} = {', '.join(map(str, self.edges))} the best value "
                     "is at the edge of the grid, so the real optimum lies beyond it and the "
                     "drift may be larger")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "values": self.values, "width_axis": self.width_axis,
                "group": self.group,
                "rows": self.rows, "grid_step": self.grid_step, "drift": self.drift,
                "steps": self.steps, "stays": self.stays, "direction": self.direction,
                "sentence": self.sentence()}


def transfer(records: Sequence[dict[str, Any]], scientific: Sequence[str],
             nuisance: Sequence[str], width_axis: str, grid: Mapping[str, Sequence[Any]],
             metric: str = "val_loss") -> list[Transfer]:
    """For each positive, multiplicatively spaced nuisance axis (learning rate, weight
    decay) with at least three values, and each point of the scientific axes other than
    ``width_axis``: how its optimum moves across two or more widths. Settings are ranked as
    :func:`best_over_nuisance` ranks them (a setting with diverged seeds loses)."""
    out = []
    others = [a for a in scientific if a != width_axis]
    for axis in nuisance:
        values = sorted(v for v in grid.get(axis, []) if isinstance(v, Real) and v > 0)
        if len(values) < 3 or len(values) != len(grid.get(axis, [])):
            continue
        step = float(np.exp(np.median(np.diff(np.log(values)))))
        table: dict[tuple, dict[Any, dict[Any, list[dict]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list)))
        for r in records:
            if r.get("status") in ("completed", "diverged"):
                table[tuple(r[a] for a in others)][r[width_axis]][r[axis]].append(r)
        for key, widths in table.items():
            if len(widths) < 2:
                continue
            rows = [_optimum(width_axis, w, by_value, values, metric)
                    for w, by_value in sorted(widths.items(), key=lambda kv: value_order(kv[0]))]
            optima = [r["optimum"] for r in rows]
            drift = max(optima) / min(optima)
            trend = np.polyfit(np.log([float(r[width_axis]) for r in rows]), np.log(optima), 1)[0]
            direction = "" if drift == 1 else "falls" if trend < 0 else "rises"
            out.append(Transfer(axis, values, width_axis, dict(zip(others, key)), rows, step,
                                float(drift), direction))
    return out


def _optimum(width_axis: str, width: Any, by_value: Mapping[Any, list[dict]],
             values: Sequence[float], metric: str) -> dict[str, Any]:
    """The best value at one width, and the parabola-interpolated optimum in log(value)."""
    def loss(v):
        runs = by_value.get(v, [])
        ok = [r[metric] for r in runs if r["status"] == "completed" and r.get(metric) is not None]
        return np.mean(ok) if ok and len(ok) == len(runs) else np.inf

    losses = np.array([loss(v) for v in values])
    ran = [j for j, v in enumerate(values) if by_value.get(v)] or list(range(len(values)))
    # only the values this width ran: a value another width added (a bracket `next` proposed)
    # neither moves this width's edge nor blocks its interpolation
    at, optimum, edge = (v.item() for v in interpolated_optima(
        [values[j] for j in ran], losses[ran]))
    i = ran[at]
    return {width_axis: width, "best": values[i], "optimum": float(optimum),
            "val_loss": float(losses[i]), "at_edge": bool(edge),
            "losses": [float(v) if np.isfinite(v) else None for v in losses]}


def interpolated_optima(values: Sequence[float], losses: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index of the best value, the optimum, whether the best is the grid's edge) for each
    row of ``losses`` (..., len(values); inf where a setting diverged): the optimum is the
    vertex of the parabola in log(value) through the best value and its two neighbours,
    kept between them, or the best grid value itself at the edge, beside a diverged
    neighbour, or where the three are not convex. Rows are done together, so a bootstrap's
    resamples cost one call (analysis.hyperlaws)."""
    grid = np.asarray(values, dtype=float)
    x = np.log(grid)
    losses = np.asarray(losses, dtype=float)
    i = np.argmin(losses, axis=-1)
    edge = (i == 0) | (i == len(x) - 1)
    if len(x) < 3:
        return i, grid[i], edge
    j = np.clip(i, 1, len(x) - 2)
    y0, y1, y2 = (np.take_along_axis(losses, (j + s)[..., None], -1)[..., 0] for s in (-1, 0, 1))
    x0, x1, x2 = x[j - 1], x[j], x[j + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (y1 - y0) / (x1 - x0)
        a = ((y2 - y1) / (x2 - x1) - slope) / (x2 - x0)  # the parabola's curvature
        vertex = (a * (x0 + x1) - slope) / (2 * a)
    convex = ~edge & np.isfinite(y0) & np.isfinite(y1) & np.isfinite(y2) & (a > 0)
    return i, np.where(convex, np.exp(np.clip(vertex, x0, x2)), grid[i]), edge
