"""Chinchilla's Approach 1 (the envelope of learning curves), where the runs allow it.

At each compute C the lowest loss any model size reaches is the envelope; the size that
reaches it is the compute-optimal N*(C), and power laws through those give N*(C) = G·C^a and
D*(C) = C/(k·N*). The method reads loss at many computes, so it needs losses that mean the
same thing at every C: a constant learning rate makes every curve point such a loss, while
an annealing schedule (cosine, linear, wsd, airbench) makes only each run's final, annealed
point one — then a size needs several data amounts to trace its loss against C. When the
runs cannot give that, :func:`fit_approach1` says so in one sentence (:class:`Omitted`)
instead of guessing. Names follow analysis.isoflop (Approach 2), so the approaches sit side by
side in its agreement table. Pure numpy: nothing here trains.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ScalelabError
from .diagnostics import Diagnostic
from .isoflop import ApproachEstimate, OptimaLaw, _f, _pair
from .resampling import percentile_interval

#: Schedules that end annealed: only a run's final point is a loss the envelope may compare.
ANNEALED = ("cosine", "linear", "wsd", "airbench")
#: Schedules whose every curve point is such a loss.
CONSTANT = ("constant",)
#: Fewer sizes on the envelope cannot show whether N* follows a power law of C.
MIN_SIZES = 3
#: Final computes of one size within this relative difference are one data amount.
SAME_COMPUTE_RTOL = 1e-6
#: More bootstrap resamples than this share without a fit is a warning (else info).
MAX_FAILED_SHARE = 0.05
#: More than this share of the envelope's computes won at the edge of the sizes there is a
#: warning: the power law then rests on few computes.
MAX_EDGE_SHARE = 0.5
#: What to run, quoted by the omissions.
REMEDY = ("use schedule: wsd (or constant) and train each size at several data amounts "
          "(several num_train or max_steps per size)")
MORE_DATA = "train each size at several data amounts (several num_train or max_steps per size)"


@dataclass(frozen=True)
class Curve:
    """One run's learning curve: its model size, the counted training FLOPs at each point,
    the loss there (non-finite points are dropped), its schedule, the data seen at each
    point (examples or tokens; for D* = C/(k·N*)) and the label of the runs resampled with
    it (e.g. a seed's; None: alone). Pass only runs that finished their budget: an early
    stop or divergence ends a run before its decay."""

    size: float
    compute: Sequence[float]
    loss: Sequence[float]
    schedule: str
    data: Sequence[float] | None = None
    group: Hashable | None = None


@dataclass(frozen=True)
class EnvelopePoint:
    """The envelope at one compute: its loss, the size that reaches it (``size``), N* there
    (the minimum of a parabola in ln N through it and its neighbours), and ``edge``:
    "smallest" or "largest" when no size with a loss there lies on that side of it, so its
    optimum is not bracketed and the point stays out of the power law."""

    compute: float
    loss: float
    size: float
    n_opt: float
    edge: str | None = None

    @property
    def bracketed(self) -> bool:
        return self.edge is None

    def to_dict(self) -> dict[str, Any]:
        return {"compute": float(self.compute), "loss": _f(self.loss), "size": float(self.size),
                "n_opt": _f(self.n_opt), "bracketed": self.bracketed, "edge": self.edge}


@dataclass(frozen=True)
class Omitted:
    """Approach 1 is not possible on these runs; ``reason`` says why and what to run."""

    reason: str
    name: str = "Approach 1"

    def estimate(self, target: float | None = None, name: str | None = None) -> ApproachEstimate:
        """A row for the agreement table that it leaves out (no a, no N*)."""
        nan2 = (math.nan, math.nan)
        return ApproachEstimate(name or self.name, math.nan, nan2, math.nan, nan2, math.nan,
                                nan2, (Diagnostic("error", "approach1_omitted", self.reason),))

    def to_dict(self) -> dict[str, Any]:
        return {"omitted": True, "reason": self.reason}


@dataclass
class Approach1(OptimaLaw):
    """Power laws through the envelope's N*: N*(C) = G·C^a and D*(C) = H·C^b (b = 1 - a,
    H = 1/(k·G) with k = C/(N·D)), with percentile intervals from resampling the runs."""

    mode: str  # "final points" (annealed schedules) or "every point" (constant)
    schedule: str
    envelope: list[EnvelopePoint]
    a: float
    a_interval: tuple[float, float]
    b: float
    b_interval: tuple[float, float]
    G: float
    H: float
    flops_per_param_example: float
    diagnostics: list[Diagnostic]
    level: float = 0.95
    target: float | None = None
    failed: int = 0  # bootstrap resamples without a fit
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 2)), repr=False)  # a, ln G
    approach: ClassVar[str] = "Approach 1"

    def d_opt_at(self, compute: float) -> float:
        return float(compute / (self.flops_per_param_example * self.n_opt_at(compute)))

    def to_dict(self) -> dict[str, Any]:
        label, sentence = self.verdict
        out = {"omitted": False, "mode": self.mode, "schedule": self.schedule,
               "a": _f(self.a), "a_interval": _pair(self.a_interval), "b": _f(self.b),
               "b_interval": _pair(self.b_interval), "G": _f(self.G), "H": _f(self.H),
               "flops_per_param_example": _f(self.flops_per_param_example),
               "level": self.level, "failed_resamples": int(self.failed), "verdict": label,
               "verdict_reason": sentence, "diagnostics": [d.to_dict() for d in self.diagnostics],
               "envelope": [p.to_dict() for p in self.envelope], "target": None,
               "n_opt_target": None, "n_opt_target_interval": [None, None]}
        if self.target is not None:
            out.update(target=float(self.target), n_opt_target=_f(self.n_opt_at(self.target)),
                       n_opt_target_interval=_pair(self.n_opt_interval_at(self.target)))
        return out


# ---------------------------------------------------------------------------- inputs

@dataclass
class _Runs:
    """The curves as arrays: per run its size index, group index and points (ln C, loss)."""

    sizes: np.ndarray           # distinct sizes, ascending
    size_of: np.ndarray         # (runs,) index into sizes
    group_of: np.ndarray        # (runs,) resampling label index
    points: list[tuple[np.ndarray, np.ndarray]]  # per run: ln C ascending, loss
    k: float                    # C / (N·D)
    on_grid: np.ndarray | None = None  # constant: (runs, grid) each curve on the grid, or NaN

    def interpolate(self, grid: np.ndarray) -> None:
        """Each run's curve at the grid's computes, once (resamples only reweight them)."""
        self.on_grid = np.full((len(self.points), len(grid)), np.nan)
        for r, (x, y) in enumerate(self.points):
            inside = (grid >= x[0]) & (grid <= x[-1]) if len(x) else np.zeros(len(grid), bool)
            self.on_grid[r, inside] = np.interp(grid[inside], x, y)


def _prepare(curves: Sequence[Curve], annealed: bool, flops_per_param: float) -> _Runs:
    """Checked arrays; annealed, only a run's final point counts (none if it is not finite)."""
    points, ratios = [], []
    for i, c in enumerate(curves):
        C, L = (np.asarray(v, dtype=float).ravel() for v in (c.compute, c.loss))
        if len(C) != len(L) or (c.data is not None and len(c.data) != len(C)):
            raise ScalelabError(f"Approach 1: run {i} has unequal numbers of computes, losses "
                                "and data amounts")
        if not (c.size > 0 and np.all(C > 0)):
            raise ScalelabError(f"Approach 1: run {i}'s size and computes must be positive")
        ok = np.isfinite(L)
        if c.data is not None:
            D = np.asarray(c.data, dtype=float).ravel()
            ratios += list((C / (c.size * D))[ok & (D > 0)])
        order = np.argsort(C, kind="stable")
        x, y, ok = np.log(C[order]), L[order], ok[order]
        points.append((x[-1:][ok[-1:]], y[-1:][ok[-1:]]) if annealed else (x[ok], y[ok]))
    sizes, size_of = np.unique([float(c.size) for c in curves], return_inverse=True)
    labels = [("run", i) if c.group is None else ("group", c.group) for i, c in enumerate(curves)]
    group_of = np.unique([repr(g) for g in labels], return_inverse=True)[1]
    k = float(np.median(ratios)) if ratios else float(flops_per_param)
    return _Runs(sizes, size_of.ravel(), group_of.ravel(), points, k)


def _schedule_omission(curves: Sequence[Curve]) -> str | None:
    """Why the runs' schedules cannot give an envelope (None: they can)."""
    if not curves:
        return f"Approach 1 is omitted: there are no finished runs; {REMEDY}."
    schedules = sorted({c.schedule for c in curves})
    if len(schedules) > 1:
        return (f"Approach 1 is omitted: the runs mix schedules ({', '.join(schedules)}), so "
                f"their losses at one compute do not mean the same thing; {REMEDY}.")
    schedule = schedules[0]
    if schedule not in ANNEALED + CONSTANT:
        return (f"Approach 1 is omitted: schedule {schedule!r} neither anneals at each run's end "
                f"nor holds the learning rate constant; {REMEDY}.")
    return None


def _data_omission(runs: _Runs, schedule: str) -> str | None:
    """Why the sizes and data amounts cannot give an envelope (None: they can)."""
    if len(runs.sizes) < MIN_SIZES:
        return (f"Approach 1 is omitted: the runs have {len(runs.sizes)} model size"
                f"{'s' * (len(runs.sizes) != 1)} (it needs {MIN_SIZES} on the envelope); train "
                "more sizes.")
    if schedule in ANNEALED:
        traced = 0
        for s in range(len(runs.sizes)):
            ends = sorted(p[0][-1] for r, p in enumerate(runs.points)
                          if runs.size_of[r] == s and len(p[0]))  # final points only
            traced += int(bool(ends) and ends[-1] - ends[0] > math.log1p(SAME_COMPUTE_RTOL))
        if traced < MIN_SIZES:
            fix = MORE_DATA if schedule == "wsd" else REMEDY
            return (f"Approach 1 is omitted: under schedule: {schedule} only a run's final loss is "
                    f"annealed, and {traced} size{'s' * (traced != 1)} {'has' if traced == 1 else 'have'}"
                    f" final losses at more than one data amount (it needs {MIN_SIZES}); {fix}.")
    return None


# ---------------------------------------------------------------------------- envelope

def _size_losses(runs: _Runs, annealed: bool, grid: np.ndarray, weights: np.ndarray
                 ) -> np.ndarray:
    """(sizes, grid) loss of each size at each ln C of the grid, NaN where it has no loss
    there: annealed, the weighted final points of its drawn runs joined in ln C; constant,
    the weighted mean of its drawn runs' curves, each interpolated in ln C."""
    if not annealed:
        R = runs.on_grid
        W = weights[:, None] * np.isfinite(R)
        P = np.eye(len(runs.sizes))[runs.size_of].T           # (sizes, runs)
        total, weight = P @ (W * np.nan_to_num(R)), P @ W
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(weight > 0, total / weight, np.nan)
    out = np.full((len(runs.sizes), len(grid)), np.nan)
    for s in range(len(runs.sizes)):
        members = [r for r in np.flatnonzero(runs.size_of == s) if weights[r] > 0
                   and len(runs.points[r][0])]
        x = np.array([runs.points[r][0][0] for r in members])  # each run's final point
        y = np.array([runs.points[r][1][0] for r in members])
        if len(x) < 2 or np.ptp(x) <= math.log1p(SAME_COMPUTE_RTOL):
            continue
        xs, where = np.unique(x, return_inverse=True)
        ys = np.bincount(where, weights[members] * y) / np.bincount(where, weights[members])
        inside = (grid >= xs[0]) & (grid <= xs[-1])
        out[s, inside] = np.interp(grid[inside], xs, ys)
    return out


def _envelope(S: np.ndarray, log_n: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per grid column of S (sizes ascending): the envelope's loss, the winning size's
    index, ln N* from the parabola through the winner and its nearest neighbours that have
    a loss there, and whether both neighbours exist (bracketed); columns where fewer than
    two sizes have a loss are not on the envelope (winner -1); ``edge`` names the side
    without a neighbour ("" when bracketed)."""
    finite = np.isfinite(S)
    on = finite.sum(axis=0) >= 2
    winner = np.where(on, np.argmin(np.where(finite, S, np.inf), axis=0), -1)
    idx = np.arange(len(log_n))[:, None]
    below_all = np.where(finite & (idx < winner[None, :]), idx, -1).max(axis=0)
    above_all = np.where(finite & (idx > winner[None, :]), idx, len(log_n)).min(axis=0)
    edge = np.where(~on, "", np.where(below_all < 0, "smallest",
                                      np.where(above_all >= len(log_n), "largest", "")))
    bracketed = on & (edge == "")
    cols = np.arange(S.shape[1])
    w = np.clip(winner, 0, None)
    lo, hi = np.clip(below_all, 0, len(log_n) - 1), np.clip(above_all, 0, len(log_n) - 1)
    x0, x1, x2 = log_n[lo], log_n[w], log_n[hi]
    h0, h2 = x1 - x0, x2 - x1
    u0, u2 = S[lo, cols] - S[w, cols], S[hi, cols] - S[w, cols]  # >= 0: the winner is lowest
    spread = h0 * u2 + h2 * u0
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = x1 + 0.5 * (h2 * h2 * u0 - h0 * h0 * u2) / spread
    vertex = np.where(bracketed & (spread > 0), vertex, x1)
    log_opt = np.where(on, np.clip(vertex, x0, x2), np.nan)
    loss = np.where(on, S[w, cols], np.nan)
    return loss, winner, log_opt, edge


def _grid(runs: _Runs, points_per_decade: int) -> np.ndarray:
    """ln C, log-spaced over the computes the curves span."""
    xs = np.concatenate([p[0] for p in runs.points if len(p[0])])
    count = max(2, int(math.ceil((xs.max() - xs.min()) / math.log(10) * points_per_decade)) + 1)
    return np.linspace(xs.min(), xs.max(), count)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept; NaN when x does not vary."""
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan, math.nan
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def _fit_once(runs: _Runs, annealed: bool, grid: np.ndarray, weights: np.ndarray
              ) -> tuple[float, float]:
    """(a, ln G) through the bracketed envelope points of one draw of the runs."""
    S = _size_losses(runs, annealed, grid, weights)
    _, winner, log_opt, edge = _envelope(S, np.log(runs.sizes))
    bracketed = (winner >= 0) & (edge == "")
    if len(np.unique(winner[bracketed])) < 2:
        return math.nan, math.nan
    return _line(grid[bracketed], log_opt[bracketed])


def _bootstrap(runs: _Runs, annealed: bool, grid: np.ndarray, n_resamples: int,
               rng: np.random.Generator) -> np.ndarray:
    """(a, ln G) on each resample of the runs (a group's runs drawn together); NaN where a
    resample's envelope has fewer than two bracketed sizes."""
    groups = int(runs.group_of.max()) + 1
    draws = np.full((n_resamples, 2), np.nan)
    for i in range(n_resamples):
        counts = np.bincount(rng.integers(0, groups, size=groups), minlength=groups)
        draws[i] = _fit_once(runs, annealed, grid, counts[runs.group_of].astype(float))
    return draws


def _diagnose(points: list[EnvelopePoint], failed: int, n_resamples: int) -> list[Diagnostic]:
    """Envelope computes left out because their winner sat at the edge of the sizes there,
    a power law resting on few winning sizes, and failed resamples."""
    out = []
    edge = [p for p in points if not p.bracketed]
    if edge:
        small = [p for p in edge if p.edge == "smallest"]
        large = [p for p in edge if p.edge == "largest"]
        parts = [f"{len(small)} it is the smallest size with a loss there (train smaller sizes, "
                 f"or the smaller ones longer, up to compute {max(p.compute for p in small):.3g})"
                 ] if small else []
        parts += [f"{len(large)} the largest (train larger sizes, or the larger ones shorter, "
                  f"from compute {min(p.compute for p in large):.3g})"] if large else []
        out.append(Diagnostic(
            "warning" if len(edge) > MAX_EDGE_SHARE * len(points) else "info", "envelope_edge",
            f"At {len(edge)} of {len(points)} computes on the envelope its size is not bracketed "
            f"by sizes on both sides, so the optimum may lie beyond it and those computes are "
            f"left out of the power law: at {' and at '.join(parts)}."))
    winners = {p.size for p in points if p.bracketed}
    if len(winners) < MIN_SIZES:
        out.append(Diagnostic("warning", "envelope_few_sizes",
                              f"N*(C) rests on {len(winners)} bracketed sizes on the envelope (fewer "
                              f"than {MIN_SIZES}), so a few sizes' losses set its slope; train "
                              "sizes between and beyond them."))
    if failed:
        out.append(Diagnostic(
            "warning" if failed > MAX_FAILED_SHARE * n_resamples else "info",
            "envelope_bootstrap_failed",
            f"{failed} of {n_resamples} bootstrap resamples had fewer than two bracketed sizes "
            "on the envelope; the interval uses the others and is too narrow; add seeds or "
            "sizes."))
    return out


def fit_approach1(curves: Sequence[Curve], *, target: float | None = None,
                  flops_per_param: float = 6.0, points_per_decade: int = 8,
                  n_resamples: int = 1000, level: float = 0.95,
                  seed: int = 0) -> Approach1 | Omitted:
    """Chinchilla's Approach 1 on learning curves, or :class:`Omitted` with the reason.

    Annealed schedules (cosine, linear, wsd, airbench): each run's final point, joined per
    size in ln C across its data amounts; constant: every point, a size's runs averaged.
    The envelope is read on ``points_per_decade`` log-spaced computes; N* at each is the
    vertex of a parabola in ln N through the lowest size and its neighbours (a plain argmin
    would make N*(C) a staircase of the grid's sizes). k = C/(N·D) is the median over points
    with data, else ``flops_per_param`` (6: a dense transformer per token). Intervals: runs
    resampled (by ``group``), ``n_resamples`` times.
    """
    why = _schedule_omission(curves)
    if why:
        return Omitted(why)
    schedule = curves[0].schedule
    annealed = schedule in ANNEALED
    runs = _prepare(curves, annealed, flops_per_param)
    why = _data_omission(runs, schedule)
    if why:
        return Omitted(why)
    grid = _grid(runs, points_per_decade)
    if not annealed:
        runs.interpolate(grid)
    S = _size_losses(runs, annealed, grid, np.ones(len(curves)))
    loss, winner, log_opt, edge = _envelope(S, np.log(runs.sizes))
    on = winner >= 0
    winners = len(np.unique(winner[on]))
    if winners < MIN_SIZES:
        return Omitted(f"Approach 1 is omitted: {winners} size{'s' * (winners != 1)} "
                       f"{'reaches' if winners == 1 else 'reach'} the lowest loss at some "
                       f"compute (it needs {MIN_SIZES}), so the envelope cannot trace N*(C); "
                       "train sizes on both sides of those, at data amounts that make the "
                       "sizes' computes overlap.")
    a, log_g = _fit_once(runs, annealed, grid, np.ones(len(curves)))
    if not math.isfinite(a):
        return Omitted("Approach 1 is omitted: fewer than two sizes on the envelope have sizes "
                       "on both sides of them at the same compute, so N*(C) has no slope; train "
                       "sizes on both sides of the envelope's, at data amounts that make their "
                       "computes overlap.")
    draws = _bootstrap(runs, annealed, grid, n_resamples, np.random.default_rng(seed))
    failed = int(np.sum(~np.all(np.isfinite(draws), axis=1)))
    points = [EnvelopePoint(float(math.exp(grid[j])), float(loss[j]),
                            float(runs.sizes[winner[j]]), float(math.exp(log_opt[j])),
                            str(edge[j]) or None) for j in np.flatnonzero(on)]
    a_iv = percentile_interval(draws[:, 0], level)
    return Approach1(
        mode="final points" if annealed else "every point", schedule=schedule,
        envelope=points, a=a, a_interval=a_iv, b=1 - a, b_interval=(1 - a_iv[1], 1 - a_iv[0]),
        G=math.exp(log_g), H=math.exp(-log_g) / runs.k, flops_per_param_example=runs.k,
        diagnostics=_diagnose(points, failed, n_resamples), level=level,
        target=target, failed=failed, draws=draws)
