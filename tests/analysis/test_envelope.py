"""Approach 1 (the envelope of learning curves): it recovers a planted compute-optimal
exponent, and says in one sentence why it is omitted when the runs cannot give it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scalelab.analysis.envelope import Approach1, Curve, Omitted, fit_approach1
from scalelab.analysis.isoflop import agreement

#: Chinchilla's published law (Hoffmann et al. 2022, Approach 3), C = 6·N·D.
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
TRUE_A = BETA / (ALPHA + BETA)
SIZES = 1e6 * 2.0 ** np.arange(10)


def law(N, D):
    return E + A / N ** ALPHA + B / D ** BETA


def wsd_runs(noise=0.0, seed=0, ratios=2.0 ** np.arange(10), sizes=SIZES, schedule="wsd"):
    """One run per size and data amount (D/N from 1 to 512); each final loss annealed."""
    rng = np.random.default_rng(seed)
    return [Curve(N, [6 * N * N * r], [law(N, N * r) * (1 + noise * rng.standard_normal())],
                  schedule, data=[N * r]) for N in sizes for r in ratios]


def constant_runs(noise=0.0, seed=0, sizes=SIZES):
    """One constant-lr run per size; every point of its curve counts."""
    rng = np.random.default_rng(seed)
    out = []
    for N in sizes:
        D = N * np.geomspace(0.5, 2000, 60)
        out.append(Curve(N, 6 * N * D, law(N, D) * (1 + noise * rng.standard_normal(len(D))),
                         "constant", data=D))
    return out


@pytest.mark.parametrize("runs", [wsd_runs(noise=0.005), constant_runs(noise=0.005)],
                         ids=["wsd final points", "constant every point"])
def test_the_envelope_recovers_the_planted_exponent_within_its_interval(runs):
    fit = fit_approach1(runs, target=1e22, n_resamples=200)
    assert isinstance(fit, Approach1), fit
    lo, hi = fit.a_interval
    assert lo <= TRUE_A <= hi and hi - lo < 0.1, (fit.a, fit.a_interval)
    assert fit.b == pytest.approx(1 - fit.a)
    assert fit.flops_per_param_example == pytest.approx(6.0)
    # N* at the target against the law's own optimum: N* = G·C^a with G from the law
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * 6 ** -TRUE_A
    n_lo, n_hi = fit.n_opt_interval_at(1e22)
    assert n_lo <= g * 1e22 ** TRUE_A <= n_hi
    assert fit.d_opt_at(1e22) == pytest.approx(1e22 / (6 * fit.n_opt_at(1e22)))
    assert fit.verdict[0] in ("trustworthy", "use with care")
    out = json.loads(json.dumps(fit.to_dict()))
    assert out["omitted"] is False and out["a"] == pytest.approx(fit.a)
    assert any(p["bracketed"] for p in out["envelope"])


def test_its_row_sits_beside_approach_2_in_the_agreement_table():
    fit = fit_approach1(wsd_runs(), target=1e22, n_resamples=100)
    row = fit.estimate()
    assert (row.name, row.a, row.a_interval) == ("Approach 1", fit.a, fit.a_interval)
    omitted = fit_approach1(wsd_runs(ratios=[20.0]), n_resamples=0).estimate(1e22)
    table = agreement([row, omitted])
    assert table.verdict == "not compared" and "Approach 1" in table.reason


def one_sentence(result) -> str:
    assert isinstance(result, Omitted), result
    text = result.reason
    assert text.startswith("Approach 1 is omitted: ") and text.endswith(".")
    assert "\n" not in text and text.count(". ") == 0, text
    assert json.dumps(result.to_dict())
    return text


def test_annealed_runs_with_one_data_amount_per_size_are_omitted_with_what_to_run():
    text = one_sentence(fit_approach1(wsd_runs(ratios=[20.0], schedule="cosine")))
    assert "schedule: cosine" in text and "0 sizes have final losses at more than one" in text
    assert "schedule: wsd" in text and "several data amounts" in text


def test_mixed_schedules_are_omitted():
    runs = wsd_runs()[:20] + constant_runs()[3:]
    text = one_sentence(fit_approach1(runs))
    assert "mix schedules (constant, wsd)" in text


def test_too_few_sizes_are_omitted():
    text = one_sentence(fit_approach1(constant_runs(sizes=SIZES[:2])))
    assert "2 model sizes" in text and "it needs 3" in text
    # three sizes, but the data amounts do not let a third reach the envelope
    far = wsd_runs(sizes=[1e6, 1e9, 1e12], ratios=[1.0, 2.0])
    assert "reach the lowest loss" in one_sentence(fit_approach1(far))


def test_a_run_whose_final_loss_is_not_finite_gives_no_annealed_point():
    runs = wsd_runs(sizes=SIZES[:3], ratios=[4.0, 8.0])
    broken = [Curve(c.size, [c.compute[0] / 2, c.compute[0]], [c.loss[0], math.nan], "wsd")
              if c.size == SIZES[0] else c for c in runs]
    text = one_sentence(fit_approach1(broken))
    assert "2 sizes have final losses" in text
