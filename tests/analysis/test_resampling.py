"""The law bootstrap resamples grid points (the seeds of one configuration move together), and
its lockstep refits reach the optimum scipy's L-BFGS-B reaches."""

from __future__ import annotations

import numpy as np
import pytest

from scalelab.analysis import bootstrap, fit_law, fitting, resampling
from scalelab.analysis.forms import LawForm, get_form
from scalelab.errors import ScalelabError


def seeded_grid(points=10, seeds=5, offset=0.05, noise=0.005, seed=0):
    """A power law L = 5 x^-0.25 on ``points`` sizes with ``seeds`` runs each: every grid
    point has its own offset (a lack of fit its seeds share) and each seed a small noise."""
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(1e3, 1e6, points)
    x = np.repeat(sizes, seeds)
    shared = np.repeat(rng.normal(0, offset, points), seeds)
    y = 5.0 * x ** -0.25 * np.exp(shared + rng.normal(0, noise, len(x)))
    order = rng.permutation(len(x))  # rows of a grid point need not be adjacent
    return x[order], y[order]


def sandwich_se(x, y, clusters):
    """Standard error of the OLS slope of log y on log x, robust to correlation within
    clusters (CR0; one row per cluster gives White's HC0)."""
    Z = np.stack([np.ones_like(x), -np.log(x)], 1)
    theta, *_ = np.linalg.lstsq(Z, np.log(y), rcond=None)
    e = np.log(y) - Z @ theta
    bread = np.linalg.inv(Z.T @ Z)
    scores = np.array([Z[clusters == c].T @ e[clusters == c] for c in np.unique(clusters)])
    return float(np.sqrt((bread @ scores.T @ scores @ bread)[1, 1])), float(theta[1])


def test_a_resample_draws_grid_points_each_with_its_own_seeds(monkeypatch):
    x, y = seeded_grid(points=6, seeds=3)
    x, y = np.concatenate([x, [1e7]]), np.concatenate([y, [0.1]])  # a point with one seed
    groups = resampling.grid_points(x[:, None])
    size = np.bincount(groups)
    assert len(size) == 7 and sorted(size) == [1, 3, 3, 3, 3, 3, 3]
    drawn = []
    real = resampling.resample_grid_points

    def recording(labels, rng):
        idx = real(labels, rng)
        drawn.append(idx)
        return idx

    monkeypatch.setattr(resampling, "resample_grid_points", recording)
    bootstrap(fit_law(x, y, "power"), x, y, n_resamples=200)
    assert len(drawn) == 200
    times_drawn = []
    for idx in drawn:
        rows_of = np.bincount(groups[idx], minlength=7)  # rows each grid point brought
        # a grid point drawn k times brings k x its seed count, all rows of its own ...
        assert np.all(rows_of % size == 0)
        times_drawn.append(rows_of // size)
        # ... and as many grid points are drawn as there are
        assert (rows_of // size).sum() == 7
    times_drawn = np.array(times_drawn)
    # grid points drawn uniformly with replacement: k ~ Binomial(7, 1/7)
    assert times_drawn.mean() == pytest.approx(1.0, abs=0.05)
    assert np.mean(times_drawn == 0) == pytest.approx((6 / 7) ** 7, abs=0.04)


def test_a_robust_fit_on_two_seeds_per_point_still_varies():
    # a flat law, two seeds per size: Huber's optimum lies between the two seeds of every
    # size, so refits on whole grid points alone would all return the full-data optimum
    x = np.repeat(np.geomspace(1e3, 1e6, 6), 2)
    y = 2.0 * np.exp(np.random.default_rng(3).normal(0, 0.05, len(x)))
    fit = fit_law(x, y, "power")
    boot = bootstrap(fit, x, y, n_resamples=200)
    alphas = np.array([s["alpha"] for s in boot.samples])
    assert np.mean(alphas == fit.params["alpha"]) < 0.1
    rows = bootstrap(fit, x, y, n_resamples=200, groups=np.arange(len(x)))
    width = {k: np.diff(b.intervals["alpha"])[0] for k, b in (("grid", boot), ("rows", rows))}
    assert width["grid"] >= 0.8 * width["rows"]


def test_the_interval_carries_the_lack_of_fit_seeds_share():
    x, y = seeded_grid(points=30, seeds=4)
    fit = fit_law(x, y, "power", loss="mse")
    cluster = bootstrap(fit, x, y, n_resamples=1000, seed=1)
    # resampling runs one by one: the same rows with every x its own grid point
    jittered = x * (1 + 1e-12 * np.arange(len(x)))
    rows = bootstrap(fit_law(jittered, y, "power", loss="mse"), jittered, y,
                     n_resamples=1000, seed=1)
    sd_cluster = np.std([s["alpha"] for s in cluster.samples])
    sd_rows = np.std([s["alpha"] for s in rows.samples])
    se_cr0, alpha = sandwich_se(x, y, x)
    se_hc0, _ = sandwich_se(x, y, np.arange(len(x)))
    assert fit.params["alpha"] == pytest.approx(alpha, rel=1e-6)
    # each bootstrap matches its sandwich standard error (the known large-sample answer:
    # clustered by grid point, CR0, or row by row, White's HC0) ...
    assert sd_cluster == pytest.approx(se_cr0, rel=0.2)
    assert sd_rows == pytest.approx(se_hc0, rel=0.2)
    # ... and the seeds, sharing their grid point's offset, are not independent evidence
    assert se_cr0 > 1.8 * se_hc0
    width = {k: b.intervals["alpha"][1] - b.intervals["alpha"][0]
             for k, b in (("cluster", cluster), ("rows", rows))}
    assert width["cluster"] > 1.8 * width["rows"]
    lo, hi = cluster.intervals["alpha"]
    assert lo < 0.25 < hi


def test_groups_can_be_given():
    x, y = seeded_grid(points=8, seeds=3)
    fit = fit_law(x, y, "power", loss="mse")
    rows = bootstrap(fit, x, y, n_resamples=400, groups=np.arange(len(x)))
    cluster = bootstrap(fit, x, y, n_resamples=400)
    assert np.std([s["alpha"] for s in cluster.samples]) > \
        1.5 * np.std([s["alpha"] for s in rows.samples])
    with pytest.raises(ScalelabError, match="groups has 3 labels for 24 points"):
        bootstrap(fit, x, y, n_resamples=10, groups=[0, 1, 2])


@pytest.mark.parametrize("form", ["power", "power_offset", "chinchilla", "kaplan",
                                  "broken_power"])
def test_batched_predictions_are_the_one_at_a_time_ones(form):
    law = get_form(form)
    rng = np.random.default_rng(0)
    X = rng.uniform(1e3, 1e8, (30, law.variables))
    thetas = np.abs(rng.normal(0.5, 0.3, (7, len(law.params)))) + 0.05
    if form == "broken_power":
        thetas[:, -1] = rng.uniform(8, 17, 7)
    F, J = law.log_predict_batch(thetas, X)
    assert F.shape == (7, 30) and J.shape == (7, 30, len(law.params))
    for i, theta in enumerate(thetas):
        f, j = law.log_predict(theta, X)
        np.testing.assert_allclose(F[i], f, rtol=1e-13)
        np.testing.assert_allclose(J[i], j, rtol=1e-12, atol=1e-15)


def test_lockstep_refits_reach_scipys_optimum():
    N, D = np.meshgrid(np.geomspace(1e7, 1e10, 8), np.geomspace(1e8, 1e11, 6))
    X = np.stack([N.ravel(), D.ravel()], 1)
    y = (1.69 + 406.4 / X[:, 0] ** 0.34 + 410.7 / X[:, 1] ** 0.28) \
        * np.exp(np.random.default_rng(2).normal(0, 0.01, len(X)))
    fit = fit_law(X, y, "chinchilla")
    law, n, rng = fit.law, len(y), np.random.default_rng(3)
    W = np.array([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(32)], float)
    bounds = np.array(law.bounds(X, y), dtype=float)
    lower = np.tile(np.nan_to_num(bounds[:, 0], nan=-np.inf), (32, 1))
    upper = np.tile(np.nan_to_num(bounds[:, 1], nan=np.inf), (32, 1))
    batch = resampling._refine_batch(np.tile(fit.theta, (32, 1)), law, X, np.log(y), W, "huber",
                                     1e-3, lower, upper)
    for i, result in enumerate(batch):
        rows = W[i] > 0
        ref = fitting._refine(fit.theta, law, X[rows], np.log(y[rows]), W[i, rows], "huber", 1e-3,
                             law.bounds(X[rows], y[rows]))
        assert fitting._converged(result, n, 1e-3)[0] and fitting._converged(ref, n, 1e-3)[0]
        assert result.fun <= ref.fun * (1 + 1e-9)
        np.testing.assert_allclose(result.x, ref.x, rtol=0, atol=1e-3)
        theirs, ours = law.natural(ref.x), law.natural(result.x)
        for k in ("alpha", "beta"):
            assert ours[k] == pytest.approx(theirs[k], abs=1e-4)


def test_forms_without_batched_predictions_are_refitted_one_by_one(monkeypatch):
    x = np.repeat(np.geomspace(1e2, 1e6, 8), 2)
    y = (1.0 + 50 * x ** -0.5) * np.exp(np.random.default_rng(4).normal(0, 0.01, len(x)))
    fit = fit_law(x, y, "power_offset", loss="mse")  # Huber's optimum can be a flat face
    lockstep = bootstrap(fit, x, y, n_resamples=60, seed=5)
    monkeypatch.setattr(type(fit.law), "log_predict_batch", LawForm.log_predict_batch)
    called = []
    monkeypatch.setattr(resampling, "_refine_batch", lambda *a, **k: called.append(1))
    serial = bootstrap(fit, x, y, n_resamples=60, seed=5)
    assert not called and serial.failed == lockstep.failed
    for k in fit.params:
        np.testing.assert_allclose(serial.intervals[k], lockstep.intervals[k], rtol=1e-3)
