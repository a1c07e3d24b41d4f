"""Scaling laws: forms, robust fits, bootstrap intervals, backtests and compute-optimal allocation.

Every form is fitted in log space: positive parameters are optimised as logs (A = e^a), the
prediction is computed with logsumexp, and the objective is the SUM over points of a Huber
loss (delta = 1e-3) of log prediction - log observation — never a mean, which makes the
optimiser stop early. Each form supplies an analytic gradient and *conditionally linear*
starting points: with its exponents fixed on a coarse grid, the remaining coefficients are a
(non-negative) least-squares problem, so a few hundred cheap solves replace thousands of
L-BFGS-B runs from a blind initialisation grid; the best few are then refined with L-BFGS-B.
Fitted values are stored as computed, never rounded.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from scipy import optimize
from scipy.special import expit
from threadpoolctl import threadpool_limits

from ..errors import ScalelabError
from ..plugin import Plugin, PluginConfig, instantiate
from ..registry import laws
from .diagnostics import Diagnostic, diagnose, verdict

Loss = Literal["huber", "mse"]


class LawForm(Plugin, ABC):
    """A parametric law L(x) with positive output, fitted on log L.

    ``params`` are the optimised (raw) parameters; :meth:`natural` maps them to the
    parameters people quote (E, A, alpha, ...). ``variables`` is the number of inputs.
    """

    params: ClassVar[tuple[str, ...]]
    variables: ClassVar[int] = 1
    formula: ClassVar[str] = ""

    @abstractmethod
    def log_predict(self, theta: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log L at each row of X, Jacobian d log L / d theta of shape (n, len(params)))."""

    @abstractmethod
    def starts(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Candidate starting points, shape (k, len(params))."""

    @abstractmethod
    def natural(self, theta: np.ndarray) -> dict[str, float]:
        """The parameters people quote (E, A, alpha, ...)."""

    def log_predict_batch(self, thetas: np.ndarray, X: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`log_predict` for k parameter vectors at once: thetas (k, len(params)) ->
        ((k, n), (k, n, len(params))). A form that overrides it with array code has its
        bootstrap refits run in lockstep (:func:`bootstrap`); this default loops."""
        out = [self.log_predict(t, X) for t in thetas]
        return np.stack([f for f, _ in out]), np.stack([j for _, j in out])

    def bounds(self, X: np.ndarray, y: np.ndarray) -> list[tuple[float | None, float | None]]:
        """Box constraints for L-BFGS-B; only where a parameter is otherwise unidentified."""
        return [(None, None)] * len(self.params)

    def predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        return np.exp(self.log_predict(np.asarray(theta, float), _as_matrix(X, self.variables))[0])


def _softmax_columns(*components: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log sum_k exp(c_k) and the weights exp(c_k - lse), computed stably, per point."""
    top = np.maximum.reduce(components)
    exps = [np.exp(c - top) for c in components]
    total = sum(exps)
    return top + np.log(total), [e / total for e in exps]


def _nnls_starts(design: Callable[[tuple], np.ndarray], y: np.ndarray, exponents: Sequence[tuple],
                 to_theta: Callable[[tuple, np.ndarray], np.ndarray]) -> np.ndarray:
    """For each exponent tuple: non-negative least squares of y on its design matrix."""
    out = []
    for exps in exponents:
        coef, _ = optimize.nnls(design(exps), y)
        out.append(to_theta(exps, np.maximum(coef, 1e-12)))
    return np.array(out)


def _irreducible_bounds(y: np.ndarray) -> tuple[float, float]:
    """log E between 20 e-folds below the smallest loss (E ≈ 0) and the largest loss: without
    the floor, a fit with no irreducible term drifts along log E -> -inf for thousands of steps."""
    return float(np.log(y.min()) - 20), float(np.log(y.max()))


EXPONENTS = np.round(np.arange(0.0, 2.0001, 0.1), 10)  # the coarse grid for every exponent


@laws.register("power")
class Power(LawForm):
    """L = A * x^(-alpha)"""

    params = ("a", "alpha")
    formula = "L = A·x^(−α)"

    def log_predict(self, theta, X):
        lx = np.log(X[:, 0])
        return theta[0] - theta[1] * lx, np.stack([np.ones_like(lx), -lx], axis=1)

    def log_predict_batch(self, thetas, X):
        a, alpha = thetas.T[:, :, None]
        lx = np.log(X[:, 0])
        f = a - alpha * lx
        return f, np.stack([np.ones_like(f), np.broadcast_to(-lx, f.shape)], axis=-1)

    def starts(self, X, y):
        slope, intercept = np.polyfit(np.log(X[:, 0]), np.log(y), 1)
        return np.array([[intercept, -slope]])

    def natural(self, theta):
        return {"A": math.exp(theta[0]), "alpha": float(theta[1])}


@laws.register("power_offset")
class PowerOffset(LawForm):
    """L = E + A * x^(-alpha)  (irreducible loss E)"""

    params = ("e", "a", "alpha")
    formula = "L = E + A·x^(−α)"

    def log_predict(self, theta, X):
        e, a, alpha = theta
        lx = np.log(X[:, 0])
        f, (p_e, p_a) = _softmax_columns(np.full(len(lx), e), a - alpha * lx)
        return f, np.stack([p_e, p_a, -p_a * lx], axis=1)

    def log_predict_batch(self, thetas, X):
        e, a, alpha = thetas.T[:, :, None]
        lx = np.log(X[:, 0])
        power = a - alpha * lx
        f, (p_e, p_a) = _softmax_columns(np.broadcast_to(e, power.shape), power)
        return f, np.stack([p_e, p_a, -p_a * lx], axis=-1)

    def starts(self, X, y):
        x = X[:, 0]
        return _nnls_starts(
            lambda ex: np.stack([np.ones_like(x), x ** -ex[0]], axis=1), y,
            [(alpha,) for alpha in EXPONENTS],
            lambda ex, c: np.array([math.log(c[0]), math.log(c[1]), ex[0]]),
        )

    def bounds(self, X, y):
        return [_irreducible_bounds(y), (None, None), (None, None)]

    def natural(self, theta):
        return {"E": math.exp(theta[0]), "A": math.exp(theta[1]), "alpha": float(theta[2])}


@laws.register("chinchilla")
class Chinchilla(LawForm):
    """L(N, D) = E + A/N^alpha + B/D^beta  (joint in parameters N and data D)"""

    params = ("e", "a", "b", "alpha", "beta")
    variables = 2
    formula = "L = E + A/N^α + B/D^β"

    def log_predict(self, theta, X):
        e, a, b, alpha, beta = theta
        ln, ld = np.log(X[:, 0]), np.log(X[:, 1])
        f, (p_e, p_a, p_b) = _softmax_columns(np.full(len(ln), e), a - alpha * ln, b - beta * ld)
        return f, np.stack([p_e, p_a, p_b, -p_a * ln, -p_b * ld], axis=1)

    def log_predict_batch(self, thetas, X):
        e, a, b, alpha, beta = thetas.T[:, :, None]
        ln, ld = np.log(X[:, 0]), np.log(X[:, 1])
        n_term = a - alpha * ln
        f, (p_e, p_a, p_b) = _softmax_columns(np.broadcast_to(e, n_term.shape), n_term,
                                              b - beta * ld)
        return f, np.stack([p_e, p_a, p_b, -p_a * ln, -p_b * ld], axis=-1)

    def starts(self, X, y):
        N, D = X[:, 0], X[:, 1]
        return _nnls_starts(
            lambda ex: np.stack([np.ones_like(N), N ** -ex[0], D ** -ex[1]], axis=1), y,
            list(itertools.product(EXPONENTS, EXPONENTS)),
            lambda ex, c: np.array([*np.log(c), ex[0], ex[1]]),
        )

    @staticmethod
    def literature_grid() -> np.ndarray:
        """The 4,500-start grid of the Chinchilla replication (alpha, beta, e, a, b)."""
        alphas = betas = np.arange(0, 2.01, 0.5)
        es = np.arange(-1, 1.01, 0.5)
        abs_ = np.arange(0, 25.01, 5)
        return np.array([[e, a, b, al, be] for al, be, e, a, b
                         in itertools.product(alphas, betas, es, abs_, abs_)])

    def bounds(self, X, y):
        return [_irreducible_bounds(y)] + [(None, None)] * 4

    def natural(self, theta):
        e, a, b, alpha, beta = theta
        return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b),
                "alpha": float(alpha), "beta": float(beta)}


@laws.register("kaplan")
class Kaplan(LawForm):
    """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D  (Kaplan et al. 2020)"""

    params = ("log_nc", "log_dc", "alpha_n", "alpha_d")
    variables = 2
    formula = "L = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D"

    def log_predict(self, theta, X):
        nc, dc, an, ad = theta
        ln, ld = np.log(X[:, 0]), np.log(X[:, 1])
        u1, u2 = (an / ad) * (nc - ln), dc - ld
        s = np.logaddexp(u1, u2)
        p1 = np.exp(u1 - s)
        p2 = 1 - p1
        jac = np.stack([p1 * an, ad * p2, p1 * (nc - ln), s - p1 * (an / ad) * (nc - ln)], axis=1)
        return ad * s, jac

    def log_predict_batch(self, thetas, X):
        nc, dc, an, ad = thetas.T[:, :, None]
        ln, ld = np.log(X[:, 0]), np.log(X[:, 1])
        u1, u2 = (an / ad) * (nc - ln), dc - ld
        s = np.logaddexp(u1, u2)
        p1 = np.exp(u1 - s)
        p2 = 1 - p1
        jac = np.stack([p1 * an, ad * p2, p1 * (nc - ln), s - p1 * (an / ad) * (nc - ln)],
                       axis=-1)
        return ad * s, jac

    def starts(self, X, y):
        N, D = X[:, 0], X[:, 1]
        out = []
        # With alpha_D fixed, L^(1/alpha_D) = C1 N^(-r) + C2 / D is linear in (C1, C2).
        for ad in (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0):
            target = y ** (1 / ad)
            for r in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
                coef, _ = optimize.nnls(np.stack([N ** -r, 1 / D], axis=1), target)
                c1, c2 = np.maximum(coef, 1e-12)
                out.append([math.log(c1) / r, math.log(c2), r * ad, ad])
        return np.array(out)

    def natural(self, theta):
        nc, dc, an, ad = theta
        return {"N_c": math.exp(nc), "D_c": math.exp(dc), "alpha_N": float(an),
                "alpha_D": float(ad)}


@laws.register("broken_power")
class BrokenPower(LawForm):
    """L = A x^(-alpha1) (1 + (x/x_b)^(1/s))^(-(alpha2-alpha1) s): slope alpha1, then alpha2"""

    class Config(PluginConfig):
        smoothness: float = Field(0.1, gt=0, description="width of the break in log-x units")

    params = ("a", "alpha1", "alpha2", "log_xb")
    formula = "L = A·x^(−α₁)·(1 + (x/x_b)^(1/s))^(−(α₂−α₁)s)"

    def _softplus(self, lx, log_xb):
        z = (lx - log_xb) / self.config.smoothness
        return np.logaddexp(0, z), expit(z)

    def log_predict(self, theta, X):
        a, a1, a2, lb = theta
        s = self.config.smoothness
        lx = np.log(X[:, 0])
        sp, sig = self._softplus(lx, lb)
        f = a - a1 * lx - (a2 - a1) * s * sp
        jac = np.stack([np.ones_like(lx), -lx + s * sp, -s * sp, (a2 - a1) * sig], axis=1)
        return f, jac

    def log_predict_batch(self, thetas, X):
        a, a1, a2, lb = thetas.T[:, :, None]
        s = self.config.smoothness
        lx = np.log(X[:, 0])
        sp, sig = self._softplus(lx, lb)
        f = a - a1 * lx - (a2 - a1) * s * sp
        jac = np.stack([np.ones_like(f), -lx + s * sp, -s * sp, (a2 - a1) * sig], axis=-1)
        return f, jac

    def starts(self, X, y):
        # With the break fixed, log L is linear in (a, alpha1, alpha2): ordinary least squares.
        lx, ly = np.log(X[:, 0]), np.log(y)
        s = self.config.smoothness
        out = []
        for lb in np.linspace(lx.min(), lx.max(), 12)[1:-1]:
            sp, _ = self._softplus(lx, lb)
            design = np.stack([np.ones_like(lx), -(lx - s * sp), -s * sp], axis=1)
            coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
            out.append([*coef, lb])
        return np.array(out)

    def bounds(self, X, y):
        lx = np.log(X[:, 0])
        return [(None, None)] * 3 + [(float(lx.min()), float(lx.max()))]  # a break inside the data

    def natural(self, theta):
        a, a1, a2, lb = theta
        return {"A": math.exp(a), "alpha1": float(a1), "alpha2": float(a2), "x_b": math.exp(lb)}


# ------------------------------------------------------------------------------- fitting


def _as_matrix(x, variables: int) -> np.ndarray:
    X = np.asarray(x, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    if X.shape[1] != variables:
        raise ScalelabError(f"this law takes {variables} input variable(s), got {X.shape[1]}")
    return X


def objective(theta: np.ndarray, form: LawForm, X: np.ndarray, log_y: np.ndarray,
              weights: np.ndarray, loss: Loss = "huber", delta: float = 1e-3) -> tuple[float, np.ndarray]:
    """SUM over points of weight * loss(log prediction - log y), and its gradient."""
    f, jac = form.log_predict(theta, X)
    r = f - log_y
    if loss == "huber":
        absr = np.abs(r)
        values = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
        slope = np.clip(r, -delta, delta)
    else:
        values, slope = 0.5 * r * r, r
    if not np.all(np.isfinite(values)):
        return math.inf, np.zeros_like(theta)
    return float(np.sum(weights * values)), jac.T @ (weights * slope)


@dataclass
class LawFit:
    """A fitted law. ``theta`` are the optimised parameters, ``params`` the quoted ones;
    ``settings`` the form's own settings (e.g. ``broken_power``'s smoothness), which every
    prediction, bootstrap refit and backtest of this fit uses."""

    form: str
    formula: str
    theta: np.ndarray
    params: dict[str, float]
    objective: float
    converged: bool
    grad_norm: float
    message: str
    n_points: int
    n_starts: int
    loss: str
    delta: float
    settings: dict[str, Any] = field(default_factory=dict)
    at_bound: list[str] = field(default_factory=list)  # quoted parameters pinned at a bound
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    backtest: Backtest | None = None
    selection: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def law(self) -> LawForm:
        return get_form(self.form, self.settings)

    @property
    def verdict(self) -> tuple[str, str]:
        """(``trustworthy`` | ``use with care`` | ``not a law``, the reasons in words)."""
        return verdict(self.diagnostics)

    def predict(self, x) -> np.ndarray:
        return self.law.predict(self.theta, x)

    def to_dict(self) -> dict[str, Any]:
        label, reasons = self.verdict
        return {
            "form": self.form, "settings": self.settings, "formula": self.formula,
            "params": self.params, "theta": self.theta.tolist(),
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "objective": self.objective, "converged": self.converged,
            "grad_norm": self.grad_norm, "message": self.message, "points": self.n_points,
            "starts": self.n_starts, "loss": self.loss, "delta": self.delta,
            "at_bound": self.at_bound,
            "backtest": self.backtest.to_dict() if self.backtest else None,
            "selection": self.selection,
            "verdict": label, "verdict_reasons": reasons,
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }


def get_form(form: str | LawForm, settings: Mapping[str, Any] | None = None) -> LawForm:
    """The law form ``form`` (a registered name, with ``settings``), or ``form`` itself."""
    if isinstance(form, LawForm):
        return form
    return instantiate(laws, {"name": form, **(settings or {})})


def form_settings(law: LawForm) -> dict[str, Any]:
    """The form's settings as plain data (what :func:`get_form` needs to rebuild it)."""
    return law.config.model_dump(mode="json")


def _refine(theta0, form, X, log_y, w, loss, delta, bounds):
    """L-BFGS-B from ``theta0``; when it stops short of a stationary point, a Powell polish
    and a second L-BFGS-B pass. Huber's linear arms make the objective nearly flat along some
    directions, where L-BFGS-B can end its line search far from the optimum (measured: an
    exponent 17% off at an objective within 0.1%, restarts stuck at the same point); the
    derivative-free polish gets there in a few hundred evaluations."""
    lower = [lo if lo is not None else -np.inf for lo, _ in bounds]
    upper = [hi if hi is not None else np.inf for _, hi in bounds]
    theta0 = np.clip(theta0, lower, upper)
    args = (form, X, log_y, w, loss, delta)
    options = {"maxiter": 20_000, "maxfun": 50_000, "ftol": 1e-15, "gtol": 1e-10}
    result = optimize.minimize(objective, theta0, args=args, jac=True, method="L-BFGS-B",
                               bounds=bounds, options=options)
    if _converged(result, len(X), delta)[0] or not np.isfinite(result.fun):
        return result
    polish = optimize.minimize(lambda t: objective(t, *args)[0], result.x, method="Powell",
                               bounds=bounds, options={"xtol": 1e-12, "ftol": 1e-16})
    again = optimize.minimize(objective, np.clip(polish.x, lower, upper), args=args, jac=True,
                              method="L-BFGS-B", bounds=bounds, options=options)
    return again if again.fun <= result.fun else result


def _converged(result, n: int, delta: float) -> tuple[bool, float]:
    """(converged, max |gradient|). Huber's kink makes L-BFGS-B report a failed line search
    at an optimum, so the gradient norm (relative to the objective's scale) is the real test."""
    grad_norm = float(np.max(np.abs(result.jac))) if result.jac is not None else math.inf
    ok = bool(np.isfinite(result.fun) and np.all(np.isfinite(result.x))
              and grad_norm <= _gradient_tolerance(n, delta))
    return ok, grad_norm


def _gradient_tolerance(n: int, delta: float) -> float:
    return 1e-6 * max(1.0, n * delta)


def distinct_points(X: np.ndarray) -> int:
    return len(np.unique(X, axis=0))


def fit_law(
    x,
    y,
    form: str | LawForm = "power",
    *,
    weights=None,
    loss: Loss = "huber",
    delta: float = 1e-3,
    starts: Literal["fast", "grid"] | np.ndarray = "fast",
    refine: int = 8,
) -> LawFit:
    """Fit ``form`` to points (x, y); ``x`` is (n,) or (n, variables), ``y`` positive.

    ``starts="fast"`` refines the ``refine`` best conditionally-linear starts;
    ``starts="grid"`` refines every point of the form's literature grid (slow; for checks).
    ``form="auto"`` chooses among forms of the right arity by backtest error (see
    :func:`select_form`).
    """
    if form == "auto":
        return select_form(x, y, weights=weights, loss=loss, delta=delta)
    law = get_form(form)
    X = _as_matrix(x, law.variables)
    y = np.asarray(y, dtype=float)
    if len(y) != len(X):
        raise ScalelabError(f"x has {len(X)} points but y has {len(y)}")
    if np.any(X <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ScalelabError("scaling-law fits need positive, finite x and y")
    if distinct_points(X) < len(law.params):
        raise ScalelabError(f"form {_name_of(law)} has {len(law.params)} parameters but only "
                            f"{distinct_points(X)} distinct x values were given")
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    log_y = np.log(y)
    if isinstance(starts, np.ndarray):
        candidates, keep = starts, len(starts)
    elif starts == "grid":
        grid = getattr(law, "literature_grid", None)
        candidates = grid() if grid else law.starts(X, y)
        keep = len(candidates)
    else:
        candidates, keep = law.starts(X, y), refine
    bounds = law.bounds(X, y)
    with threadpool_limits(1):  # BLAS threads only oversubscribe fits this small
        values = np.array([objective(t, law, X, log_y, w, loss, delta)[0] for t in candidates])
        best_first = candidates[np.argsort(values)[:keep]]
        best = None
        for theta0 in best_first:
            result = _refine(theta0, law, X, log_y, w, loss, delta, bounds)
            if best is None or result.fun < best.fun:
                best = result
    fit = _make_fit(law, best, len(y), len(best_first), loss, delta, bounds)
    fit.diagnostics = diagnose(fit, X, y)
    return fit


def _make_fit(law: LawForm, result, n: int, n_starts: int, loss: str, delta: float,
              bounds) -> LawFit:
    converged, grad_norm = _converged(result, n, delta)
    names = list(law.natural(result.x))
    at_bound = [names[i] for i, (value, (lo, hi)) in enumerate(zip(result.x, bounds))
                if any(b is not None and abs(value - b) <= 1e-6 * max(1.0, abs(b))
                       for b in (lo, hi))]
    return LawFit(
        form=_name_of(law), formula=law.formula, theta=np.asarray(result.x, dtype=float),
        params=law.natural(result.x), objective=float(result.fun), converged=converged,
        grad_norm=grad_norm, message=str(result.message), n_points=n, n_starts=n_starts,
        loss=loss, delta=delta, settings=form_settings(law), at_bound=at_bound,
    )


def _name_of(law: LawForm) -> str:
    for name in laws.names():
        if type(law) is laws.get(name):
            return name
    return type(law).__name__


# ----------------------------------------------------------------------------- bootstrap


@dataclass
class Bootstrap:
    """Bootstrap distribution of a fit: resampled parameters, predictions and derived values.

    ``failed`` counts resamples whose refit did not converge or overflowed (left out of every
    interval, and shown); ``undefined`` counts, per derived quantity, the resamples where it
    was NaN or infinite (e.g. N_opt with an exponent <= 0 there)."""

    samples: list[dict[str, float]]
    intervals: dict[str, tuple[float, float]]
    prediction_intervals: np.ndarray | None  # (len(predict_at), 2)
    derived: dict[str, tuple[float, float]]
    failed: int
    level: float
    n_resamples: int = 0
    undefined: dict[str, int] = field(default_factory=dict)
    thetas: np.ndarray | None = None  # (used resamples, raw parameters): predictions anywhere

    def to_dict(self) -> dict[str, Any]:
        return {"resamples": self.n_resamples, "used": len(self.samples), "failed": self.failed,
                "level": self.level, "intervals": {k: list(v) for k, v in self.intervals.items()},
                "derived": {k: list(v) for k, v in self.derived.items()},
                "undefined": self.undefined}


#: Resamples x points refitted together by the lockstep L-BFGS: the more resamples per array
#: operation the less numpy's per-call cost counts (measured on 240 points: 2.0 s CPU for
#: 1,000 resamples in one lockstep, 2.9 s in chunks of 64); the cap bounds the memory of the
#: (resamples, points, parameters) Jacobian (about 10 MB for 5 parameters).
LOCKSTEP_CELLS = 1 << 18


def grid_points(X: np.ndarray) -> np.ndarray:
    """Each row's grid point: a label per row, equal for rows with the same x values (the
    seeds of one configuration)."""
    return np.unique(np.asarray(X), axis=0, return_inverse=True)[1].ravel()


def resample_grid_points(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one two-stage cluster-bootstrap resample: as many grid points as there
    are, drawn with replacement, and for each draw as many of that grid point's own rows (its
    seeds) as it has, drawn with replacement from them. A grid point moves as a unit, so the
    lack of fit its seeds share moves with it; redrawing its seeds keeps a robust (Huber) fit
    from sitting still — with two seeds on either side of the law, resampling whole grid
    points alone leaves every refit at the full-data optimum."""
    labels, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")  # rows grouped by grid point
    size = np.bincount(inverse, minlength=len(labels))
    first = np.concatenate([[0], np.cumsum(size)[:-1]])
    drawn = rng.integers(0, len(labels), len(labels))
    # each drawn grid point g contributes size[g] rows, positions first[g] + U{0..size[g]-1}
    owner = np.repeat(drawn, size[drawn])
    return order[first[owner] + (rng.random(len(owner)) * size[owner]).astype(int)]


def bootstrap(
    fit: LawFit,
    x,
    y,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    weights=None,
    groups=None,
    predict_at=None,
    derived: Mapping[str, Callable[[dict[str, float]], float]] | None = None,
) -> Bootstrap:
    """Percentile intervals from refitting on grid points resampled with replacement.

    A cluster bootstrap over grid points (``groups``; default: rows with the same x values,
    i.e. the seeds of one configuration), two-stage (:func:`resample_grid_points`): each
    drawn grid point brings as many rows as it has seeds, drawn from its own. The seeds of
    one grid point share its lack of fit, so resampling them one by one, as independent
    runs, makes the intervals too narrow; drawing whole grid points carries that shared
    error. ``groups=np.arange(len(y))`` resamples rows one by one (the case bootstrap).
    Redrawing the seeds within a grid point counts their noise twice where the law fits
    perfectly (measured on 8 sizes x 3 seeds without lack of fit: intervals 1.5x as wide as
    the case bootstrap's, coverage of nominal 95% 98% where it gave 91%), and is what keeps
    robust (Huber) refits on two seeds per point from all freezing at the full-data optimum.

    Each resample is refitted from the full-data optimum (a warm start), with the same loss
    and the fit's own form settings, on the drawn rows weighted by how often they were
    drawn (the same objective as the rows repeated). A refit that does not converge counts
    as failed. Intervals for every quoted parameter, for predictions at ``predict_at`` and
    for each ``derived`` quantity (a function of the quoted parameters). The intervals are
    stored on ``fit.intervals`` and the fit's diagnostics are recomputed with the bootstrap.

    Forms with array code for many parameter vectors (:meth:`LawForm.log_predict_batch`;
    every built-in form) are refitted in lockstep, LOCKSTEP_CELLS / n resamples at a time,
    by a vectorised L-BFGS (:func:`_refine_batch`); a refit it leaves short of the gradient
    test is redone by :func:`_refine` (L-BFGS-B, Powell polish). Other forms are refitted
    one by one with :func:`_refine`. BLAS is pinned to one thread: the arrays are small, and
    on a shared machine BLAS threads only oversubscribe the cores (measured with one other
    busy process on 2 cores: 20 s unpinned, 10 s pinned, for the one-by-one refits).
    """
    law = fit.law
    X = _as_matrix(x, law.variables)
    y = np.asarray(y, dtype=float)
    n = len(y)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    labels = grid_points(X) if groups is None else np.asarray(groups)
    if len(labels) != n:
        raise ScalelabError(f"groups has {len(labels)} labels for {n} points")
    log_y = np.log(y)
    rng = np.random.default_rng(seed)
    counts = np.empty((n_resamples, n))
    lower = np.empty((n_resamples, len(law.params)))
    upper = np.empty_like(lower)
    for i in range(n_resamples):
        idx = resample_grid_points(labels, rng)
        counts[i] = np.bincount(idx, minlength=n)
        lower[i], upper[i] = np.array([(-np.inf if lo is None else lo, np.inf if hi is None else hi)
                                       for lo, hi in law.bounds(X[idx], y[idx])]).T
    W = counts * w
    thetas, samples, failed = [], [], 0
    lockstep = type(law).log_predict_batch is not LawForm.log_predict_batch
    with threadpool_limits(1):
        results: list = [None] * n_resamples
        size = max(1, LOCKSTEP_CELLS // n)
        for start in range(0, n_resamples, size) if lockstep else ():
            chunk = slice(start, min(start + size, n_resamples))
            results[chunk] = _refine_batch(np.tile(fit.theta, (chunk.stop - start, 1)), law, X,
                                           log_y, W[chunk], fit.loss, fit.delta, lower[chunk],
                                           upper[chunk])
        for i, result in enumerate(results):
            if result is None or not _gradient_ok(result, n, fit.delta):
                rows = counts[i] > 0
                result = _refine(fit.theta, law, X[rows], log_y[rows], W[i, rows], fit.loss,
                                 fit.delta, list(zip(_none_if_inf(lower[i]),
                                                     _none_if_inf(upper[i]))))
            try:  # a resample whose optimum runs off to exp overflow has no usable fit
                natural = law.natural(result.x) if _converged(result, n, fit.delta)[0] \
                    else None
            except OverflowError:
                natural = None
            if natural is None:
                failed += 1
                continue
            thetas.append(result.x)
            samples.append(natural)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(values) -> tuple[float, float]:
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):  # undefined in every resample (e.g. no finite optimum)
            return math.nan, math.nan
        return float(np.percentile(values, lo)), float(np.percentile(values, hi))

    intervals = {k: interval([s[k] for s in samples]) for k in fit.params}
    prediction = None
    if predict_at is not None and thetas:
        P = _as_matrix(predict_at, law.variables)
        preds = np.array([law.predict(t, P) for t in thetas])
        prediction = np.stack([np.percentile(preds, lo, axis=0), np.percentile(preds, hi, axis=0)], 1)
    derived_values = {name: np.array([f(s) for s in samples], dtype=float)
                      for name, f in (derived or {}).items()}
    derived_iv = {name: interval(v) for name, v in derived_values.items()}
    undefined = {name: int(np.sum(~np.isfinite(v))) for name, v in derived_values.items()}
    fit.intervals = intervals
    boot = Bootstrap(samples, intervals, prediction, derived_iv, failed, level, n_resamples,
                     undefined, np.array(thetas))
    fit.diagnostics = diagnose(fit, X, y, boot)
    return boot


def _none_if_inf(values: np.ndarray) -> list[float | None]:
    return [None if np.isinf(v) else float(v) for v in values]


def _gradient_ok(result, n: int, delta: float) -> bool:
    """The test of :func:`_converged`, for deciding whether a lockstep refit needs redoing."""
    return bool(np.isfinite(result.fun) and np.all(np.isfinite(result.x))
                and np.max(np.abs(result.jac)) <= _gradient_tolerance(n, delta))


def _objective_batch(T: np.ndarray, law: LawForm, X: np.ndarray, log_y: np.ndarray,
                     W: np.ndarray, loss: Loss, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`objective` for k parameter vectors, each with its own row weights W (k, n):
    (k,) values (inf where a weighted row's loss is not finite) and (k, P) gradients."""
    with np.errstate(all="ignore"):
        F, J = law.log_predict_batch(T, X)
        r = F - log_y
        if loss == "huber":
            absr = np.abs(r)
            values = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
            slope = np.clip(r, -delta, delta)
        else:
            values, slope = 0.5 * r * r, r
        used = W > 0
        values = np.where(used, values, 0.0)
        f = np.sum(W * values, axis=1)
        g = np.einsum("kn,knp->kp", np.where(used, W * slope, 0.0), J)
    bad = ~(np.isfinite(f) & np.all(np.isfinite(g), axis=1))
    f[bad] = np.inf
    g[bad] = 0.0
    return f, g


def _refine_batch(T0, law, X, log_y, W, loss, delta, lower, upper, memory: int = 10,
                  max_iter: int = 500) -> list[optimize.OptimizeResult]:
    """Minimise :func:`objective` for k weightings of the rows at once, from starts T0
    (k, P) within boxes [lower, upper]: L-BFGS (two-loop recursion, ``memory`` pairs) with
    the step projected on the box and a backtracking Armijo line search (quadratic
    interpolation), every array operation over all k problems still running. A problem
    stops when its projected gradient is 10x inside :func:`_converged`'s tolerance, when
    its objective stops falling (relative change <= 1e-15, as L-BFGS-B's ftol) with the
    gradient inside that tolerance or five steps running, when no step lowers it, or after
    ``max_iter`` iterations; the caller judges the result by its gradient. Returns one
    scipy-style result per problem (x, fun, jac, nit, message)."""
    T = np.clip(np.array(T0, dtype=float), lower, upper)
    k, P = T.shape
    tol = _gradient_tolerance(W.shape[1], delta)
    f, g = _objective_batch(T, law, X, log_y, W, loss, delta)
    # the last ``memory`` steps s and gradient changes y, newest first; rho = 1 / (s . y)
    S, Y = np.zeros((k, memory, P)), np.zeros((k, memory, P))
    rho = np.zeros((k, memory))
    nit, flat_steps = np.zeros(k, int), np.zeros(k, int)
    running = np.isfinite(f)
    message = np.array(["running"] * k, dtype=object)
    message[~running] = "objective not finite at the start"
    for _ in range(max_iter):
        projected = np.abs(T - np.clip(T - g, lower, upper)).max(axis=1)
        done = running & (projected <= 0.1 * tol)
        message[done] = "projected gradient below tolerance"
        running &= ~done
        idx = np.nonzero(running)[0]
        if not len(idx):
            break
        nit[idx] += 1
        # two-loop recursion (empty pairs have rho = 0 and drop out)
        q, s_i, y_i, rho_i = g[idx].copy(), S[idx], Y[idx], rho[idx]
        alphas = []
        for j in range(memory):
            a = rho_i[:, j] * np.einsum("kp,kp->k", s_i[:, j], q)
            q -= a[:, None] * y_i[:, j]
            alphas.append(a)
        yy = np.einsum("kp,kp->k", y_i[:, 0], y_i[:, 0])
        q *= np.where((rho_i[:, 0] > 0) & (yy > 0),
                      1 / np.where(rho_i[:, 0] > 0, rho_i[:, 0], 1.0) / np.where(yy > 0, yy, 1.0),
                      1.0)[:, None]
        for j in reversed(range(memory)):
            b = rho_i[:, j] * np.einsum("kp,kp->k", y_i[:, j], q)
            q += (alphas[j] - b)[:, None] * s_i[:, j]
        d, gi, Ti, fi = -q, g[idx], T[idx], f[idx]
        lo, hi = lower[idx], upper[idx]
        pinned = ((Ti <= lo) & (gi > 0)) | ((Ti >= hi) & (gi < 0))
        d[pinned] = 0.0
        uphill = np.einsum("kp,kp->k", d, gi) >= 0
        d[uphill] = -np.where(pinned[uphill], 0.0, gi[uphill])
        first = rho_i[:, 0] == 0  # no curvature yet: a step of unit length, as L-BFGS-B
        step = np.where(first, 1.0 / np.maximum(np.linalg.norm(d, axis=1), 1e-300), 1.0)
        new_T, new_f, new_g = Ti.copy(), fi.copy(), gi.copy()
        searching = np.ones(len(idx), bool)
        for _ in range(40):
            s_idx = np.nonzero(searching)[0]
            if not len(s_idx):
                break
            trial = np.clip(Ti[s_idx] + step[s_idx, None] * d[s_idx], lo[s_idx], hi[s_idx])
            f_t, g_t = _objective_batch(trial, law, X, log_y, W[idx[s_idx]], loss, delta)
            slope = np.einsum("kp,kp->k", gi[s_idx], trial - Ti[s_idx])
            accept = f_t <= fi[s_idx] + 1e-4 * slope
            ok = s_idx[accept]
            new_T[ok], new_f[ok], new_g[ok] = trial[accept], f_t[accept], g_t[accept]
            searching[ok] = False
            rejected = s_idx[~accept]
            # minimum of the quadratic through f(0), f'(0) and f(step), kept in [0.1, 0.5] step
            curve = f_t[~accept] - fi[rejected] - slope[~accept]
            with np.errstate(all="ignore"):
                shrink = np.where(np.isfinite(curve) & (curve > 0),
                                  -slope[~accept] / (2 * curve), 0.5)
            step[rejected] *= np.clip(shrink, 0.1, 0.5)
        stalled = searching
        s_new, y_new = new_T - Ti, new_g - gi
        sy = np.einsum("kp,kp->k", s_new, y_new)
        keep = ~stalled & (sy > 1e-10 * np.maximum(np.einsum("kp,kp->k", y_new, y_new), 1e-300))
        kept = idx[keep]
        S[kept, 1:], Y[kept, 1:], rho[kept, 1:] = S[kept, :-1], Y[kept, :-1], rho[kept, :-1]
        S[kept, 0], Y[kept, 0], rho[kept, 0] = s_new[keep], y_new[keep], 1 / sy[keep]
        T[idx], f[idx], g[idx] = new_T, new_f, new_g
        flat = ~stalled & (fi - new_f <= 1e-15 * np.maximum(np.maximum(np.abs(fi), np.abs(new_f)),
                                                           1.0))
        flat_steps[idx] = np.where(flat, flat_steps[idx] + 1, 0)
        small = np.abs(new_T - np.clip(new_T - new_g, lo, hi)).max(axis=1) <= tol
        stop = flat & (small | (flat_steps[idx] >= 5))
        message[idx[stalled]] = "no step lowers the objective"
        message[idx[stop]] = "objective stopped falling"
        running[idx[stalled | stop]] = False
    message[running] = "iteration limit"
    return [optimize.OptimizeResult(x=T[i], fun=float(f[i]), jac=g[i], nit=int(nit[i]),
                                    message=str(message[i])) for i in range(k)]


# ------------------------------------------------------------------------------ backtest


@dataclass
class Backtest:
    """Error of a fit made on small scales when predicting the held-out largest points."""

    form: str
    holdout: str
    train_points: int
    held_out: np.ndarray  # boolean mask over the input points
    predicted: np.ndarray
    observed: np.ndarray
    relative_errors: np.ndarray
    rmsle: float

    @property
    def mean_abs_relative_error(self) -> float:
        return float(np.mean(np.abs(self.relative_errors)))

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "holdout": self.holdout, "train_points": self.train_points,
                "held_out_points": int(self.held_out.sum()), "rmsle": self.rmsle,
                "mean_abs_relative_error": self.mean_abs_relative_error,
                "relative_errors": self.relative_errors.tolist()}


DEFAULT_HOLDOUT = 0.2


def holdout_mask(X: np.ndarray, holdout: str | float) -> np.ndarray:
    """Points to hold out, by scale (the product of the variables, ∝ compute for N·D):

    - a fraction 0 < f < 1 (the default, 0.2): the points at the largest f of the distinct
      scales, at least one scale, so continuous sizes never rest on a single point;
    - ``"largest"``: the points at the largest value of the first variable;
    - a factor k > 1: the points whose scale exceeds the largest scale / k.
    """
    X = np.asarray(X, dtype=float).reshape(len(X), -1)
    if holdout == "largest":
        return X[:, 0] == X[:, 0].max()
    k = parse_holdout(holdout)
    scale = np.prod(X, axis=1)
    if isinstance(k, float) and k < 1:
        distinct = np.unique(scale)
        count = max(1, int(k * len(distinct)))
        return scale >= distinct[-count]
    return scale > scale.max() / k


def parse_holdout(holdout: str | float) -> str | float:
    """``"largest"``, a fraction in (0, 1) or a factor > 1; anything else is refused."""
    if holdout == "largest":
        return holdout
    try:
        value = float(holdout)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0 and value != 1):
        raise ScalelabError(f"holdout: expected 'largest', a fraction 0 < f < 1 of the largest "
                            f"sizes, or a factor k > 1; got {holdout!r}")
    return value


def backtest(x, y, form: str | LawForm = "power", holdout: str | float = DEFAULT_HOLDOUT,
             **fit_options) -> Backtest:
    law = get_form(form)
    X = _as_matrix(x, law.variables)
    y = np.asarray(y, dtype=float)
    mask = holdout_mask(X, holdout)
    if mask.all() or not mask.any():
        raise ScalelabError("backtest: the holdout must leave points on both sides")
    if distinct_points(X[~mask]) <= len(law.params):
        raise ScalelabError(
            f"backtest of {_name_of(law)}: {distinct_points(X[~mask])} distinct x values left "
            f"for {len(law.params)} parameters; a backtest needs more points than parameters")
    w = fit_options.pop("weights", None)
    if w is not None:
        fit_options["weights"] = np.asarray(w)[~mask]
    fit = fit_law(X[~mask], y[~mask], law, **fit_options)
    predicted = law.predict(fit.theta, X[mask])
    observed = y[mask]
    rel = (predicted - observed) / observed
    rmsle = float(np.sqrt(np.mean((np.log(predicted) - np.log(observed)) ** 2)))
    return Backtest(_name_of(law), str(holdout), int((~mask).sum()), mask, predicted, observed,
                    rel, rmsle)


def select_form(x, y, candidates: Sequence[str] | None = None,
                holdout: str | float = DEFAULT_HOLDOUT, **fit_options) -> LawFit:
    """Fit every candidate form of the right arity, keep the one with the smallest backtest
    RMSLE (not the best in-sample fit), refit it on all points and attach the comparison."""
    X = np.asarray(x, dtype=float)
    arity = 1 if X.ndim == 1 else X.shape[1]
    names = candidates or [n for n in laws.names() if laws.get(n).variables == arity]
    table, best = [], None
    for name in names:
        law = get_form(name)
        try:
            bt = backtest(X, y, law, holdout, **dict(fit_options))
        except ScalelabError as exc:
            table.append({"form": name, "error": str(exc)})
            continue
        table.append({"form": name, "rmsle": bt.rmsle,
                      "mean_abs_relative_error": bt.mean_abs_relative_error})
        if best is None or bt.rmsle < best[1].rmsle:
            best = (name, bt)
    if best is None:
        raise ScalelabError("form=auto: no candidate form could be backtested on these points")
    fit = fit_law(X, y, best[0], **fit_options)
    fit.backtest, fit.selection = best[1], table
    fit.diagnostics = diagnose(fit, X, y)
    return fit


# ---------------------------------------------------------------------------- allocation


def compute_optimal(params: Mapping[str, float], budgets,
                    flops: Callable[[float, float], float] | None = None,
                    flops_per_param_sample: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """N_opt(C), D_opt(C) minimising E + A/N^alpha + B/D^beta subject to flops(N, D) = C.

    With C = k·N·D (k = ``flops_per_param_sample``: 6 for a transformer's forward and
    backward per token, or the ratio the runs' counted FLOPs show) the optimum is closed-form:
    N_opt = G·(C/k)^(beta/(alpha+beta)), G = (alpha·A / (beta·B))^(1/(alpha+beta)).
    A user FLOPs model (increasing in N and D) is solved numerically.
    """
    A, B, alpha, beta = params["A"], params["B"], params["alpha"], params["beta"]
    C = np.atleast_1d(np.asarray(budgets, dtype=float))
    if alpha <= 0 or beta <= 0:  # loss does not fall with N or D: no finite optimum
        return np.full(len(C), np.nan), np.full(len(C), np.nan)
    if flops is None:
        G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
        k = flops_per_param_sample
        n_opt = G * (C / k) ** (beta / (alpha + beta))
        return n_opt, C / k / n_opt
    n_out, d_out = [], []
    for c in C:
        def d_for(log_n: float, c: float = c) -> float:
            return math.exp(optimize.brentq(
                lambda log_d: math.log(flops(math.exp(log_n), math.exp(log_d))) - math.log(c),
                -50, 100))

        def loss_at(log_n: float, d_for=d_for) -> float:
            return A * math.exp(-alpha * log_n) + B * d_for(log_n) ** -beta

        best = optimize.minimize_scalar(loss_at, bounds=(0.0, math.log(c)), method="bounded",
                                        options={"xatol": 1e-10})
        n_out.append(math.exp(best.x))
        d_out.append(d_for(best.x))
    return np.array(n_out), np.array(d_out)
