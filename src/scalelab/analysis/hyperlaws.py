"""Hyperparameter laws: how a tuned setting's best value (learning rate, batch size, any
positive numeric nuisance axis) moves with model size N and with compute C, as
value = k·x^p — what ``scalelab next`` sets instead of tuning a whole grid again.

Each shape's optimum is interpolated (a parabola in log value through the best grid value
and its neighbours, :func:`.nuisance.interpolated_optima`, the interpolation the transfer
section uses), not just its best grid point. An optimum at its grid's edge is a bound, not an
estimate: it is left out of the law, with a diagnostic saying so. The intervals come from
resampling seeds within each shape, re-interpolating every shape's optimum and refitting;
all resamples of a shape are interpolated in one call and all refits are one matrix product.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
from scipy import stats

from ..store import StudyMeta
from .diagnostics import Diagnostic
from .nuisance import best_over_nuisance, interpolated_optima, value_order

#: A law needs interior optima at this many distinct sizes (or compute budgets) at least.
MIN_SHAPES = 3
#: The compute law is chosen over the size law only when its scatter is this much smaller.
PREFER_COMPUTE = 0.9
#: Names of the two laws, and the record column each is fitted against by default.
AGAINST = {"N": "n_params", "C": "train_flops"}


@dataclass
class ShapeOptimum:
    """One shape's tuned optimum: the values it ran (along the axis, the other nuisance axes
    held at its best setting), the best of them, the interpolated optimum and its resamples."""

    point: dict[str, Any]
    n: float | None
    c: float | None
    values: list[float]
    best: float
    optimum: float
    at_edge: bool
    seeds: int
    fixed: dict[str, Any] = field(default_factory=dict)
    samples: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"point": self.point, "n": self.n, "c": self.c, "values": self.values,
                "best": self.best, "optimum": self.optimum, "at_edge": self.at_edge,
                "seeds": self.seeds, "fixed": self.fixed}


@dataclass
class PowerLaw:
    """value = k·x^p on the shapes' interpolated optima (least squares in log-log).

    Every interval is the union of two: the seed bootstrap's (refits ``log_k``, ``ps``; with
    ``noise``, draws of the residual scatter, for a new shape) and the regression's own
    Student-t interval from the residuals. A few seeds make the bootstrap too narrow (two
    seeds give three distinct resamples), and the residuals also carry what seeds cannot:
    shapes that sit off the law."""

    against: str                  # the record column x: the size column or train_flops
    k: float
    p: float
    p_interval: tuple[float, float]
    scatter: float                # rms of log(optimum / law), corrected for the 2 fitted numbers
    points: int
    x_range: tuple[float, float]
    level: float
    p_seed_interval: tuple[float, float] = (math.nan, math.nan)  # the bootstrap's alone
    log_k: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    ps: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    noise: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    log_x: tuple[float, float] = (0.0, 1.0)   # mean of log x and its sum of squares about it

    def predict(self, x: float) -> dict[str, Any]:
        """The law at ``x``: ``interval`` for the law itself, and ``optimum_interval`` for
        the optimum one new shape there would find (the law's spread plus the shapes' own
        scatter around it); ``reach``: x over the largest size (or compute) fitted."""
        lx = math.log(x)
        centre = math.log(self.k) + self.p * lx
        t = stats.t.ppf((1 + self.level) / 2, max(self.points - 2, 1)) * self.scatter
        mean, ss = self.log_x
        spread = 1 / self.points + (lx - mean) ** 2 / ss
        logs = self.log_k + self.ps * lx
        return {"value": float(math.exp(centre)),
                "interval": _union(logs, centre, t * math.sqrt(spread), self.level),
                "optimum_interval": _union(logs + self.noise, centre,
                                           t * math.sqrt(1 + spread), self.level),
                "reach": float(x / self.x_range[1])}

    def to_dict(self) -> dict[str, Any]:
        return {"against": self.against, "k": self.k, "p": self.p,
                "p_interval": list(self.p_interval),
                "p_seed_interval": list(self.p_seed_interval), "scatter": self.scatter,
                "points": self.points, "x_range": list(self.x_range), "level": self.level}


def _union(draws: np.ndarray, centre: float, half: float, level: float) -> list[float]:
    """exp of the union of the draws' percentile interval and centre ± half (in logs)."""
    lo, hi = np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(np.exp(min(lo, centre - half))), float(np.exp(max(hi, centre + half)))]


@dataclass
class HyperLaw:
    """The laws of one tuned axis at one point of the grouping axes (``group``)."""

    axis: str
    group: dict[str, Any]
    optima: list[ShapeOptimum]
    laws: dict[str, PowerLaw]     # "N" and/or "C"; empty when too few interior optima
    diagnostics: list[Diagnostic]
    level: float

    @property
    def chosen(self) -> str | None:
        """The law to predict with: against C only where it describes the optima clearly
        better (scatter under PREFER_COMPUTE times N's), else against N."""
        if "N" in self.laws and "C" in self.laws:
            better = self.laws["C"].scatter < PREFER_COMPUTE * self.laws["N"].scatter
            return "C" if better else "N"
        return next(iter(self.laws), None)

    @property
    def grid_step(self) -> float:
        """The typical ratio between neighbouring values of the shapes' own grids."""
        steps = [np.diff(np.log(o.values)) for o in self.optima if len(o.values) > 1]
        return float(np.exp(np.median(np.concatenate(steps)))) if steps else 1.0

    def predict(self, n: float, c: float) -> dict[str, Any] | None:
        """The chosen law's prediction for a shape of size ``n`` spending ``c`` FLOPs."""
        name = self.chosen
        if name is None:
            return None
        law = self.laws[name]
        return {"axis": self.axis, "law": name, "against": law.against, "k": law.k,
                "p": law.p, "level": self.level, **law.predict(n if name == "N" else c)}

    def sentence(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.group.items()) or "all runs"
        if not self.laws:
            return f"{where}: no law for the best {self.axis} (see the diagnostics)"
        parts = []
        for name, law in self.laws.items():
            lo, hi = law.p_interval
            parts.append(f"{law.k:.3g}·{name}^{law.p:.3g} ({100 * self.level:g}% interval on "
                         f"the exponent {lo:.3g} to {hi:.3g}; {name} = {law.against})")
        used = sum(not o.at_edge for o in self.optima)
        return (f"{where}: the best {self.axis} ≈ " + " or ≈ ".join(parts)
                + f", fitted on the interpolated optima of {used} shape(s); predictions use "
                f"the law against {self.chosen}")

    def to_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "group": self.group, "level": self.level,
                "optima": [o.to_dict() for o in self.optima],
                "laws": {k: v.to_dict() for k, v in self.laws.items()}, "chosen": self.chosen,
                "diagnostics": [d.to_dict() for d in self.diagnostics],
                "sentence": self.sentence()}


def study_hyper_laws(records: Sequence[dict[str, Any]], meta: StudyMeta,
                     group_by: Sequence[str] | None = None, n_resamples: int = 1000,
                     level: float = 0.95, seed: int = 0) -> list[HyperLaw]:
    """:func:`hyper_laws` of a stored study, against its ``analysis.size`` column. Laws pool
    the shapes across the size and data axes; ``group_by`` (default: every other scientific
    axis, e.g. the parametrization or the method) splits them."""
    meta = StudyMeta.coerce(meta)
    if group_by is None:
        group_by = [a for a in meta.shape_axes if not _scale_axis(meta.axes.get(a, ""),
                                                                  meta.grid.get(a, []))]
    return hyper_laws(records, meta.shape_axes, meta.nuisance, group_by=group_by,
                      size=meta.settings["size"], n_resamples=n_resamples, level=level,
                      seed=seed)


def _scale_axis(path: str, values: Sequence[Any]) -> bool:
    """A numeric model-size or data axis: laws are fitted across it, never split by it."""
    numeric = all(isinstance(v, Real) and not isinstance(v, bool) for v in values)
    return numeric and (path.startswith("model.") or path.startswith("task.num_train"))


def hyper_laws(records: Sequence[dict[str, Any]], scientific: Sequence[str],
               nuisance: Sequence[str], *, group_by: Sequence[str] = (),
               size: str = "n_params", compute: str = "train_flops",
               metric: str = "val_loss", n_resamples: int = 1000, level: float = 0.95,
               seed: int = 0) -> list[HyperLaw]:
    """One :class:`HyperLaw` per positive numeric nuisance axis and point of ``group_by``:
    each shape (point of ``scientific``) tuned on validation loss, its optimum interpolated,
    and the optima fitted against ``size`` (N) and ``compute`` (C, the counted FLOPs of the
    shape's runs at its best value)."""
    rng = np.random.default_rng(seed)
    runs = [r for r in records if r.get("status") in ("completed", "diverged")]
    groups: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        groups[tuple(r.get(a) for a in group_by)][tuple(r.get(a) for a in scientific)].append(r)
    out = []
    for axis in nuisance:
        values = {r.get(axis) for r in runs}
        if not values or not all(isinstance(v, Real) and not isinstance(v, bool) and v > 0
                                 for v in values):
            continue
        for key in sorted(groups, key=lambda k: tuple(map(value_order, k))):
            shapes = groups[key]
            optima = [o for point in sorted(shapes, key=lambda k: tuple(map(value_order, k)))
                      if (o := shape_optimum(shapes[point], dict(zip(scientific, point)), axis,
                                             nuisance, size, compute, metric, n_resamples,
                                             rng)) is not None]
            if optima:
                out.append(_laws(axis, dict(zip(group_by, key)), optima, size, compute,
                                 level, rng))
    return out


def shape_optimum(runs: Sequence[dict[str, Any]], point: dict[str, Any], axis: str,
                  nuisance: Sequence[str], size: str = "n_params",
                  compute: str = "train_flops", metric: str = "val_loss",
                  n_resamples: int = 0, rng: np.random.Generator | None = None
                  ) -> ShapeOptimum | None:
    """The interpolated optimum of ``axis`` over one shape's runs, along the slice through
    its best setting (ranked as :func:`.nuisance.best_over_nuisance` ranks them), and
    ``n_resamples`` resamples of its seeds; None when every setting diverged."""
    _, winners = best_over_nuisance(runs, [], list(nuisance), metric=metric)
    if not winners:
        return None
    fixed = {a: v for a, v in winners[0].nuisance.items() if a != axis}
    line = [r for r in runs if all(r.get(a) == v for a, v in fixed.items())]
    values = sorted({float(r[axis]) for r in line})
    seeds = sorted({r.get("seed") for r in line}, key=value_order)
    loss = np.zeros((len(seeds), len(values)))
    present, bad = np.zeros_like(loss), np.zeros_like(loss)
    for r in line:
        s, v = seeds.index(r.get("seed")), values.index(float(r[axis]))
        ok = r["status"] == "completed" and r.get(metric) is not None
        present[s, v] += 1
        loss[s, v] += r[metric] if ok else 0.0
        bad[s, v] += not ok
    counts = np.ones((1, len(seeds)))
    if n_resamples and rng is not None:
        counts = np.vstack([counts, rng.multinomial(len(seeds), np.full(len(seeds), 1 / len(seeds)),
                                                    size=n_resamples)])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where((counts @ bad > 0) | (counts @ present == 0), np.inf,
                         (counts @ loss) / (counts @ present))
    i, optima, edge = interpolated_optima(values, means)
    best_runs = [r for r in line if float(r[axis]) == values[i[0]]
                 and r["status"] == "completed"]
    return ShapeOptimum(point, _median(runs, size), _median(best_runs, compute), values,
                        values[i[0]], float(optima[0]), bool(edge[0]), len(seeds), fixed,
                        optima[1:])


def _median(runs: Sequence[dict[str, Any]], column: str) -> float | None:
    found = [float(r[column]) for r in runs if r.get(column)]
    return float(np.median(found)) if found else None


def _laws(axis: str, group: dict[str, Any], optima: list[ShapeOptimum], size: str,
          compute: str, level: float, rng: np.random.Generator) -> HyperLaw:
    """Fit the interior optima against N and C; a diagnostic for every edge optimum and
    for a law that cannot be fitted."""
    where = ", ".join(f"{k}={v}" for k, v in group.items())
    notes = [_edge_note(axis, o) for o in optima if o.at_edge]
    inner = [o for o in optima if not o.at_edge]
    laws: dict[str, PowerLaw] = {}
    for name, column, attr in (("N", size, "n"), ("C", compute, "c")):
        usable = [o for o in inner if getattr(o, attr)]
        distinct = len({getattr(o, attr) for o in usable})
        if distinct < MIN_SHAPES:
            notes.append(Diagnostic(
                "warning", "hyper_too_few",
                f"{where + ': ' if where else ''}only {distinct} distinct {column} value(s) "
                f"have an optimum of {axis} inside their grid (a law needs {MIN_SHAPES}): no "
                f"law of the best {axis} against {name} is fitted; widen the {axis} grid of "
                "the shapes at its edge or add sizes"))
            continue
        x = np.array([getattr(o, attr) for o in usable])
        laws[name] = fit_power(x, np.array([o.optimum for o in usable]),
                               np.array([o.samples for o in usable]).T, column, level, rng)
    if "N" in laws and laws["N"].p_interval[0] <= 0 <= laws["N"].p_interval[1]:
        notes.append(Diagnostic(
            "info", "hyper_flat",
            f"{where + ': ' if where else ''}the best {axis} does not move measurably with "
            f"size (the interval on its exponent includes 0): one {axis} for every size "
            "describes these runs as well as the law"))
    return HyperLaw(axis, group, optima, laws, notes, level)


def _edge_note(axis: str, o: ShapeOptimum) -> Diagnostic:
    """In plain words: an optimum at the edge of its grid is a bound, not an estimate."""
    side, more = ("largest", "larger") if o.best == max(o.values) else ("smallest", "smaller")
    point = ", ".join(f"{k}={v}" for k, v in o.point.items()) or "all runs"
    return Diagnostic(
        "warning", "hyper_edge",
        f"At {point} the best {axis} is the {side} value of its grid ({o.best:g}): the real "
        f"optimum lies beyond it, so this shape gives a bound, not an estimate, and is left "
        f"out of the {axis} law; add {more} {axis} values for it.")


def fit_power(x: np.ndarray, y: np.ndarray, samples: np.ndarray, against: str,
              level: float, rng: np.random.Generator) -> PowerLaw:
    """log y = log k + p·log x by least squares, and the same refit on every row of
    ``samples`` (resamples × points, each row the points' resampled optima) at once."""
    lx = np.log(x)
    centred = lx - lx.mean()
    ss = float(centred @ centred)
    p = float(centred @ np.log(y)) / ss
    log_k = float(np.log(y).mean() - p * lx.mean())
    residuals = np.log(y) - log_k - p * lx
    dof = max(len(x) - 2, 1)
    scatter = float(np.sqrt(residuals @ residuals / dof))
    if samples.size:
        logs = np.log(samples)
        ps = (logs - logs.mean(axis=1, keepdims=True)) @ centred / ss
        log_ks = logs.mean(axis=1) - ps * lx.mean()
    else:  # no resamples: the point estimate alone
        ps, log_ks = np.array([p]), np.array([log_k])
    noise = rng.choice(residuals * math.sqrt(len(x) / dof), len(ps))
    q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    seeds = float(np.percentile(ps, q[0])), float(np.percentile(ps, q[1]))
    half = stats.t.ppf((1 + level) / 2, dof) * scatter / math.sqrt(ss)
    return PowerLaw(against, float(np.exp(log_k)), p,
                    (float(min(seeds[0], p - half)), float(max(seeds[1], p + half))),
                    scatter, len(x),
                    (float(x.min()), float(x.max())), level, seeds, log_ks, ps, noise,
                    (float(lx.mean()), ss))
