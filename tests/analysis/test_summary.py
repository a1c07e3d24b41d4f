import numpy as np
import pytest
from scipy import stats

from scalelab.analysis import fit_loglog, summarize


def test_loglog_fit_recovers_an_exact_power_law():
    x = np.array([1e3, 3e3, 1e4, 3e4])
    fit = fit_loglog(x, 5.0 * x**-0.3)
    assert fit.coefficient == pytest.approx(5.0) and fit.exponent == pytest.approx(0.3)
    assert fit.r_squared == pytest.approx(1.0) and fit.points == 4
    assert fit.predict(1e5) == pytest.approx(5.0 * 1e5**-0.3)


def test_loglog_fit_equals_scipy_on_noisy_data():
    rng = np.random.default_rng(0)
    x = np.geomspace(10, 1e5, 9)
    y = 2.0 * x**-0.5 * np.exp(rng.normal(0, 0.05, 9))
    line = stats.linregress(np.log(x), np.log(y))
    fit = fit_loglog(x, y)
    assert fit.exponent == pytest.approx(-line.slope, rel=1e-12)
    with pytest.raises(ValueError, match="positive"):
        fit_loglog([1, 2], [1, -1])


def test_summarize_groups_by_parameters_and_other_axes():
    records = [
        {"status": "completed", "n_params": n, "width": w, "num_train": d, "seed": s,
         "test_loss": 10.0 * n**-0.5 * (1 + 0.01 * s) / d}
        for n, w in ((100, 4), (400, 8), (1600, 16)) for d in (1, 2) for s in (0, 1)
        if not (n == 1600 and d == 1)  # num_train=1 has two sizes only: no fit for it
    ] + [{"status": "diverged", "n_params": 100, "width": 4, "num_train": 1, "seed": 2}]
    summary = summarize(records, {"width": "model.width", "num_train": "task.num_train"})
    assert summary.n_params == [100, 400, 1600]
    assert summary.row_labels == ["width=4", "width=8", "width=16"]
    assert summary.column_labels == ["num_train=1", "num_train=2"]
    mean, std, runs = summary.cells[(100, "num_train=1")]
    assert runs == 2 and mean == pytest.approx(10 * 100**-0.5 * 1.005)
    assert summary.fits["num_train=2"].exponent == pytest.approx(0.5)
    assert "num_train=1" not in summary.fits  # a line through two points proves nothing
