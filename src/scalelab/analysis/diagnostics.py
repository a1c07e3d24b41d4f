"""Fit diagnostics in plain words: is a fitted law a law, and how far can it be trusted?

Every fit shown anywhere (CLI, report, ``scaling_law.json``, API) carries a list of
:class:`Diagnostic` (a severity and one sentence) and a verdict derived from them:
``trustworthy`` (nothing found), ``use with care`` (warnings) or ``not a law`` (errors: the
fitted curve does not describe loss falling with scale). Pure numpy: nothing here fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np


class LawFit(Protocol):
    """What the diagnostics read of a fit (``analysis.fitting.LawFit``, which imports this
    module: named here by its shape, so the imports run one way)."""

    params: dict[str, float]
    theta: np.ndarray
    converged: bool
    grad_norm: float
    at_bound: list[str]
    backtest: Any
    form_choice: Any

    def predict(self, x) -> np.ndarray: ...


class Bootstrap(Protocol):
    """What the diagnostics read of ``analysis.resampling.Bootstrap``."""

    n_resamples: int
    failed: int
    undefined: dict[str, int]
    samples: Any
    intervals: dict[str, tuple[float, float]]
    derived: dict[str, tuple[float, float]]
    level: float

Severity = Literal["error", "warning", "info"]

#: Thresholds the sentences quote; one place so the README and the tests agree.
MAX_CI_RATIO = 10.0          # a CI whose upper end is more than 10x its lower end
MAX_BACKTEST_ERROR = 0.10    # mean |relative error| on held-out points
MAX_EXTRAPOLATION = 10.0     # beyond 10x the largest fitted size (or below 1/10 the smallest)
MAX_FAILED_SHARE = 0.01      # bootstrap failures above 1% are a warning, below it information
#: A measured value within this factor of its threshold (either side) is borderline: the
#: last digits of the runs (another CPU instruction set, torch build or thread count) can
#: move it across, and the verdict with it.
BORDERLINE = 1.2
#: A rise of the mean metric between neighbouring sizes smaller than this (relative) is at
#: the level of last-digit noise.
TINY_RISE = 0.01


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    code: str       # stable identifier, e.g. "exponent_not_positive"
    message: str    # one plain sentence

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "code": self.code, "message": self.message}


def verdict(diagnostics: Sequence[Diagnostic]) -> tuple[str, str]:
    """(label, sentence): ``not a law`` on any error, ``use with care`` on any warning."""
    errors = [d.message for d in diagnostics if d.severity == "error"]
    warnings = [d.message for d in diagnostics if d.severity == "warning"]
    if errors:
        return "not a law", " ".join(errors)
    close = " ".join(d.message for d in diagnostics if d.code == "borderline")
    if warnings:
        return "use with care", " ".join(warnings + ([close] if close else []))
    return "trustworthy", "no diagnostic found a problem" + (f". {close}" if close else "")


def _borderline(what: str, value: float, limit: float, shown: str) -> Diagnostic | None:
    """An information line when ``value`` is within a factor BORDERLINE of ``limit``."""
    if not (limit / BORDERLINE <= value <= limit * BORDERLINE):
        return None
    return Diagnostic("info", "borderline",
                      f"Borderline: {what} is {shown}, close to its limit; the last digits of "
                      "the runs (another CPU, torch build or thread count) can move it across, "
                      "and this verdict with it.")


def _num(value: float) -> str:
    """A size as people write it: 10,000 rather than 1e+04."""
    return f"{int(value):,}" if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4g}"


def is_law(diagnostics: Sequence[Diagnostic]) -> bool:
    return not any(d.severity == "error" for d in diagnostics)


#: A fitted law whose prediction falls by less than this (relative) across the whole range
#: of an input has no power law in that input (its term vanished: A → 0).
MIN_FALL = 1e-3


def _flat_directions(fit: LawFit, X: np.ndarray, names: Sequence[str], y_name: str
                     ) -> list[Diagnostic]:
    """An error for each input along which the fitted law does not fall across the data
    (the others held at their medians): its term vanished, whatever its exponent says."""
    out = []
    middle = np.median(X, axis=0)
    for j, name in enumerate(names):
        lo, hi = middle.copy(), middle.copy()
        lo[j], hi[j] = X[:, j].min(), X[:, j].max()
        if lo[j] == hi[j]:
            continue
        start, end = fit.predict(np.array([lo, hi]))
        if not start - end > MIN_FALL * start:
            out.append(Diagnostic("error", "flat_in_input",
                                  f"The fitted {y_name} falls by {(start - end) / start:.2%} "
                                  f"from {name} = {lo[j]:.3g} to {hi[j]:.3g}: its {name} term "
                                  f"vanished, so it is no power law in {name}."))
    return out


def _exponents(params: dict[str, float]) -> list[str]:
    return [k for k in params if k.lower().startswith(("alpha", "beta"))]


def _axis_of(exponent: str, x_names: Sequence[str]) -> str:
    """Which input an exponent belongs to (alpha/alpha_N: the first, beta/alpha_D: the second)."""
    second = exponent.startswith("beta") or exponent.endswith("_D")
    return x_names[1 if second and len(x_names) > 1 else 0]


def diagnose(fit: LawFit, X: np.ndarray, y: np.ndarray, boot: Bootstrap | None = None,
             x_names: Sequence[str] = (), y_name: str = "loss") -> list[Diagnostic]:
    """Every diagnostic of ``fit`` on its points (X: (n, variables)), with its bootstrap;
    ``x_names`` and ``y_name`` name the axes in the sentences."""
    X = np.asarray(X, dtype=float).reshape(len(y), -1)
    y = np.asarray(y, dtype=float)
    names = list(x_names) or ([f"x{i + 1}" for i in range(X.shape[1])] if X.shape[1] > 1 else ["x"])
    out: list[Diagnostic] = []
    for k in _exponents(fit.params):
        if fit.params[k] <= 0:
            out.append(Diagnostic("error", "exponent_not_positive",
                                  f"{k} = {fit.params[k]:.3g} ≤ 0: {y_name} does not fall with "
                                  f"{_axis_of(k, names)}."))
    out += _flat_directions(fit, X, names, y_name)
    if not fit.converged:
        out.append(Diagnostic("warning", "not_converged",
                              f"The optimiser did not converge (max |gradient| "
                              f"{fit.grad_norm:.2g}): the parameters are not an optimum."))
    for k in fit.at_bound:
        meaning = ("the data do not identify an irreducible loss; the fit behaves as if E = 0"
                   if k == "E" else "the data do not pin it down")
        out.append(Diagnostic("warning", "parameter_at_bound",
                              f"{k} = {fit.params[k]:.3g} sits at the fitter's bound: {meaning}."))
    out += _monotonicity(X, y, names, y_name)
    distinct = len(np.unique(X, axis=0))
    if distinct < len(fit.theta) + 2:
        out.append(Diagnostic("warning", "too_few_points",
                              f"{distinct} distinct points for {len(fit.theta)} parameters (fewer "
                              "than parameters + 2): the fit has almost no freedom to be wrong."))
    bt = fit.backtest
    if bt is None:
        out.append(Diagnostic("info", "no_backtest",
                              "No backtest: too few points to hold any out, so extrapolation "
                              "is untested."))
    else:
        error = bt.mean_abs_relative_error
        if error > MAX_BACKTEST_ERROR:
            out.append(Diagnostic("warning", "backtest_error",
                                  f"Fitted without its largest points, it predicted them with "
                                  f"{error:.0%} mean error (above {MAX_BACKTEST_ERROR:.0%})."))
        close = _borderline("the backtest error", error, MAX_BACKTEST_ERROR,
                            f"{error:.1%} against {MAX_BACKTEST_ERROR:.0%}")
        out += [close] if close else []
        if fit.form_choice:
            tested = [s["form"] for s in fit.form_choice if "rmsle" in s]
            untested = [s["form"] for s in fit.form_choice if "rmsle" not in s]
            sentence = (f"The form was chosen by this backtest among {', '.join(tested)}, so its "
                        "backtest error is optimistic (chosen and scored on the same points)")
            if untested:
                sentence += (f"; {', '.join(untested)} could not be backtested with "
                             f"{bt.train_points} points left to fit")
            out.append(Diagnostic("info", "form_selected", sentence + "."))
    if boot is not None:
        out += _bootstrap_diagnostics(fit, boot)
    return out


def _monotonicity(X: np.ndarray, y: np.ndarray, names: Sequence[str],
                  y_name: str) -> list[Diagnostic]:
    """The mean fitted metric rising between consecutive sizes along a fitted axis (the other
    axes held fixed)."""
    rises, steps, example, largest = 0, 0, "", 0.0
    for axis in range(X.shape[1]):
        others = np.delete(X, axis, axis=1)
        keys = [()] if others.shape[1] == 0 else [tuple(r) for r in np.unique(others, axis=0)]
        for key in keys:
            mask = np.ones(len(y), bool) if not key else np.all(others == key, axis=1)
            xs = np.unique(X[mask, axis])
            means = [float(np.mean(y[mask & (X[:, axis] == v)])) for v in xs]
            for (a, ma), (b, mb) in zip(zip(xs, means), zip(xs[1:], means[1:])):
                steps += 1
                if mb > ma:
                    rises += 1
                    largest = max(largest, (mb - ma) / abs(ma) if ma else math.inf)
                    example = example or (f"{names[axis]} {_num(a)} → {_num(b)}: mean "
                                          f"{y_name} {ma:.4g} → {mb:.4g}")
    if not rises:
        return []
    out = [Diagnostic("warning", "not_monotone",
                      f"Mean {y_name} rises with size at {rises} of {steps} steps between "
                      f"neighbouring sizes (e.g. {example}).")]
    if largest < TINY_RISE:
        out.append(Diagnostic("info", "borderline",
                              f"Borderline: every rise is below {TINY_RISE:.0%} (at most "
                              f"{largest:.2%}); the last digits of the runs (another CPU, torch "
                              "build or thread count) can remove it, and this verdict with it."))
    return out


def _bootstrap_diagnostics(fit: LawFit, boot: Bootstrap) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    total = boot.n_resamples
    if boot.failed:
        share = boot.failed / total
        out.append(Diagnostic(
            "warning" if share > MAX_FAILED_SHARE else "info", "bootstrap_failed",
            f"{boot.failed} of {total} bootstrap refits failed (did not converge or overflowed); "
            f"the intervals use the other {total - boot.failed}."))
    for name, count in boot.undefined.items():
        if count:
            out.append(Diagnostic(
                "warning", "derived_undefined",
                f"{name} is undefined in {count} of {len(boot.samples)} bootstrap resamples "
                "(an exponent ≤ 0 there); its interval covers only the others and is too narrow."))
    intervals = {**boot.intervals, **boot.derived}
    wide = [k for k, iv in intervals.items() if _wide(iv)]
    for k, (lo, hi) in intervals.items():
        if math.isfinite(lo) and math.isfinite(hi) and lo > 0:
            close = _borderline(f"the {int(boot.level * 100)}% interval of {k}", hi / lo,
                                MAX_CI_RATIO, f"{hi / lo:.3g}× wide against {MAX_CI_RATIO:g}×")
            out += [close] if close else []
    if wide:
        out.append(Diagnostic(
            "warning", "wide_interval",
            f"The {int(boot.level * 100)}% interval of {', '.join(wide)} spans more than "
            f"{MAX_CI_RATIO:g}× (or includes 0): the data barely constrain "
            f"{'it' if len(wide) == 1 else 'them'}."))
    return out


def _wide(interval: tuple[float, float]) -> bool:
    lo, hi = interval
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return True
    if lo <= 0 < hi:
        return True
    return lo > 0 and hi / lo > MAX_CI_RATIO


def extrapolation(name: str, value: float, fitted: Sequence[float]) -> Diagnostic | None:
    """A warning when ``value`` lies beyond 10x the largest (or 1/10 the smallest) fitted size."""
    lo, hi = float(np.min(fitted)), float(np.max(fitted))
    if not math.isfinite(value):
        return Diagnostic("error", "undefined", f"{name} is undefined for this fit.")
    if value > MAX_EXTRAPOLATION * hi or value < lo / MAX_EXTRAPOLATION:
        return Diagnostic("warning", "extrapolation",
                          f"{name} = {value:.3g} is more than {MAX_EXTRAPOLATION:g}× outside the "
                          f"fitted range [{lo:.3g}, {hi:.3g}].")
    return None
