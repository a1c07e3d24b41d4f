"""Approach 3 by variable projection (analysis.varpro): the exact inner solve plus the
(α, β) search reach the brute-force optimum, the batched bootstrap is the one-at-a-time
fit of every resample, and zero coefficients are reported, not hidden."""

import itertools
import json

import numpy as np
import pytest
from scipy import optimize

from scalelab.analysis.allocation import compute_optimal
from scalelab.analysis.resampling import grid_points, resample_grid_points
from scalelab.analysis.varpro import bootstrap_varpro, fit_varpro
from scalelab.errors import ScalelabError

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
NN, DD = (g.ravel() for g in np.meshgrid(np.geomspace(1e7, 1e10, 8), np.geomspace(1e8, 1e11, 7)))
X = np.stack([NN, DD], axis=1)


def law(p=TRUE, X=X):
    return p["E"] + p["A"] / X[:, 0] ** p["alpha"] + p["B"] / X[:, 1] ** p["beta"]


def noisy(p=TRUE, sigma=0.01, seed=0):
    return law(p) * np.exp(np.random.default_rng(seed).normal(0, sigma, len(X)))


def brute_force(X, y, alphas, betas):
    """(objective, E, A, B, alpha, beta) at the best grid point, each with scipy's NNLS on
    the 1/y-weighted design: sum of ((prediction - y) / y)^2, the objective fit_varpro uses."""
    best = None
    for a, b in itertools.product(alphas, betas):
        design = np.stack([np.ones(len(y)), X[:, 0] ** -a, X[:, 1] ** -b], axis=1) / y[:, None]
        coef, norm = optimize.nnls(design, np.ones(len(y)))
        if best is None or norm ** 2 < best[0]:
            best = (norm ** 2, *coef, a, b)
    return best


def brute_force_zoomed(X, y):
    """A coarse pass over the whole exponent box, then a 0.0005 grid around its best."""
    coarse = brute_force(X, y, np.arange(0.02, 1.01, 0.02), np.arange(0.02, 1.01, 0.02))
    return brute_force(X, y, coarse[4] + np.arange(-0.02, 0.02001, 0.0005),
                       coarse[5] + np.arange(-0.02, 0.02001, 0.0005))


@pytest.mark.parametrize("case", ["interior", "no_irreducible_loss"])
def test_matches_the_brute_force_grid_optimum(case):
    truth = TRUE if case == "interior" else {**TRUE, "E": -0.05}  # best E < 0: NNLS clamps it
    y = noisy(truth, sigma=0.01, seed=4)
    fit = fit_varpro(X, y)
    value, E, A, B, alpha, beta = brute_force_zoomed(X, y)
    # the continuous optimum can only be below the grid's, by at most what a 0.0005 step costs
    assert fit.objective <= value * (1 + 1e-9)
    assert fit.objective >= value * (1 - 1e-3)
    assert fit.params["alpha"] == pytest.approx(alpha, abs=1e-3)
    assert fit.params["beta"] == pytest.approx(beta, abs=1e-3)
    assert fit.params["A"] == pytest.approx(A, rel=0.02)
    assert fit.params["B"] == pytest.approx(B, rel=0.02)
    assert fit.params["E"] == pytest.approx(E, abs=0.01)
    assert fit.converged and fit.method == "varpro"
    assert ("E" in fit.at_bound) == (E == 0.0)


def test_recovers_the_published_chinchilla_law_from_noise_free_data():
    fit = fit_varpro(X, law())
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-6), k
    assert fit.objective < 1e-20 and fit.converged and fit.at_bound == []
    assert fit.form == "chinchilla" and fit.loss == "relative_squares"


def test_the_fit_works_downstream_like_a_huber_fit():
    fit = fit_varpro(X, noisy(seed=1))
    assert fit.predict(X[:3]) == pytest.approx(law()[:3], rel=0.03)
    n_opt, d_opt = compute_optimal(fit.params, [1e21])
    assert np.isfinite(n_opt).all() and n_opt * d_opt * 6 == pytest.approx([1e21])
    out = json.loads(json.dumps(fit.to_dict()))
    assert out["method"] == "varpro" and out["verdict"] in ("trustworthy", "use with care")


def test_a_zero_coefficient_is_reported_at_its_bound():
    # losses a little below any E >= 0 law: the unconstrained least-squares E is negative
    no_e = fit_varpro(X, noisy({**TRUE, "E": -0.05}, seed=2))
    assert "E" in no_e.at_bound and no_e.params["E"] < 1e-6
    assert any(d.code == "parameter_at_bound" for d in no_e.diagnostics)
    assert np.all(np.isfinite(no_e.theta))
    assert json.loads(json.dumps(no_e.to_dict()))["at_bound"] == no_e.at_bound
    # a loss that rises with N: the A term can only vanish
    no_n = fit_varpro(X, noisy({**TRUE, "A": -5.0, "alpha": 0.2}, seed=2))
    assert "A" in no_n.at_bound and no_n.params["A"] < 1e-6
    assert no_n.verdict[0] == "not a law"  # its N term vanished


def test_the_batched_bootstrap_is_the_one_at_a_time_fit_of_each_resample():
    y = noisy(seed=3)
    fit = fit_varpro(X, y)
    boot = bootstrap_varpro(fit, X, y, resamples=60, seed=5)
    assert boot.failed == 0 and boot.thetas.shape == (60, 5)
    rng, labels = np.random.default_rng(5), grid_points(X)
    draws = [resample_grid_points(labels, rng) for _ in range(60)]
    for i in (0, 17, 59):
        alone = fit_varpro(X[draws[i]], y[draws[i]], diagnostics=False)
        np.testing.assert_allclose(boot.thetas[i], alone.theta, atol=1e-6, rtol=0)


def test_intervals_cover_the_truth_on_small_noise_data():
    missed, total = 0, 0
    for seed in range(10):
        y = noisy(sigma=0.005, seed=seed)
        fit = fit_varpro(X, y, diagnostics=False)
        boot = bootstrap_varpro(fit, X, y, resamples=300, seed=seed, diagnostics=False)
        assert boot.failed == 0 and fit.intervals == boot.intervals
        for k, v in TRUE.items():
            lo, hi = boot.intervals[k]
            assert hi - lo < 0.5 * v, k  # informative, not merely wide
            missed += not lo <= v <= hi
            total += 1
    assert missed <= 0.15 * total  # nominal 95%; measured 95% over 40 data seeds


def test_bootstrap_derived_quantities_and_predictions():
    y = noisy(seed=6)
    fit = fit_varpro(X, y)
    boot = bootstrap_varpro(fit, X, y, resamples=50, predict_at=X[:2],
                            derived={"n_opt": lambda p: compute_optimal(p, [1e21])[0][0]})
    assert boot.prediction_intervals.shape == (2, 2)
    lo, hi = boot.derived["n_opt"]
    assert 0 < lo < hi and boot.undefined["n_opt"] == 0


def test_bad_input_is_refused():
    with pytest.raises(ScalelabError):
        fit_varpro(X, law(), alpha_grid=[0.0, 0.5])
    with pytest.raises(ScalelabError):
        fit_varpro(X[:4], law()[:4])
    with pytest.raises(ScalelabError):
        fit_varpro(X, -law())
