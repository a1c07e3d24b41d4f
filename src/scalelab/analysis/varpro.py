"""Approach 3 by variable projection: L = E + A/N^α + B/D^β with (E, A, B) solved exactly.

For fixed exponents (α, β) the law is linear in (E, A, B), so the fit is a search over two
numbers only: every point of a fine (α, β) grid gets its exact non-negative least-squares
solve, and Newton on the projected objective refines the best one (Golub & Pereyra's
variable projection; Czech et al. 2026 use it to remove Approach 2's biases). No starting
(E, A, B) is guessed, and E = 0 or A = 0 is an answer the solve returns exactly instead of
a log-parameter drifting towards -inf.

Objective: the SUM over points of ((prediction - L) / L)^2 — least squares in L, each point
weighted by 1/L^2. Least squares in L is what keeps the inner problem linear (on log L it
would not be); the 1/L^2 weight makes each residual relative, which to first order is the
log-residual the Huber fit (:mod:`.fitting`) sums, so both fits weigh points alike and
multiplicative noise counts the same at every scale. Squares, not Huber: a Huber inner
problem would need iterations, and the exact solve is the point of the method.

The bootstrap solves all resamples together: for one (α, β) the normal equations of a
resample are count-weighted sums over points, so a whole grid for every resample is a few
matrix products ``counts @ features``; each resample's best grid point is then refined by
the same Newton iteration, all resamples in lockstep.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import ScalelabError
from .diagnostics import diagnose
from .fitting import LawFit, distinct_points
from .forms import Chinchilla, _as_matrix, form_settings
from .resampling import Bootstrap, grid_points, resample_grid_points, summarize_resamples

#: The default exponent grid of a single fit (step 0.01). α = 0 is left out: there N^-α is
#: the constant E already is, and (E, A) are not identified.
EXPONENT_GRID = np.round(np.arange(0.01, 2.0001, 0.01), 10)
#: The bootstrap searches every THIN-th point of the fit's grid (plus its last): Newton
#: reaches a resample's optimum from a 0.05 cell as from a 0.01 one, and the grid search is
#: the bootstrap's largest cost (measured on benchmarks/fit.py's 240 points, 2 x 1,000
#: resamples: every parameter the same to 1e-7 as with the whole grid, 12x faster).
THIN = 5
#: A zero coefficient is stored (in theta) at its term's value 20 e-folds below the smallest
#: loss at the smallest size, the floor :mod:`.fitting` puts under log E: finite, JSON-safe,
#: and named in ``at_bound``.
FLOOR_EFOLDS = 20.0
MAX_NEWTON = 60
#: Newton stops when the projected gradient of the objective, relative to the summed
#: weights, is below this; a fit counts as converged below GRAD_TOL.
STOP_TOL, GRAD_TOL = 1e-13, 1e-8
STEP_TOL = 1e-10  # or when a Newton step moves no exponent by more than this

_SUBSETS = [(0, 1, 2), (0, 1), (0, 2), (1, 2), (0,), (1,), (2,)]


def _nnls3(S: tuple, b: tuple, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact non-negative least squares in 3 unknowns from its normal equations, elementwise
    over any batch shape: S = (s00, s01, s02, s11, s12, s22), b = (b0, b1, b2), yy = y'Wy.
    Returns (coefficients (..., 3), objective). NNLS is convex, so its optimum is the plain
    least-squares solution on its own support: the best feasible of the 7 restricted solves
    (the empty support, 0, starts as the incumbent)."""
    s00, s01, s02, s11, s12, s22 = S
    with np.errstate(all="ignore"):
        d = [1 / np.sqrt(s00), 1 / np.sqrt(s11), 1 / np.sqrt(s22)]  # Jacobi scaling: unit diagonal
        rho = {(0, 1): s01 * d[0] * d[1], (0, 2): s02 * d[0] * d[2], (1, 2): s12 * d[1] * d[2]}
        bs = [b[i] * d[i] for i in range(3)]
        best = np.broadcast_to(yy, np.broadcast(s01, s02, s12, *b).shape).astype(float)
        coef = [np.zeros_like(best) for _ in range(3)]
        margin = 1e-13 * np.abs(best)  # on a tie, the larger support (tried first) stays
        for subset in _SUBSETS:
            c = _restricted_solve(subset, rho, bs)
            value = yy - sum(c[i] * bs[i] for i in subset)
            ok = np.isfinite(value) & (value < best - margin)
            for i in subset:
                ok &= c[i] >= 0
            best = np.where(ok, value, best)
            for i in range(3):
                coef[i] = np.where(ok, c.get(i, 0.0) * d[i], coef[i])
    return np.stack(coef, axis=-1), best


def _restricted_solve(subset: tuple, rho: dict, bs: list) -> dict[int, np.ndarray]:
    """Scaled least-squares coefficients on ``subset`` (unit-diagonal normal equations)."""
    if len(subset) == 1:
        return {subset[0]: bs[subset[0]]}
    if len(subset) == 2:
        i, j = subset
        r = rho[(i, j)]
        det = 1 - r * r
        det = np.where(det > 1e-13, det, np.nan)  # collinear: no unique solution, skip it
        return {i: (bs[i] - r * bs[j]) / det, j: (bs[j] - r * bs[i]) / det}
    p, q, t = rho[(0, 1)], rho[(0, 2)], rho[(1, 2)]
    det = 1 + 2 * p * q * t - p * p - q * q - t * t
    det = np.where(det > 1e-13, det, np.nan)
    b0, b1, b2 = bs
    return {0: ((1 - t * t) * b0 + (q * t - p) * b1 + (p * t - q) * b2) / det,
            1: ((q * t - p) * b0 + (1 - q * q) * b1 + (p * q - t) * b2) / det,
            2: ((p * t - q) * b0 + (p * q - t) * b1 + (1 - p * p) * b2) / det}


def _grid_search(Wt: np.ndarray, lnN: np.ndarray, lnD: np.ndarray, y: np.ndarray,
                 alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Each weighting's (row of Wt) best (α, β) on the grid, shape (R, 2). The sums of the
    normal equations are products Wt @ features; the α x β cross sums are taken a block of
    α values at a time, so the arrays stay cache-sized."""
    U, V = np.exp(-np.outer(alphas, lnN)), np.exp(-np.outer(betas, lnD))
    s00, sy, yy = (Wt @ np.stack([np.ones_like(y), y, y * y], axis=1)).T
    su, suu, syu = Wt @ U.T, Wt @ (U * U).T, Wt @ (U * y).T  # (R, Na)
    sv, svv, syv = Wt @ V.T, Wt @ (V * V).T, Wt @ (V * y).T  # (R, Nb)
    R, Nb = len(Wt), len(betas)
    best = np.full(R, np.inf)
    where = np.zeros((R, 2), dtype=int)
    block = max(1, 65536 // (R * Nb))
    col = (slice(None), None)
    for start in range(0, len(alphas), block):
        a = slice(start, start + block)
        rows = (Wt[:, None, :] * U[None, a, :]).reshape(-1, len(y))
        cross = (rows @ V.T).reshape(R, -1, Nb)  # (R, block, Nb): one 2-d product
        S = (s00[col + (None,)], su[:, a, None], sv[:, None, :], suu[:, a, None], cross,
             svv[:, None, :])
        b = (sy[col + (None,)], syu[:, a, None], syv[:, None, :])
        _, value = _nnls3(S, b, yy[col + (None,)])
        flat = value.reshape(R, -1)
        k = np.argmin(flat, axis=1)
        low = flat[np.arange(R), k]
        better = low < best
        best = np.where(better, low, best)
        where[better] = np.stack([start + k // Nb, k % Nb], axis=1)[better]
    return np.stack([alphas[where[:, 0]], betas[where[:, 1]]], axis=1)


@dataclass
class _Point:
    """The projected problem at exponents theta (R, 2): features, exact coefficients c,
    residuals r and objective f, per weighting."""

    theta: np.ndarray
    u: np.ndarray
    v: np.ndarray
    c: np.ndarray
    r: np.ndarray
    f: np.ndarray


def _project(Wt, lnN, lnD, y, theta) -> _Point:
    """Solve (E, A, B) exactly at each row's exponents; the objective from the residuals
    themselves (not y'Wy - c'b, which cancels to noise on an exact fit)."""
    u, v = np.exp(-theta[:, :1] * lnN), np.exp(-theta[:, 1:] * lnD)
    wu, wv, wy = Wt * u, Wt * v, Wt * y
    S = (Wt.sum(1), wu.sum(1), wv.sum(1), (wu * u).sum(1), (wu * v).sum(1), (wv * v).sum(1))
    c, _ = _nnls3(S, (wy.sum(1), (wy * u).sum(1), (wy * v).sum(1)), (wy * y).sum(1))
    r = c[:, :1] + c[:, 1:2] * u + c[:, 2:] * v - y
    return _Point(theta, u, v, c, r, (Wt * r * r).sum(1))


def _derivatives(Wt, lnN, lnD, p: _Point) -> tuple[np.ndarray, np.ndarray]:
    """(gradient, Hessian) of the projected objective in (α, β). The gradient is the full
    objective's (the coefficients are optimal); the Hessian is the Schur complement of the
    full 5x5 Hessian (second-order terms included) on the free coefficients, exact while the
    set of zero coefficients does not change."""
    A, B = p.c[:, 1:2], p.c[:, 2:]
    ju, jv = -A * lnN * p.u, -B * lnD * p.v
    J = np.stack([np.ones_like(p.u), p.u, p.v, ju, jv], axis=-1)  # (R, n, 5)
    wr = Wt * p.r
    H = 2 * np.matmul((Wt[..., None] * J).transpose(0, 2, 1), J)
    grad = 2 * np.einsum("rn,rnp->rp", wr, J[..., 3:])
    for (i, j), term in {(1, 3): -lnN * p.u, (3, 3): A * lnN ** 2 * p.u,
                         (2, 4): -lnD * p.v, (4, 4): B * lnD ** 2 * p.v}.items():
        h = 2 * (wr * term).sum(1)
        H[:, i, j] += h
        if i != j:
            H[:, j, i] += h
    free = p.c > 0
    M = np.where(free[:, :, None] & free[:, None, :], H[:, :3, :3], 0.0)
    M[:, np.arange(3), np.arange(3)] = np.where(free, H[:, np.arange(3), np.arange(3)], 1.0)
    C = np.where(free[:, :, None], H[:, :3, 3:], 0.0)
    scale = 1 / np.sqrt(np.abs(M[:, np.arange(3), np.arange(3)]))
    Ms = M * scale[:, :, None] * scale[:, None, :]
    with np.errstate(all="ignore"):
        X = np.linalg.solve(Ms + 1e-14 * np.eye(3), C * scale[:, :, None]) * scale[:, :, None]
    return grad, H[:, 3:, 3:] - np.matmul(C.transpose(0, 2, 1), X)


def _newton_direction(g, H, theta, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """(Newton step, projected gradient) in (α, β) for R problems: an exponent at its bound
    with the gradient pushing outward stays put; an indefinite or flat Hessian is shifted
    to positive definite (a zero coefficient leaves its exponent with no curvature)."""
    held = ((theta <= lo) & (g > 0)) | ((theta >= hi) & (g < 0))
    g = np.where(held, 0.0, g)
    h11, h22 = np.where(held[:, 0], 1.0, H[:, 0, 0]), np.where(held[:, 1], 1.0, H[:, 1, 1])
    h12 = np.where(held.any(1), 0.0, H[:, 0, 1])
    half_gap = np.sqrt(((h11 - h22) / 2) ** 2 + h12 ** 2)
    low, top = (h11 + h22) / 2 - half_gap, (h11 + h22) / 2 + half_gap
    shift = np.where(low <= 1e-10 * np.abs(top), 1e-10 * np.abs(top) - low + 1e-300, 0.0)
    h11, h22 = h11 + shift, h22 + shift
    det = h11 * h22 - h12 * h12
    with np.errstate(divide="ignore", invalid="ignore"):
        step = -np.stack([h22 * g[:, 0] - h12 * g[:, 1], h11 * g[:, 1] - h12 * g[:, 0]],
                         1) / det[:, None]
    flat = ~np.all(np.isfinite(step), axis=1)  # no curvature at all: a gradient step instead
    step[flat] = -g[flat]
    step *= np.minimum(1.0, 0.25 / np.maximum(np.abs(step).max(1), 1e-300))[:, None]  # trust
    return np.where(held, 0.0, step), g


def _refine(Wt, lnN, lnD, y, theta0, lo, hi) -> tuple[_Point, np.ndarray, np.ndarray]:
    """Newton on the projected objective for every row of Wt at once, from theta0 (R, 2),
    within the box [lo, hi], with a backtracking (Armijo) line search. Returns the final
    point, the projected gradient relative to each row's summed weights, and iterations."""
    R, scale = len(Wt), Wt.sum(1)
    p = _project(Wt, lnN, lnD, y, np.clip(theta0, lo, hi))
    rel_grad, nit = np.full(R, np.inf), np.zeros(R, int)
    running = np.ones(R, bool)
    for _ in range(MAX_NEWTON):
        idx = np.nonzero(running)[0]
        if not len(idx):
            break
        sub = _Point(*(getattr(p, k)[idx] for k in ("theta", "u", "v", "c", "r", "f")))
        g, H = _derivatives(Wt[idx], lnN, lnD, sub)
        step, pg = _newton_direction(g, H, sub.theta, lo, hi)
        rel_grad[idx] = np.abs(pg).max(1) / scale[idx]
        nit[idx] += 1
        before = sub.theta.copy()
        moved = _line_search(Wt[idx], lnN, lnD, y, sub, step, pg, lo, hi)
        # at the rounding floor the gradient stays ~1e-12 and Newton steps ~1e-12 oscillate
        tiny = np.abs(sub.theta - before).max(1) <= STEP_TOL
        stop = (rel_grad[idx] <= STOP_TOL) | ~moved | tiny
        for k in ("theta", "u", "v", "c", "r", "f"):
            getattr(p, k)[idx] = getattr(sub, k)
        running[idx[stop]] = False
    g, H = _derivatives(Wt, lnN, lnD, p)
    rel_grad = np.abs(_newton_direction(g, H, p.theta, lo, hi)[1]).max(1) / scale
    return p, rel_grad, nit


def _line_search(Wt, lnN, lnD, y, p: _Point, step, g, lo, hi, halvings: int = 40) -> np.ndarray:
    """Backtrack each row's step until the objective falls (Armijo); updates ``p`` in place
    where it does and returns which rows moved."""
    t = np.ones(len(Wt))
    moved = np.zeros(len(Wt), bool)
    pending = np.nonzero(np.abs(step).max(1) > 0)[0]
    for _ in range(halvings):
        if not len(pending):
            break
        theta = np.clip(p.theta[pending] + t[pending, None] * step[pending], lo, hi)
        trial = _project(Wt[pending], lnN, lnD, y, theta)
        drop = np.einsum("rp,rp->r", g[pending], theta - p.theta[pending])
        ok = np.isfinite(trial.f) & (trial.f <= p.f[pending] + 1e-4 * drop) \
            & (np.abs(theta - p.theta[pending]).max(1) > 0)
        done = pending[ok]
        for k in ("theta", "u", "v", "c", "r", "f"):
            getattr(p, k)[done] = getattr(trial, k)[ok]
        moved[done] = True
        pending = pending[~ok]
        t[pending] /= 2
    return moved


def _theta(p: _Point, y_min, lnN_min, lnD_min) -> np.ndarray:
    """Chinchilla's raw parameters (log E, log A, log B, α, β) per row; a zero coefficient
    sits at its floor (see FLOOR_EFOLDS). The minima are per row or shared."""
    floor = np.log(y_min) - FLOOR_EFOLDS
    alpha, beta = p.theta[:, 0], p.theta[:, 1]
    floors = np.stack(np.broadcast_arrays(floor, floor + alpha * lnN_min, floor + beta * lnD_min),
                      axis=1)
    with np.errstate(divide="ignore"):
        logs = np.where(p.c > 0, np.log(np.maximum(p.c, 1e-300)), -np.inf)
    return np.concatenate([np.maximum(logs, floors), p.theta], axis=1)


def _inputs(x, y) -> tuple[np.ndarray, np.ndarray]:
    X = _as_matrix(x, 2)
    y = np.asarray(y, dtype=float).ravel()
    if len(y) != len(X):
        raise ScalelabError(f"x has {len(X)} points but y has {len(y)}")
    if np.any(X <= 0) or np.any(y <= 0) or not (np.all(np.isfinite(y)) and np.all(np.isfinite(X))):
        raise ScalelabError("scaling-law fits need positive, finite x and y")
    if distinct_points(X) < 5:
        raise ScalelabError(f"form chinchilla has 5 parameters but only {distinct_points(X)} "
                            "distinct x values were given")
    return X, y


def _grids(alpha_grid, beta_grid) -> tuple[np.ndarray, np.ndarray]:
    grids = []
    for grid in (alpha_grid, beta_grid):
        g = EXPONENT_GRID if grid is None else np.unique(np.asarray(grid, dtype=float))
        if not len(g) or np.any(g <= 0) or not np.all(np.isfinite(g)):
            raise ScalelabError("variable projection: exponent grids must be positive and finite "
                                "(at 0 the power term is the constant E)")
        grids.append(g)
    return grids[0], grids[1]


def fit_varpro(X, y, *, alpha_grid=None, beta_grid=None, diagnostics: bool = True) -> LawFit:
    """Fit L = E + A/N^α + B/D^β (X: (n, 2) columns N, D) by variable projection: the exact
    NNLS solve of (E, A, B) at every grid (α, β) (default EXPONENT_GRID for both), Newton
    from the best within the grid's box. The objective is least squares in L with weights
    1/L^2 — linear in (E, A, B), and relative like the Huber fit's log residuals (module
    docstring). Returns a chinchilla :class:`LawFit` with ``method="varpro"``,
    ``loss="relative_squares"`` and ``objective`` the summed squared relative residual; a
    zero coefficient (E, A or B) and an exponent at its grid's edge are named in
    ``at_bound``. The single fit runs the bootstrap's batched code on one weighting (not
    scipy), so a resample's bootstrap solution is exactly this function's on that resample."""
    X, y = _inputs(X, y)
    alphas, betas = _grids(alpha_grid, beta_grid)
    lnN, lnD = np.log(X[:, 0]), np.log(X[:, 1])
    lo, hi = np.array([alphas[0], betas[0]]), np.array([alphas[-1], betas[-1]])
    Wt = (1 / y ** 2)[None, :]
    with threadpool_limits(1):
        start = _grid_search(Wt, lnN, lnD, y, alphas, betas)
        p, rel_grad, nit = _refine(Wt, lnN, lnD, y, start, lo, hi)
    theta = _theta(p, y.min(), lnN.min(), lnD.min())[0]
    law = Chinchilla()
    converged = bool(np.isfinite(p.f[0]) and rel_grad[0] <= GRAD_TOL)
    at_bound = [k for k, c in zip("EAB", p.c[0]) if c <= 0]
    at_bound += [k for k, v, a, b in zip(("alpha", "beta"), p.theta[0], lo, hi) if v in (a, b)]
    fit = LawFit(
        form="chinchilla", formula=law.formula, theta=theta, params=law.natural(theta),
        objective=float(p.f[0]), converged=converged, grad_norm=float(rel_grad[0]),
        message=f"variable projection: {len(alphas)}x{len(betas)} grid, {nit[0]} Newton steps",
        n_points=len(y), n_starts=len(alphas) * len(betas), loss="relative_squares",
        delta=0.0, settings=form_settings(law), at_bound=at_bound, method="varpro")
    if diagnostics:
        fit.diagnostics = diagnose(fit, X, y)
    return fit


def _solve_resamples(counts: np.ndarray, X: np.ndarray, y: np.ndarray, alphas: np.ndarray,
                     betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta (R, 5), converged (R,)) of every resample (row of ``counts``: times each point
    was drawn) — the single fit's grid search and Newton, all resamples in lockstep."""
    lnN, lnD = np.log(X[:, 0]), np.log(X[:, 1])
    lo, hi = np.array([alphas[0], betas[0]]), np.array([alphas[-1], betas[-1]])
    thin_a = np.unique(np.r_[alphas[::THIN], alphas[-1]])
    thin_b = np.unique(np.r_[betas[::THIN], betas[-1]])
    Wt = counts / y ** 2
    with threadpool_limits(1):
        start = _grid_search(Wt, lnN, lnD, y, thin_a, thin_b)
        p, rel_grad, _ = _refine(Wt, lnN, lnD, y, start, lo, hi)
    drawn = counts > 0
    theta = _theta(p, np.where(drawn, y, np.inf).min(1), np.where(drawn, lnN, np.inf).min(1),
                   np.where(drawn, lnD, np.inf).min(1))
    ok = np.isfinite(p.f) & (rel_grad <= GRAD_TOL) & np.all(np.isfinite(theta), axis=1)
    return theta, ok


def bootstrap_varpro(
    fit: LawFit,
    X,
    y,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    groups=None,
    alpha_grid=None,
    beta_grid=None,
    predict_at=None,
    derived: Mapping[str, Callable[[dict[str, float]], float]] | None = None,
    diagnostics: bool = True,
) -> Bootstrap:
    """Percentile intervals of a variable-projection fit, as :func:`.resampling.bootstrap`
    gives them for the Huber fit: the same two-stage cluster resamples of grid points
    (``groups``; the same seed draws the same resamples), the same intervals of quoted
    parameters, predictions at ``predict_at`` and ``derived`` quantities, stored on
    ``fit.intervals``, and the fit's diagnostics redone with the bootstrap. Each resample is
    refitted from scratch (grid search, then Newton; no warm start from the full-data fit),
    all of them in lockstep; a resample whose Newton does not converge counts as failed."""
    X, y = _inputs(X, y)
    labels = grid_points(X) if groups is None else np.asarray(groups)
    if len(labels) != len(y):
        raise ScalelabError(f"groups has {len(labels)} labels for {len(y)} points")
    rng = np.random.default_rng(seed)
    counts = np.empty((resamples, len(y)))
    for i in range(resamples):
        counts[i] = np.bincount(resample_grid_points(labels, rng), minlength=len(y))
    theta, ok = _solve_resamples(counts, X, y, *_grids(alpha_grid, beta_grid))
    law = fit.law
    thetas, samples = [], []
    for t in theta[ok]:
        try:  # a resample whose optimum overflows exp has no usable fit
            samples.append(law.natural(t))
        except OverflowError:
            continue
        thetas.append(t)
    intervals, prediction, derived_iv, undefined = summarize_resamples(
        fit, samples, thetas, level, predict_at, derived)
    fit.intervals = intervals
    boot = Bootstrap(samples, intervals, prediction, derived_iv, resamples - len(samples), level,
                     resamples, undefined, np.array(thetas))
    if diagnostics:
        fit.diagnostics = diagnose(fit, X, y, boot)
    return boot
