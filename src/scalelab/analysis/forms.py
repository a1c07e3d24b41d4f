"""Scaling-law forms: the parametric laws L(x) a fit can take, one registered plug-in each.

Every form is fitted in log space: positive parameters are optimised as logs (A = e^a), the
prediction is computed with logsumexp. Each form supplies an analytic gradient and
*conditionally linear* starting points: with its exponents fixed on a coarse grid, the
remaining coefficients are a (non-negative) least-squares problem, so a few hundred cheap
solves replace thousands of L-BFGS-B runs from a blind initialisation grid (see
:mod:`.fitting` for the objective and the refinement).
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field
from scipy import optimize
from scipy.special import expit

from ..errors import ScalelabError
from ..plugin import Plugin, PluginConfig, instantiate
from ..registry import laws


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


# -------------------------------------------------------------------------------- lookup


def _as_matrix(x, variables: int) -> np.ndarray:
    X = np.asarray(x, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    if X.shape[1] != variables:
        raise ScalelabError(f"this law takes {variables} input variable(s), got {X.shape[1]}")
    return X


def get_form(form: str | LawForm, settings: Mapping[str, Any] | None = None) -> LawForm:
    """The law form ``form`` (a registered name, with ``settings``), or ``form`` itself."""
    if isinstance(form, LawForm):
        return form
    return instantiate(laws, {"name": form, **(settings or {})})


def form_settings(law: LawForm) -> dict[str, Any]:
    """The form's settings as plain data (what :func:`get_form` needs to rebuild it)."""
    return law.config.model_dump(mode="json")


def _name_of(law: LawForm) -> str:
    for name in laws.names():
        if type(law) is laws.get(name):
            return name
    return type(law).__name__
