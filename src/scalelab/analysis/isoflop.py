"""Chinchilla's Approach 2 (IsoFLOP profiles) with its biases named, and the agreement check
between approaches.

At each compute budget a parabola of loss against ln N gives the compute-optimal size N*;
power laws through those minima give N*(C) = G·C^a and D*(C) ∝ C^b. The method is cheap and
stable, but Czech et al. (2026, "Problems with Chinchilla Approach 2") showed its minima are
biased, even without noise, by grid width, by sizes sampled off-centre around the minimum and
by a loss surface whose exponents differ (α ≠ β); variable projection on all the runs
(Approach 3) removes the bias. So every answer here carries diagnostics that say which of
those applies and what to run to fix it, and :func:`agreement` sets approaches side by side.
Pure numpy: nothing here trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ScalelabError
from .diagnostics import Diagnostic, verdict
from .resampling import percentile_interval

#: A budget with fewer distinct sizes has a parabola that cannot show its own lack of fit.
MIN_SIZES = 5
#: A parabola needs three distinct sizes; with fewer there is no minimum at all.
MIN_PARABOLA_SIZES = 3
#: Fewer budgets with a usable minimum cannot show that N* follows a power law of C.
MIN_BUDGETS = 3
#: A planned budget whose sizes span less than this factor can hardly bracket a minimum.
MIN_PLAN_SPAN = 4.0
#: Sizes spanning more than this factor make the parabola a poor stand-in for the profile:
#: on Chinchilla's exponents (α = 0.34, β = 0.28) a centred grid that wide already puts
#: N* about 2% off (1.6% at 16×, 2.6% at 32×; 0.4% at 4×).
MAX_GRID_SPAN = 20.0
#: A minimum within this fraction of the ln-N span of an edge (or beyond it) is off-grid.
EDGE_MARGIN = 0.05
#: A minimum further from the centre of the ln-N grid than this fraction of its half-width
#: is off-centre.
OFF_CENTRE_FRACTION = 0.5
#: A cubic term that moves the minimum by more than this (relative, in N) ...
MAX_CUBIC_SHIFT = 0.02
#: ... and whose coefficient is this many standard errors from 0 marks an asymmetric profile.
CUBIC_T = 3.0
#: Exponents α, β further apart than this make the IsoFLOP profile asymmetric in ln N ...
MAX_ALPHA_BETA_GAP = 0.02
#: ... which is a warning when the bias it implies for N* at the target exceeds this.
MAX_ASYMMETRY_BIAS = 0.01
#: More bootstrap resamples than this share without a minimum is a warning (else info).
MAX_FAILED_SHARE = 0.05
#: Budgets within this relative difference are one budget.
BUDGET_RTOL = 1e-6
#: ln N beyond which a vertex is kept at the limit (math.exp overflows past ~709).
LN_LIMIT = 700.0
#: Diagnostic codes that name a bias of Approach 2 (read by :func:`agreement`).
BIAS_CODES = ("isoflop_off_grid", "isoflop_off_centre", "isoflop_wide_grid", "isoflop_asymmetry")


def _f(value) -> float | None:
    """A JSON-ready float: None for NaN or infinity."""
    value = float(value)
    return value if math.isfinite(value) else None


def _pair(interval) -> list[float | None]:
    return [_f(interval[0]), _f(interval[1])]


def _c(budget: float) -> str:
    return f"{budget:.3g}"


def _n(size: float) -> str:
    return f"{size:,.0f}" if size < 1e6 else f"{size:.3g}"


@dataclass
class Profile:
    """One budget's IsoFLOP profile: its runs, the parabola of loss in ln N (``coeffs``,
    highest power first, as numpy.polyfit gives them) and its minimum with a bootstrap
    interval; ``usable`` says whether the minimum enters the power laws."""

    budget: float
    sizes: np.ndarray
    losses: np.ndarray
    coeffs: tuple[float, ...] | None
    n_opt: float
    n_opt_interval: tuple[float, float]
    loss_opt: float
    diagnostics: list[Diagnostic]
    flops_per_param_example: float = math.nan  # k = C / (N·D), median over the runs
    usable: bool = False
    failed: int = 0  # bootstrap resamples without a minimum
    draws: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # ln N*

    @property
    def d_opt(self) -> float:
        return self.budget / (self.flops_per_param_example * self.n_opt)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": float(self.budget), "sizes": [float(s) for s in self.sizes],
                "losses": [float(v) for v in self.losses],
                "coeffs": None if self.coeffs is None else [float(c) for c in self.coeffs],
                "n_opt": _f(self.n_opt), "n_opt_interval": _pair(self.n_opt_interval),
                "d_opt": _f(self.d_opt), "loss_opt": _f(self.loss_opt),
                "flops_per_param_example": _f(self.flops_per_param_example),
                "usable": self.usable, "failed_resamples": int(self.failed),
                "diagnostics": [d.to_dict() for d in self.diagnostics]}


@dataclass(frozen=True)
class ApproachEstimate:
    """What :func:`agreement` compares of one approach: the exponents of N* ∝ C^a and
    D* ∝ C^b and N* at the target compute, each with an interval, and its diagnostics."""

    name: str
    a: float
    a_interval: tuple[float, float]
    b: float
    b_interval: tuple[float, float]
    n_opt_target: float
    n_opt_target_interval: tuple[float, float]
    diagnostics: Sequence[Diagnostic] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "a": _f(self.a), "a_interval": _pair(self.a_interval),
                "b": _f(self.b), "b_interval": _pair(self.b_interval),
                "n_opt_target": _f(self.n_opt_target),
                "n_opt_target_interval": _pair(self.n_opt_target_interval),
                "diagnostics": [d.to_dict() for d in self.diagnostics]}


class OptimaLaw:
    """What Approaches 1 and 2 share once their optima are fitted as N*(C) = G·C^a: N* at a
    compute, its interval over the bootstrap draws of (a, ln G), the verdict and the row of
    the agreement table. The dataclasses mixing it in hold a, a_interval, b, b_interval, G,
    diagnostics, level, target and draws; ``approach`` names them."""

    approach: ClassVar[str]

    def n_opt_at(self, compute: float) -> float:
        return float(self.G * compute ** self.a)

    def n_opt_interval_at(self, compute: float) -> tuple[float, float]:
        """Percentile interval of N* at ``compute`` over the bootstrap draws of (a, ln G)."""
        ok = np.all(np.isfinite(self.draws), axis=1)
        values = self.draws[ok, 1] + self.draws[ok, 0] * math.log(compute)
        lo, hi = percentile_interval(values, self.level)  # NaN when no draw is finite
        return (math.exp(min(lo, LN_LIMIT)), math.exp(min(hi, LN_LIMIT)))

    @property
    def verdict(self) -> tuple[str, str]:
        return verdict(self.diagnostics)

    def estimate(self, target: float | None = None, name: str | None = None
                 ) -> ApproachEstimate:
        """This fit as one row of the agreement table, N* at ``target`` (default: its own)."""
        target = self.target if target is None else target
        if target is None:
            raise ScalelabError(f"{self.approach}: no target compute to compare N* at; pass "
                                "target")
        return ApproachEstimate(name or self.approach, self.a, self.a_interval, self.b,
                                self.b_interval, self.n_opt_at(target),
                                self.n_opt_interval_at(target), tuple(self.diagnostics))


@dataclass
class Approach2(OptimaLaw):
    """Power laws through the usable minima: N*(C) = G·C^a and D*(C) = H·C^b, with
    percentile intervals that carry each budget's own minimum uncertainty."""

    profiles: list[Profile]
    a: float
    a_interval: tuple[float, float]
    b: float
    b_interval: tuple[float, float]
    G: float
    H: float
    diagnostics: list[Diagnostic]
    level: float = 0.95
    target: float | None = None
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 2)), repr=False)  # a, ln G
    approach: ClassVar[str] = "Approach 2"

    def to_dict(self) -> dict[str, Any]:
        label, sentence = self.verdict
        out = {"a": _f(self.a), "a_interval": _pair(self.a_interval), "b": _f(self.b),
               "b_interval": _pair(self.b_interval), "G": _f(self.G), "H": _f(self.H),
               "level": self.level, "verdict": label, "verdict_reason": sentence,
               "diagnostics": [d.to_dict() for d in self.diagnostics],
               "profiles": [p.to_dict() for p in self.profiles], "target": None,
               "n_opt_target": None, "n_opt_target_interval": [None, None]}
        if self.target is not None:
            out.update(target=float(self.target), n_opt_target=_f(self.n_opt_at(self.target)),
                       n_opt_target_interval=_pair(self.n_opt_interval_at(self.target)))
        return out


# ---------------------------------------------------------------------------- profiles

def _vertex_draws(u: np.ndarray, y: np.ndarray, clusters: np.ndarray, n_resamples: int,
                  rng: np.random.Generator) -> np.ndarray:
    """The parabola's minimum (in u) on each of ``n_resamples`` resamples of the runs, all
    solved together from their weighted normal equations; NaN where a resample has fewer
    than three distinct sizes or its parabola opens downward. Runs with the same cluster
    label are drawn together."""
    labels, cluster = np.unique(clusters, return_inverse=True)
    drawn = rng.integers(0, len(labels), size=(n_resamples, len(labels)))
    counts = np.zeros((n_resamples, len(labels)))
    np.add.at(counts, (np.arange(n_resamples)[:, None], drawn), 1.0)
    W = counts[:, cluster.ravel()]                                   # (resamples, runs)
    V = np.stack([u * u, u, np.ones_like(u)], axis=1)                # (runs, 3)
    M = np.einsum("rn,ni,nj->rij", W, V, V)
    rhs = W @ (V * y[:, None])
    size_of = np.unique(u, return_inverse=True)[1].ravel()
    present = (W @ np.eye(size_of.max() + 1)[size_of]) > 0
    ok = present.sum(axis=1) >= MIN_PARABOLA_SIZES
    M[~ok] = np.eye(3)
    coef = np.linalg.solve(M, rhs[..., None])[..., 0]
    c2, c1 = coef[:, 0], coef[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok & (c2 > 0), -c1 / (2 * c2), np.nan)


def _cubic_shift(u: np.ndarray, y: np.ndarray, vertex: float) -> tuple[float, float]:
    """(shift of the minimum in ln N when a cubic term is added, t-statistic of that term);
    (0, 0) when the cubic has no local minimum or no residual degrees of freedom."""
    V = np.vander(u, 4)
    coef, *_ = np.linalg.lstsq(V, y, rcond=None)
    dof = len(y) - 4
    if dof < 1:
        return 0.0, 0.0
    rss = float(np.sum((y - V @ coef) ** 2))
    cov = rss / dof * np.linalg.pinv(V.T @ V)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = abs(coef[0]) / math.sqrt(cov[0, 0]) if cov[0, 0] > 0 else math.inf
    roots = np.roots([3 * coef[0], 2 * coef[1], coef[2]])
    minima = [r.real for r in roots if abs(r.imag) < 1e-12 and 6 * coef[0] * r.real + 2 * coef[1] > 0]
    if not minima:
        return 0.0, 0.0
    nearest = min(minima, key=lambda r: abs(r - vertex))
    return float(nearest - vertex), float(t)


def _placement(budget: float, x: np.ndarray, vertex: float) -> list[Diagnostic]:
    """Off-grid (error) or off-centre (warning): where the minimum sits among the sizes."""
    lo, hi = float(x.min()), float(x.max())
    span, centre, half = hi - lo, (lo + hi) / 2, (hi - lo) / 2
    n_star, small, large = math.exp(vertex), math.exp(lo), math.exp(hi)
    if vertex <= lo + EDGE_MARGIN * span or vertex >= hi - EDGE_MARGIN * span:
        side, edge = ("small", small) if vertex < centre else ("large", large)
        where = "beyond" if (vertex < lo or vertex > hi) else "at"
        more = f"below {_n(small)}" if side == "small" else f"above {_n(large)}"
        return [Diagnostic("error", "isoflop_off_grid",
                           f"At budget {_c(budget)} the parabola's minimum (N* = {_n(n_star)}) "
                           f"lies {where} the {side} edge of its sizes ({_n(edge)}), so the "
                           "sizes do not bracket it and it is left out of the power laws; add "
                           f"sizes {more} at this budget.")]
    offset = (vertex - centre) / half
    if abs(offset) > OFF_CENTRE_FRACTION:
        side = "smaller" if offset < 0 else "larger"
        return [Diagnostic("warning", "isoflop_off_centre",
                           f"At budget {_c(budget)} the minimum (N* = {_n(n_star)}) sits "
                           f"{abs(offset):.0%} of the way from the centre of the sizes to their "
                           f"{'small' if offset < 0 else 'large'} edge (more than "
                           f"{OFF_CENTRE_FRACTION:.0%}), which biases the parabola; re-centre "
                           f"this budget's sizes on N* ≈ {_n(n_star)} by adding {side} sizes.")]
    return []


def _shape(budget: float, x: np.ndarray, u: np.ndarray, y: np.ndarray,
           vertex: float) -> list[Diagnostic]:
    """Too few sizes, or a grid so wide (or a profile so lopsided) that the parabola is a
    biased stand-in for it."""
    out = []
    distinct = len(np.unique(x))
    if distinct < MIN_SIZES:
        out.append(Diagnostic("warning", "isoflop_few_sizes",
                              f"Budget {_c(budget)} has {distinct} distinct sizes (fewer than "
                              f"{MIN_SIZES}): its parabola cannot show its own lack of fit; "
                              f"train at least {MIN_SIZES} sizes at this budget."))
    span = math.exp(float(x.max() - x.min()))
    shift, t = _cubic_shift(u, y, vertex - float(np.mean(x))) if distinct >= MIN_SIZES else (0, 0)
    lopsided = abs(math.expm1(shift)) > MAX_CUBIC_SHIFT and t > CUBIC_T
    narrow = (f"narrow the sizes to within {math.sqrt(MAX_GRID_SPAN):.2g}× either side of "
              f"N* ≈ {_n(math.exp(vertex))}")
    if span > MAX_GRID_SPAN:
        out.append(Diagnostic("warning", "isoflop_wide_grid",
                              f"Budget {_c(budget)}'s sizes span {span:.3g}× (more than "
                              f"{MAX_GRID_SPAN:g}×): over so wide a range a parabola is a poor "
                              f"stand-in for the loss profile and its minimum is biased; {narrow}."))
    elif lopsided:
        out.append(Diagnostic("warning", "isoflop_wide_grid",
                              f"At budget {_c(budget)} the loss profile is lopsided in ln N: a "
                              f"cubic term moves N* by {math.expm1(shift):+.1%} (more than "
                              f"{MAX_CUBIC_SHIFT:.0%}), so the parabola's minimum is biased; "
                              f"{narrow}."))
    return out


def fit_profile(budget: float, N, D, L, groups=None, *, n_resamples: int = 1000,
                level: float = 0.95, rng: np.random.Generator | None = None) -> Profile:
    """One budget's parabola of loss in ln N (every run weighted equally), its minimum, and
    a bootstrap interval from resampling the runs (``groups``: runs with the same label are
    drawn together, e.g. one size's seeds)."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    order = np.argsort(N, kind="stable")
    N, D, L = N[order], D[order], L[order]
    groups = np.arange(len(N)) if groups is None else np.asarray(groups)[order]
    rng = np.random.default_rng(0) if rng is None else rng
    k = float(np.median(budget / (N * D)))
    x = np.log(N)
    distinct = len(np.unique(x))
    base = dict(budget=budget, sizes=N, losses=L, flops_per_param_example=k)
    if distinct < MIN_PARABOLA_SIZES:
        why = (f"Budget {_c(budget)} has {distinct} distinct size{'s' * (distinct != 1)}: a "
               f"parabola needs {MIN_PARABOLA_SIZES}, so it has no minimum; train at least "
               f"{MIN_SIZES} sizes at this budget.")
        return Profile(coeffs=None, n_opt=math.nan, n_opt_interval=(math.nan, math.nan),
                       loss_opt=math.nan, diagnostics=[Diagnostic("error", "isoflop_no_minimum", why)],
                       **base)
    mean = float(np.mean(x))
    u = x - mean
    c2, c1, c0 = np.polyfit(u, L, 2)
    coeffs = (float(c2), float(c1 - 2 * c2 * mean), float(c2 * mean ** 2 - c1 * mean + c0))
    if not c2 > 0:
        why = (f"At budget {_c(budget)} loss curves downward in ln N (the parabola opens "
               "downward), so it has no minimum: the sizes probably sit on one side of the "
               "optimum or the losses are noise; add sizes on both sides or seeds per size.")
        return Profile(coeffs=coeffs, n_opt=math.nan, n_opt_interval=(math.nan, math.nan),
                       loss_opt=math.nan, diagnostics=[Diagnostic("error", "isoflop_no_minimum", why)],
                       **base)
    # a nearly flat parabola puts its vertex anywhere: kept within float range (it is then
    # far off-grid, which the placement diagnostic says)
    vertex = float(np.clip(mean - c1 / (2 * c2), -LN_LIMIT, LN_LIMIT))
    diags = _placement(budget, x, vertex)
    diags += _shape(budget, x, u, L, vertex)
    draws = (_vertex_draws(u, L, groups, n_resamples, rng) + mean if n_resamples
             else np.empty(0))
    failed = int(np.sum(~np.isfinite(draws)))
    interval = (math.nan, math.nan)
    if n_resamples and failed < n_resamples:
        lo, hi = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)])
        interval = (math.exp(min(lo, LN_LIMIT)), math.exp(min(hi, LN_LIMIT)))
    if failed:
        share = failed / n_resamples
        diags.append(Diagnostic(
            "warning" if share > MAX_FAILED_SHARE else "info", "isoflop_bootstrap_failed",
            f"At budget {_c(budget)}, {failed} of {n_resamples} bootstrap resamples had no "
            "minimum (fewer than 3 sizes drawn, or a downward parabola); the interval uses the "
            "others and is too narrow; add seeds per size."))
    usable = not any(d.code == "isoflop_off_grid" for d in diags)
    return Profile(coeffs=coeffs, n_opt=math.exp(vertex), n_opt_interval=interval,
                   loss_opt=float(c0 - c1 * c1 / (4 * c2)), diagnostics=diags,
                   usable=usable, failed=failed, draws=draws, **base)


# ---------------------------------------------------------------------------- power laws

def _lines(x: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of each row of Y against x, over its finite
    entries; NaN where fewer than two are finite."""
    W = np.isfinite(Y).astype(float)
    Y = np.where(W > 0, Y, 0.0)
    count = W.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        xm = (W * x).sum(axis=1) / count
        ym = (W * Y).sum(axis=1) / count
        dx = (x[None, :] - xm[:, None]) * W
        slope = (dx * (Y - ym[:, None])).sum(axis=1) / (dx * dx).sum(axis=1)
    slope = np.where(count >= 2, slope, np.nan)
    return slope, ym - slope * xm


def _power_laws(usable: list[Profile], level: float) -> dict[str, Any]:
    """a, ln G (N* = G·C^a) and b, ln H (D* = H·C^b) through the usable minima, and their
    bootstrap draws: resample r takes every budget's r-th draw of its own minimum."""
    x = np.log([p.budget for p in usable])
    log_n = np.log([p.n_opt for p in usable])
    log_k = np.log([p.flops_per_param_example for p in usable])
    a, log_g = (float(v[0]) for v in _lines(x, log_n[None, :]))
    b, log_h = (float(v[0]) for v in _lines(x, (x - log_k - log_n)[None, :]))
    sizes = {len(p.draws) for p in usable}
    draws = np.empty((0, 2))
    a_iv = b_iv = (math.nan, math.nan)
    if usable and len(sizes) == 1 and sizes != {0}:
        Y = np.stack([p.draws for p in usable], axis=1)          # (resamples, budgets) ln N*
        a_r, log_g_r = _lines(x, Y)
        b_r, _ = _lines(x, x - log_k - Y)
        draws = np.stack([a_r, log_g_r], axis=1)
        a_iv, b_iv = percentile_interval(a_r, level), percentile_interval(b_r, level)
    return dict(a=a, log_g=log_g, b=b, log_h=log_h, draws=draws, a_interval=a_iv,
                b_interval=b_iv)


def _lift(profiles: list[Profile]) -> list[Diagnostic]:
    """The budgets' diagnostics, one per kind (its most severe sentence, and the other
    budgets it applies to); a budget's error is a warning for the whole (that budget is
    left out)."""
    out = []
    for code in dict.fromkeys(d.code for p in profiles for d in p.diagnostics):
        hits = [(p, d) for p in profiles for d in p.diagnostics if d.code == code]
        hits.sort(key=lambda hit: ("error", "warning", "info").index(hit[1].severity))
        serious = any(d.severity in ("error", "warning") for _, d in hits)
        message = hits[0][1].message
        if len(hits) > 1:
            others = ", ".join(_c(p.budget) for p, _ in hits[1:])
            message += f" Likewise at budget{'s' * (len(hits) > 2)} {others}."
        out.append(Diagnostic("warning" if serious else "info", code, message))
    return out


def _budget_count(usable: list[Profile], total: int) -> list[Diagnostic]:
    m = len(usable)
    if m < 2:
        return [Diagnostic("error", "isoflop_too_few_budgets",
                           f"Only {m} of {total} budgets {'has' if m == 1 else 'have'} a usable "
                           "minimum: no power law of C can be fitted through fewer than 2; fix "
                           "the budgets named above or train more budgets.")]
    if m < MIN_BUDGETS:
        return [Diagnostic("warning", "isoflop_too_few_budgets",
                           f"Only {m} of {total} budgets have a usable minimum (fewer than "
                           f"{MIN_BUDGETS}): a line through {m} points cannot show whether N* "
                           "follows a power law of C; train another budget (e.g. 3× above the "
                           "largest).")]
    return []


def parabola_bias(sizes, n_opt: float, alpha: float, beta: float) -> float:
    """The shift in ln N* a parabola makes on a noise-free IsoFLOP profile of
    L = E + A/N^α + B/D^β (C ∝ N·D) sampled at ``sizes``, whose true minimum is ``n_opt``:
    the profile is A·N*^-α·(e^(-α·u) + (α/β)·e^(β·u)) in u = ln(N/N*), lopsided when α ≠ β."""
    u = np.log(np.asarray(sizes, dtype=float)) - math.log(n_opt)
    c2, c1, _ = np.polyfit(u, np.exp(-alpha * u) + alpha / beta * np.exp(beta * u), 2)
    return float(-c1 / (2 * c2)) if c2 > 0 else math.nan


def _asymmetry(usable: list[Profile], alpha: float | None, beta: float | None,
               target: float | None) -> list[Diagnostic]:
    """Approach 2's bias from α ≠ β (Czech et al. 2026), computed on these very grids."""
    if alpha is None or beta is None or abs(alpha - beta) <= MAX_ALPHA_BETA_GAP or not usable:
        return []
    shifts = []
    for p in usable:  # the true minimum solves fitted = true + bias(true): a few fixed-point steps
        true = p.n_opt
        for _ in range(3):
            true = p.n_opt * math.exp(-parabola_bias(p.sizes, true, alpha, beta))
        shifts.append(parabola_bias(p.sizes, true, alpha, beta))
    x = np.log([p.budget for p in usable])
    where = target if target is not None else max(p.budget for p in usable)
    slope, intercept = (float(v[0]) for v in _lines(x, np.array([shifts])))
    at_target = math.expm1(intercept + slope * math.log(where)) if len(usable) > 1 else math.expm1(shifts[0])
    first = (f"The exponents α = {alpha:.3g} and β = {beta:.3g} differ by {abs(alpha - beta):.2g} "
             f"(more than {MAX_ALPHA_BETA_GAP:g}), so each IsoFLOP profile is lopsided in ln N and "
             f"the parabolas put N* off by {math.expm1(min(shifts)):+.1%} to "
             f"{math.expm1(max(shifts)):+.1%} on these grids (a off by {slope:+.3f}; N* at "
             f"{_c(where)} off by {at_target:+.1%}; Czech et al. 2026)")
    if abs(at_target) > MAX_ASYMMETRY_BIAS:
        return [Diagnostic("warning", "isoflop_asymmetry",
                           first + "; prefer Approach 3 by variable projection, or narrow each "
                           "budget's sizes around its minimum.")]
    return [Diagnostic("info", "isoflop_asymmetry",
                       first + f", within {MAX_ASYMMETRY_BIAS:.0%}: small for these grids.")]


def _check_inputs(N, D, C, L, groups) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(v, dtype=float).ravel() for v in (N, D, C, L)]
    if len({len(v) for v in arrays}) != 1 or (groups is not None and len(groups) != len(arrays[0])):
        raise ScalelabError("Approach 2: N, D, C, L (and groups) must have one entry per run")
    if not all(np.all(np.isfinite(v)) for v in arrays) or any(np.any(v <= 0) for v in arrays[:3]):
        raise ScalelabError("Approach 2: N, D and C must be positive and every loss finite")
    return tuple(arrays)


def budget_groups(C: np.ndarray, rtol: float = BUDGET_RTOL) -> list[np.ndarray]:
    """Row indices of each budget, smallest first: a budget within ``rtol`` above the first
    of its group is that budget."""
    order = np.argsort(C, kind="stable")
    groups, start = [[order[0]]], C[order[0]]
    for i in order[1:]:
        if C[i] > start * (1 + rtol):
            groups.append([])
            start = C[i]
        groups[-1].append(i)
    return [np.array(g) for g in groups]


def fit_approach2(N, D, C, L, groups=None, *, target: float | None = None,
                  alpha: float | None = None, beta: float | None = None,
                  n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Approach2:
    """Chinchilla's Approach 2 on runs of size N, data D (tokens or examples), budget C (the
    IsoFLOP budget each run was designed for) and loss L: a parabola per budget, then power
    laws through the minima that are not off-grid. D* = C/(k·N*) with k = C/(N·D), the
    median over the budget's runs. ``groups`` labels runs resampled together; ``target``
    is the compute N* is quoted at; ``alpha`` and ``beta`` (e.g. from an Approach 3 fit)
    quantify the bias their difference causes."""
    N, D, C, L = _check_inputs(N, D, C, L, groups)
    labels = np.arange(len(N)) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    profiles = [fit_profile(float(np.median(C[rows])), N[rows], D[rows], L[rows], labels[rows],
                            n_resamples=n_resamples, level=level, rng=rng)
                for rows in budget_groups(C)]
    usable = [p for p in profiles if p.usable]
    laws = _power_laws(usable, level) if usable else dict(
        a=math.nan, log_g=math.nan, b=math.nan, log_h=math.nan, draws=np.empty((0, 2)),
        a_interval=(math.nan, math.nan), b_interval=(math.nan, math.nan))
    diagnostics = _lift(profiles) + _budget_count(usable, len(profiles))
    diagnostics += _asymmetry(usable, alpha, beta, target)
    return Approach2(profiles=profiles, a=laws["a"], a_interval=laws["a_interval"], b=laws["b"],
                     b_interval=laws["b_interval"], G=math.exp(laws["log_g"]),
                     H=math.exp(laws["log_h"]), diagnostics=diagnostics, level=level,
                     target=target, draws=laws["draws"])


# ---------------------------------------------------------------------------- planning

def isoflop_plan_warnings(budgets: Mapping[float, Sequence[float]], *, min_sizes: int = MIN_SIZES,
                          min_span: float = MIN_PLAN_SPAN,
                          max_span: float = MAX_GRID_SPAN) -> list[Diagnostic]:
    """Before training (a dry run): budgets whose planned sizes are too few, too narrow to
    bracket a minimum, or so wide the parabola is biased, and too few budgets."""
    out = []
    for budget, sizes in sorted(budgets.items()):
        sizes = np.unique(np.asarray(sizes, dtype=float))
        if len(sizes) and sizes[0] <= 0:
            raise ScalelabError(f"IsoFLOP plan: budget {_c(budget)} has a size ≤ 0")
        if len(sizes) < min_sizes:
            out.append(Diagnostic("warning", "isoflop_few_sizes",
                                  f"Budget {_c(budget)} has {len(sizes)} size"
                                  f"{'s' * (len(sizes) != 1)} (fewer than {min_sizes}): a "
                                  "parabola through so few cannot show its own lack of fit; plan "
                                  f"at least {min_sizes} sizes at this budget."))
        if len(sizes) == 0:
            continue
        span = float(sizes[-1] / sizes[0])
        if span < min_span:
            out.append(Diagnostic("warning", "isoflop_narrow_plan",
                                  f"Budget {_c(budget)}'s sizes span {span:.3g}× ({_n(sizes[0])} to "
                                  f"{_n(sizes[-1])}), less than {min_span:g}×: loss barely curves "
                                  "over so narrow a range and the sizes may not bracket its "
                                  f"minimum; widen them to at least {min_span:g}× around the "
                                  "expected optimum."))
        elif span > max_span:
            out.append(Diagnostic("warning", "isoflop_wide_grid",
                                  f"Budget {_c(budget)}'s sizes span {span:.3g}× (more than "
                                  f"{max_span:g}×): a parabola over so wide a range has a biased "
                                  f"minimum; keep them within {math.sqrt(max_span):.2g}× either "
                                  "side of the expected optimum."))
    if len(budgets) < MIN_BUDGETS:
        out.append(Diagnostic("warning", "isoflop_too_few_budgets",
                              f"{len(budgets)} budget{'s' * (len(budgets) != 1)} planned (fewer "
                              f"than {MIN_BUDGETS}): the power law of N* in C needs at least "
                              f"{MIN_BUDGETS} minima to be checked; plan more budgets."))
    return out


# ---------------------------------------------------------------------------- agreement

#: What each bias diagnostic says as the likely cause of a disagreement ({} is the name).
CAUSES = {"isoflop_off_grid": "{}'s minima at the edge of their sizes",
          "isoflop_off_centre": "{}'s off-centre grid",
          "isoflop_wide_grid": "{}'s wide (or lopsided) grid",
          "isoflop_asymmetry": "{}'s parabola bias from α ≠ β"}
#: Intervals closer than this (relative) count as touching: identical noise-free answers.
OVERLAP_RTOL = 1e-9


@dataclass
class Agreement:
    """Whether approaches agree on a and on N* at the target (every pair's intervals
    overlap), the likely cause if not, and which approach to use and why."""

    verdict: str  # "agree", "disagree" or "not compared"
    reason: str
    recommended: str | None
    why: str
    estimates: list[ApproachEstimate]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "recommended": self.recommended,
                "why": self.why, "estimates": [e.to_dict() for e in self.estimates]}


#: An interval of N* at the target wider than this factor makes agreement uninformative.
WIDE_AGREEMENT = 10.0


def _spans(interval: tuple[float, float]) -> float:
    lo, hi = interval
    return hi / lo if lo > 0 else math.inf


def _overlap(one: tuple[float, float], other: tuple[float, float]) -> bool:
    tol = OVERLAP_RTOL * max(abs(one[1]), abs(other[1]))
    return max(one[0], other[0]) <= min(one[1], other[1]) + tol


def _finite(e: ApproachEstimate) -> bool:
    return all(math.isfinite(v) for v in (e.a, *e.a_interval, e.n_opt_target,
                                          *e.n_opt_target_interval))


def _has_error(e: ApproachEstimate) -> bool:
    return any(d.severity == "error" for d in e.diagnostics)


def _causes(e: ApproachEstimate) -> list[str]:
    found = [CAUSES[d.code].format(e.name) for d in e.diagnostics
             if d.code in CAUSES and d.severity != "info"]
    return list(dict.fromkeys(found + ([f"{e.name} is not a law"] if _has_error(e) else [])))


def _recommend(estimates: list[ApproachEstimate]) -> tuple[str | None, str]:
    """The approach to use: a law before one that is not, one without bias diagnostics
    before one with them, then the narrower interval of N* at the target."""
    laws = [e for e in estimates if _finite(e) and not _has_error(e)]
    if not laws:
        return None, ("No approach gives a law with an N* at the target; fix the runs their "
                      "diagnostics name.")

    def width(e: ApproachEstimate) -> float:
        lo, hi = e.n_opt_target_interval  # zero width: every resample alike, no measure at all
        return hi / lo if lo > 0 and hi > lo else math.inf

    best = min(laws, key=lambda e: (bool(_causes(e)), width(e)))
    others = [e for e in estimates if e is not best]
    broken = [e.name for e in others if _has_error(e) or not _finite(e)]
    biased = [c for e in others for c in _causes(e) if not c.endswith("not a law")]
    if broken and not biased:
        return best.name, (f"{best.name}, because {' and '.join(broken)} "
                           f"{'is' if len(broken) == 1 else 'are'} not a law here.")
    if biased and not _causes(best):
        return best.name, (f"{best.name}: it has no bias diagnostic, while "
                           f"{' and '.join(biased)} bias{'es' * (len(biased) == 1)} the other "
                           "answer.")
    return best.name, (f"{best.name}: no bias diagnostic separates the approaches, and its "
                       "interval of N* at the target is the narrowest.")


def _describe(e: ApproachEstimate) -> str:
    return (f"{e.name}: a = {e.a:.3g} [{e.a_interval[0]:.3g}, {e.a_interval[1]:.3g}], N* = "
            f"{e.n_opt_target:.3g} [{e.n_opt_target_interval[0]:.3g}, "
            f"{e.n_opt_target_interval[1]:.3g}]")


def agreement(estimates: Sequence[ApproachEstimate]) -> Agreement:
    """Do the approaches agree? *agree* when every pair's intervals of a and of N* at the
    target overlap; else *disagree*, with the likely cause taken from the diagnostics of
    the approaches that differ, and in either case the approach to use and why."""
    estimates = list(estimates)
    recommended, why = _recommend(estimates)
    usable = [e for e in estimates if _finite(e)]
    if len(usable) < 2:
        missing = [e.name for e in estimates if not _finite(e)]
        return Agreement("not compared", "Fewer than two approaches give a and N* at the target "
                         f"with intervals{' (not: ' + ', '.join(missing) + ')' if missing else ''}.",
                         recommended, why, estimates)
    apart = []
    for i, one in enumerate(usable):
        for other in usable[i + 1:]:
            what = [name for name, ok in (("a", _overlap(one.a_interval, other.a_interval)),
                                          ("N* at the target", _overlap(
                                              one.n_opt_target_interval,
                                              other.n_opt_target_interval))) if not ok]
            if what:
                apart.append((one, other, what))
    if not apart:
        wide = [e.name for e in usable if _spans(e.n_opt_target_interval) > WIDE_AGREEMENT]
        caution = (f" The agreement says little: {' and '.join(wide)} "
                   f"{'has' if len(wide) == 1 else 'have'} an interval of N* at the target "
                   f"wider than {WIDE_AGREEMENT:g}×, too uncertain to disagree; train more "
                   "seeds or budgets." if wide else "")
        return Agreement("agree", "Every pair's intervals of a and of N* at the target overlap ("
                         + "; ".join(_describe(e) for e in usable) + ")." + caution,
                         recommended, why, estimates)
    one, other, what = apart[0]
    causes = list(dict.fromkeys(c for o, t, _ in apart for e in (o, t) for c in _causes(e)))
    cause = ("likely cause: " + ", ".join(causes) if causes else
             "no diagnostic names a cause: check how each counts FLOPs and whether warm-up and "
             "decay differ between the runs (Porian et al. 2024)")
    return Agreement("disagree", f"{one.name} and {other.name} differ on {' and '.join(what)} "
                     f"({_describe(one)}; {_describe(other)}); {cause}.",
                     recommended, why, estimates)
