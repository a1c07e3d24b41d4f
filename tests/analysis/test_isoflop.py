"""Approach 2 (IsoFLOP parabolas) on synthetic Chinchilla-form runs with known answers: the
exponent it recovers, the bias diagnostics it names, the plan warnings and the agreement
verdict between approaches."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scalelab.analysis.isoflop import (
    ApproachEstimate,
    agreement,
    fit_approach2,
    fit_profile,
    isoflop_plan_warnings,
    parabola_bias,
)

E, A, B = 1.69, 406.4, 410.7
BUDGETS = np.geomspace(1e18, 1e21, 4)


def n_star(C, alpha, beta):
    """The true compute-optimal size of the law at C = 6·N·D."""
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    return G * (np.asarray(C) / 6) ** (beta / (alpha + beta))


def study(alpha=0.3, beta=0.3, budgets=BUDGETS, sizes=7, width=2.0, centre=lambda C: 1.0,
          noise=0.0, seeds=1, seed=0):
    """Runs on IsoFLOP grids of ``sizes`` sizes from centre/width to centre·width, the
    centre at the true N* times ``centre(C)``, with multiplicative noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        grid = n_star(C, alpha, beta) * centre(C) * np.geomspace(1 / width, width, sizes)
        for N in grid:
            for s in range(seeds):
                D = C / (6 * N)
                L = (E + A * N ** -alpha + B * D ** -beta) * math.exp(rng.normal(0, noise))
                rows.append((N, D, C, L, s))
    return tuple(np.array(col) for col in zip(*rows))


def codes(diagnostics):
    return [d.code for d in diagnostics]


BIASES = {"isoflop_off_grid", "isoflop_off_centre", "isoflop_wide_grid", "isoflop_asymmetry"}


def test_noise_free_centred_grids_with_equal_exponents_give_a_exactly_one_half():
    """α = β: each profile is symmetric in ln N about N*, so a parabola on a centred grid
    has its minimum exactly there and a = β/(α+β) = 1/2."""
    N, D, C, L, _ = study(0.3, 0.3)
    fit = fit_approach2(N, D, C, L, target=1e23)
    assert fit.a == pytest.approx(0.5, abs=1e-9)
    assert fit.b == pytest.approx(0.5, abs=1e-9)
    assert fit.n_opt_at(1e23) == pytest.approx(n_star(1e23, 0.3, 0.3), rel=1e-7)
    for p in fit.profiles:
        assert p.n_opt == pytest.approx(n_star(p.budget, 0.3, 0.3), rel=1e-9)
        assert p.d_opt == pytest.approx(p.budget / (6 * p.n_opt), rel=1e-9)
        assert p.flops_per_param_example == pytest.approx(6.0)
    assert fit.a_interval[0] <= 0.5 <= fit.a_interval[1]
    assert fit.verdict[0] == "trustworthy", fit.verdict


def test_noisy_runs_recover_chinchillas_a_inside_the_interval():
    """Chinchilla's law with 0.5% noise on centred ±2× grids (7 sizes × 3 seeds): the 95%
    interval of a holds the true β/(α+β) in at least 17 of 20 simulated studies (the
    asymmetry bias of a centred grid is the same at every budget, so a is unbiased)."""
    true = 0.28 / 0.62
    covered, widths = 0, []
    for seed in range(20):
        N, D, C, L, _ = study(0.34, 0.28, sizes=7, seeds=3, noise=0.005, seed=seed)
        fit = fit_approach2(N, D, C, L, n_resamples=400, seed=seed)
        lo, hi = fit.a_interval
        covered += lo <= true <= hi
        widths.append(hi - lo)
    assert covered >= 17
    assert 0 < np.median(widths) < 0.2


def test_each_budgets_interval_holds_its_true_minimum():
    """α = β on centred grids (no parabola bias): each budget's 95% interval of N* holds
    the true N* in at least 85% of 4 budgets × 20 simulated studies (measured: 89%; the
    percentile bootstrap of 21 runs covers a little under its nominal level)."""
    covered, total, widths = 0, 0, []
    for seed in range(20):
        N, D, C, L, _ = study(0.3, 0.3, sizes=7, seeds=3, noise=0.005, seed=seed)
        for p in fit_approach2(N, D, C, L, n_resamples=400, seed=seed).profiles:
            lo, hi = p.n_opt_interval
            covered += lo <= n_star(p.budget, 0.3, 0.3) <= hi
            total += 1
            widths.append(hi / lo)
    assert covered >= 0.85 * total
    assert 1.01 < np.median(widths) < 2.0


def test_a_centred_grid_raises_no_bias_diagnostic():
    N, D, C, L, _ = study(0.34, 0.28, sizes=7)
    fit = fit_approach2(N, D, C, L)
    for p in fit.profiles:
        assert not BIASES & set(codes(p.diagnostics)), p.diagnostics
        assert p.usable
    assert not BIASES & set(codes(fit.diagnostics))


def test_off_centre_sizes_are_named_with_the_side_to_add():
    """The minimum 70% of the way to the large edge (more than the 50% allowed)."""
    N, D, C, L, _ = study(0.3, 0.3, sizes=9, centre=lambda C: 2.0 ** -0.7)
    fit = fit_approach2(N, D, C, L)
    for p in fit.profiles:
        off = [d for d in p.diagnostics if d.code == "isoflop_off_centre"]
        assert len(off) == 1 and off[0].severity == "warning"
        assert "70%" in off[0].message and "adding larger sizes" in off[0].message
        assert f"{p.budget:.3g}" in off[0].message
        assert p.usable
    assert "isoflop_off_centre" in codes(fit.diagnostics)
    assert fit.verdict[0] == "use with care"


@pytest.mark.parametrize("factor, side", [(1 / 3, "large"), (3.0, "small")])
def test_a_minimum_beyond_the_edge_is_an_error_and_left_out(factor, side):
    """Only the largest budget's sizes miss its minimum: its profile is an error, the power
    law uses the other three, which (α = β, centred) still give a = 1/2 exactly."""
    N, D, C, L, _ = study(0.3, 0.3, centre=lambda C: factor if C == BUDGETS[-1] else 1.0)
    fit = fit_approach2(N, D, C, L)
    last = fit.profiles[-1]
    edge = [d for d in last.diagnostics if d.code == "isoflop_off_grid"]
    assert len(edge) == 1 and edge[0].severity == "error"
    assert f"{side} edge" in edge[0].message
    assert ("above" if side == "large" else "below") in edge[0].message
    assert not last.usable and all(p.usable for p in fit.profiles[:-1])
    assert fit.a == pytest.approx(0.5, abs=1e-9)
    lifted = [d for d in fit.diagnostics if d.code == "isoflop_off_grid"]
    assert lifted and lifted[0].severity == "warning"  # the budget is out, the law stands


def test_a_wide_grid_warns_and_a_narrow_one_does_not():
    wide = fit_approach2(*study(0.34, 0.28, sizes=9, width=10.0)[:4])
    narrow = fit_approach2(*study(0.34, 0.28, sizes=9, width=2.0)[:4])
    assert all("isoflop_wide_grid" in codes(p.diagnostics) for p in wide.profiles)
    assert "100×" in wide.profiles[0].diagnostics[0].message
    assert not any("isoflop_wide_grid" in codes(p.diagnostics) for p in narrow.profiles)


def test_a_lopsided_profile_warns_through_its_cubic_term():
    """15× span (under the 20× limit) but far off-centre with α ≠ β: the cubic term moves
    the minimum by more than 2%."""
    N, D, C, L, _ = study(0.2, 0.5, sizes=11, width=math.sqrt(15), centre=lambda C: 2.5)
    profile = fit_approach2(N, D, C, L).profiles[0]
    lopsided = [d for d in profile.diagnostics if d.code == "isoflop_wide_grid"]
    assert lopsided and "cubic term moves N*" in lopsided[0].message


def test_parabola_bias_is_what_approach_2_gets_wrong_without_noise():
    """The predicted shift of each minimum (from α, β and the grid alone) is the shift the
    fitted parabola shows, and the α ≠ β diagnostic quotes the error at the target."""
    alpha, beta = 0.34, 0.28
    drift = {C: 10 ** (-0.25 * i / 3) for i, C in enumerate(BUDGETS)}
    N, D, C, L, _ = study(alpha, beta, sizes=9, width=4.0, centre=lambda C: drift[C])
    fit = fit_approach2(N, D, C, L, target=1e23, alpha=alpha, beta=beta, n_resamples=0)
    for p in fit.profiles:
        truth = n_star(p.budget, alpha, beta)
        assert math.log(p.n_opt / truth) == pytest.approx(
            parabola_bias(p.sizes, truth, alpha, beta), abs=1e-9)
    actual = fit.n_opt_at(1e23) / n_star(1e23, alpha, beta) - 1
    [note] = [d for d in fit.diagnostics if d.code == "isoflop_asymmetry"]
    assert f"N* at 1e+23 off by {actual:+.1%}" in note.message
    assert note.severity == ("warning" if abs(actual) > 0.01 else "info")
    same = fit_approach2(N, D, C, L, target=1e23, alpha=0.3, beta=0.3, n_resamples=0)
    assert "isoflop_asymmetry" not in codes(same.diagnostics)


def test_too_few_sizes_and_a_downward_parabola_have_no_minimum():
    few = fit_approach2(*study(sizes=4)[:4])
    assert all("isoflop_few_sizes" in codes(p.diagnostics) for p in few.profiles)
    two = fit_profile(1e19, [1e8, 2e8], [1e10, 5e9], [3.0, 2.9])
    assert codes(two.diagnostics) == ["isoflop_no_minimum"] and math.isnan(two.n_opt)
    down = fit_profile(1e19, [1e8, 2e8, 4e8, 8e8, 16e8], [1e10] * 5, [2.7, 2.9, 3.0, 2.9, 2.7])
    assert codes(down.diagnostics) == ["isoflop_no_minimum"]
    assert "downward" in down.diagnostics[0].message


def test_fewer_than_three_usable_budgets_warn_and_one_is_not_a_law():
    two = fit_approach2(*study(budgets=BUDGETS[:2])[:4])
    assert [d.severity for d in two.diagnostics if d.code == "isoflop_too_few_budgets"] == ["warning"]
    one = fit_approach2(*study(budgets=BUDGETS[:1])[:4])
    assert one.verdict[0] == "not a law" and math.isnan(one.a)


def test_runs_with_one_label_move_together_in_the_bootstrap():
    """Every run of a budget in one group: each resample redraws that one group, so every
    draw is the full-data minimum and the interval has no width."""
    N, D, C, L, _ = study(0.34, 0.28, budgets=[1e19], noise=0.005, seeds=2)
    alone = fit_profile(1e19, N, D, L, n_resamples=200)
    together = fit_profile(1e19, N, D, L, groups=np.zeros(len(N)), n_resamples=200)
    assert together.n_opt_interval == pytest.approx((together.n_opt, together.n_opt))
    assert alone.n_opt_interval[1] > alone.n_opt_interval[0] * 1.001
    again = fit_profile(1e19, N, D, L, n_resamples=200, rng=np.random.default_rng(0))
    assert again.n_opt_interval == alone.n_opt_interval  # seeded


def test_plan_warnings_name_the_budget_and_stay_silent_on_a_good_plan():
    good = {1e18: np.geomspace(1e7, 8e7, 5), 1e19: np.geomspace(3e7, 2.4e8, 6),
            1e20: np.geomspace(1e8, 8e8, 5)}
    assert isoflop_plan_warnings(good) == []
    four = isoflop_plan_warnings({**good, 1e19: [3e7, 6e7, 1.2e8, 2.4e8]})
    assert codes(four) == ["isoflop_few_sizes"] and "1e+19" in four[0].message
    narrow = isoflop_plan_warnings({**good, 1e20: np.geomspace(1e8, 2.5e8, 5)})
    assert codes(narrow) == ["isoflop_narrow_plan"] and "1e+20" in narrow[0].message
    assert "2.5×" in narrow[0].message
    assert codes(isoflop_plan_warnings({1e18: good[1e18]})) == ["isoflop_too_few_budgets"]


def estimate(name, a, a_iv, n, n_iv, diagnostics=()):
    return ApproachEstimate(name, a, a_iv, 1 - a, (1 - a_iv[1], 1 - a_iv[0]), n, n_iv,
                            tuple(diagnostics))


def test_agreement_says_disagree_with_the_cause_on_a_biased_case():
    """Approach 2 on an off-centre grid against a clean Approach 3 with disjoint intervals."""
    N, D, C, L, _ = study(0.3, 0.3, sizes=9, centre=lambda C: 2.0 ** -0.7)
    biased = fit_approach2(N, D, C, L).diagnostics
    two = estimate("Approach 2", 0.40, (0.38, 0.42), 1.0e10, (0.9e10, 1.1e10), biased)
    three = estimate("Approach 3", 0.50, (0.48, 0.52), 1.5e10, (1.4e10, 1.6e10))
    result = agreement([two, three])
    assert result.verdict == "disagree"
    assert "Approach 2's off-centre grid" in result.reason
    assert result.recommended == "Approach 3" and "no bias diagnostic" in result.why


def test_agreement_says_agree_on_overlapping_intervals():
    two = estimate("Approach 2", 0.45, (0.43, 0.47), 1.0e10, (0.9e10, 1.2e10))
    three = estimate("Approach 3", 0.46, (0.455, 0.49), 1.1e10, (1.05e10, 1.3e10))
    result = agreement([two, three])
    assert result.verdict == "agree"
    assert result.recommended == "Approach 3"  # narrower N* interval, no bias either side
    # a overlaps but N* does not: still a disagreement
    apart = estimate("Approach 3", 0.46, (0.455, 0.49), 2e10, (1.8e10, 2.2e10))
    assert agreement([two, apart]).verdict == "disagree"
    assert "N* at the target" in agreement([two, apart]).reason


def test_agreement_recommends_approach_2_when_approach_3_is_not_a_law():
    from scalelab.analysis.diagnostics import Diagnostic
    broken = Diagnostic("error", "exponent_not_positive", "alpha = -0.1 ≤ 0.")
    two = estimate("Approach 2", 0.45, (0.43, 0.47), 1.0e10, (0.9e10, 1.2e10))
    three = estimate("Approach 3", 0.7, (0.69, 0.71), 5e10, (4.9e10, 5.1e10), [broken])
    result = agreement([two, three])
    assert result.verdict == "disagree" and "Approach 3 is not a law" in result.reason
    assert result.recommended == "Approach 2" and "not a law" in result.why


def test_everything_is_json_ready():
    N, D, C, L, _ = study(0.34, 0.28, sizes=5, noise=0.005, seeds=2,
                          centre=lambda C: 3.0 if C == BUDGETS[0] else 1.0)
    fit = fit_approach2(N, D, C, L, target=1e23, alpha=0.34, beta=0.28, n_resamples=200)
    out = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert out["a"] == pytest.approx(fit.a) and out["target"] == 1e23
    assert out["verdict"] == fit.verdict[0]
    assert len(out["profiles"]) == 4 and out["profiles"][0]["usable"] is False
    assert fit.n_opt_interval_at(1e23)[0] <= fit.n_opt_at(1e23) <= fit.n_opt_interval_at(1e23)[1]
    no_min = fit_profile(1e19, [1e8, 2e8], [1e10, 5e9], [3.0, 2.9])
    json.dumps(no_min.to_dict(), allow_nan=False)
    result = agreement([fit.estimate(), estimate("Approach 3", 0.45, (0.44, 0.46), 1e10,
                                                 (0.9e10, 1.1e10))])
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["verdict"] == result.verdict


def test_agreement_of_wide_intervals_says_it_means_little():
    """Overlap because one answer is too uncertain to disagree is not agreement to trust."""
    from scalelab.analysis.isoflop import ApproachEstimate, agreement

    sharp = ApproachEstimate("sharp", 0.5, (0.48, 0.52), 0.5, (0.48, 0.52), 1e4, (9e3, 1.1e4))
    vague = ApproachEstimate("vague", 0.6, (0.1, 2.0), 0.4, (-1.0, 0.9), 2e4, (5e2, 1e8))
    result = agreement([sharp, vague])
    assert result.verdict == "agree"
    assert "The agreement says little: vague has an interval of N* at the target wider " \
           "than 10×" in result.reason
    assert "says little" not in agreement([sharp, sharp]).reason


def test_a_nearly_flat_profile_does_not_overflow():
    """A vertex at ln N = 1000 (past float range) is an off-grid minimum, not a crash."""
    from scalelab.analysis.isoflop import fit_profile

    N = np.geomspace(1e3, 1e4, 6)
    L = 1.0 + 1e-9 * (np.log(N) - 1000.0) ** 2
    profile = fit_profile(1e12, N, 1e12 / (6 * N), L, n_resamples=50)
    assert profile.n_opt > N.max()
    assert "isoflop_off_grid" in {d.code for d in profile.diagnostics}
    assert not profile.usable
