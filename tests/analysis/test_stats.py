import numpy as np
import pytest
from scipy import stats

from scalelab.analysis.nuisance import best_over_nuisance
from scalelab.analysis.stats import compare, hedges_g, holm, paired, power, seeds_needed, unpaired
from scalelab.errors import ScalelabError

RNG = np.random.default_rng(11)
A = RNG.normal(0.90, 0.02, 10)
B = A - RNG.normal(0.01, 0.012, 10)


def test_paired_equals_scipy():
    c = paired(A, B)
    ref = stats.ttest_rel(A, B)
    ci = ref.confidence_interval(0.95)
    assert c.t_statistic == pytest.approx(ref.statistic, abs=1e-10)
    assert c.p_value == pytest.approx(ref.pvalue, abs=1e-10)
    assert c.ci_low == pytest.approx(ci.low, abs=1e-10) and c.ci_high == pytest.approx(ci.high, abs=1e-10)
    assert c.wilcoxon_p == pytest.approx(stats.wilcoxon(A, B).pvalue, abs=1e-10)
    d = A - B
    assert c.effect_size == pytest.approx(d.mean() / d.std(ddof=1), abs=1e-12)
    # t-based CI by hand: mean +- t_{n-1} * sd / sqrt(n)
    half = stats.t.ppf(0.975, 9) * d.std(ddof=1) / np.sqrt(10)
    assert c.ci_low == pytest.approx(d.mean() - half, abs=1e-12)
    assert c.bootstrap_low < d.mean() < c.bootstrap_high


def test_unpaired_equals_scipy_welch_and_hedges_g_by_hand():
    a, b = A[:7], B[3:] - 0.02
    c = unpaired(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert c.p_value == pytest.approx(ref.pvalue, abs=1e-10)
    assert c.t_statistic == pytest.approx(ref.statistic, abs=1e-10)
    pooled = np.sqrt((6 * a.var(ddof=1) + 6 * b.var(ddof=1)) / 12)
    g = (1 - 3 / (4 * 14 - 9)) * (a.mean() - b.mean()) / pooled
    assert c.effect_size == pytest.approx(g, abs=1e-12) == hedges_g(a, b)
    assert c.wilcoxon_p is None and not c.paired


def test_holm_step_down():
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]  # 2 x 0.8 capped at 1, then monotone


def test_power_and_seeds_needed():
    # The textbook value: d_z = 0.5, alpha = .05 two-sided, 80% power -> 34 pairs.
    assert seeds_needed(0.5, 1.0) == 34
    assert power(34, 0.5, 1.0) == pytest.approx(0.8078, abs=1e-3)
    # two independent groups, d = 0.5 -> 64 per group
    assert seeds_needed(0.5, 1.0, is_paired=False) == 64
    rng = np.random.default_rng(0)  # and power agrees with simulation
    hits = sum(stats.ttest_1samp(rng.normal(0.5, 1, 20), 0).pvalue < 0.05 for _ in range(4000))
    assert hits / 4000 == pytest.approx(power(20, 0.5, 1.0), abs=0.03)
    with pytest.raises(ScalelabError):
        seeds_needed(0.0, 1.0)


def records():
    rows = []
    for method, shift in (("standard", 0.0), ("tta", 0.02), ("noise", 0.0)):
        for width in (8, 16):
            for seed in range(6):
                rows.append({"status": "completed", "method": method, "width": width,
                             "seed": seed, "test_acc": float(A[seed] + shift + 0.001 * width)})
    return rows


def test_compare_pairs_by_seed_within_groups_and_applies_holm():
    results = compare(records(), "test_acc", "method", "standard", "seed", within=["width"])
    assert len(results) == 4
    tta = next(c for c in results if c.candidate == "tta [width=8]")
    assert tta.mean_diff == pytest.approx(0.02) and tta.n_candidate == 6
    assert [c.p_holm for c in results] == pytest.approx(holm([c.p_value for c in results]).tolist())


def test_compare_errors_say_what_is_wrong():
    with pytest.raises(ScalelabError, match="baseline 'nope' not found beside any other method"):
        compare(records(), "test_acc", "method", "nope", within=["width"])
    with pytest.raises(ScalelabError, match="two results for method=standard and seed=0"):
        compare(records(), "test_acc", "method", "standard")  # width not split out


def test_best_over_nuisance_uses_validation_loss_and_flags_edges():
    rows = []
    for width in (8, 16):
        for lr in (0.001, 0.01, 0.1):
            for seed in (0, 1):
                best_lr = 0.01 if width == 8 else 0.1
                rows.append({"status": "completed", "width": width, "lr": lr, "seed": seed,
                             "val_loss": abs(np.log10(lr / best_lr)) + 0.1 * seed,
                             "test_loss": -lr})  # test loss would prefer the largest lr always
    selected, winners = best_over_nuisance(rows, ["width"], ["lr"], {"lr": [0.001, 0.01, 0.1]})
    chosen = {w.point["width"]: w for w in winners}
    assert chosen[8].nuisance == {"lr": 0.01} and chosen[8].at_edge == []
    assert chosen[16].nuisance == {"lr": 0.1} and chosen[16].at_edge == ["lr"]
    assert len(selected) == 4 and {r["lr"] for r in selected if r["width"] == 8} == {0.01}


def test_identical_or_constantly_shifted_samples_are_exact_and_silent():
    import warnings

    from scalelab.analysis.stats import paired

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = paired([0.81, 0.82, 0.83], [0.81, 0.82, 0.83])
        shifted = paired([0.91, 0.92, 0.93], [0.81, 0.82, 0.83])
    assert same.p_value == 1.0 and same.ci_low == same.ci_high == 0.0
    assert shifted.p_value == 0.0 and shifted.ci_low == pytest.approx(0.1)
    assert shifted.t_statistic == float("inf")


def test_a_baseline_without_a_value_on_a_within_axis_serves_every_value_of_it():
    """A selection study: ``full`` has no target_rate, so it is the baseline at every rate;
    against a per-rate baseline (``random``), a rate it did not run is skipped and named."""
    rows = []
    for seed in range(4):
        rows.append({"method": "full", "target_rate": None, "seed": seed,
                     "test_acc": 0.9 + 0.01 * seed})
        rows.append({"method": "random", "target_rate": 0.1, "seed": seed,
                     "test_acc": 0.8 + 0.01 * seed})
        for rate in (0.1, 0.2):
            rows.append({"method": "ast", "target_rate": rate, "seed": seed,
                         "test_acc": 0.9 + 0.01 * seed - rate / 10})
    results = compare(rows, "test_acc", "method", "full", "seed", within=["target_rate"])
    assert sorted(c.candidate for c in results) == [
        "ast [target_rate=0.1]", "ast [target_rate=0.2]", "random [target_rate=0.1]"]
    diffs = {c.candidate: round(c.mean_diff, 6) for c in results}
    assert diffs["ast [target_rate=0.2]"] == -0.02 and diffs["random [target_rate=0.1]"] == -0.1
    assert all(c.n_candidate == 4 for c in results) and results.skipped == []
    against_random = compare(rows, "test_acc", "method", "random", "seed",
                             within=["target_rate"])
    assert [c.candidate for c in against_random] == ["ast [target_rate=0.1]"]
    assert sorted(against_random.skipped) == [
        "[no target_rate]: no method=random to compare with (values: full)",
        "[target_rate=0.2]: no method=random to compare with (values: ast)"]


def test_a_cell_s_own_baseline_runs_win_over_the_shared_ones():
    rows = [{"method": m, "target_rate": rate, "seed": seed, "test_acc": acc + 0.01 * seed}
            for seed in range(3)
            for m, rate, acc in (("full", None, 0.9), ("full", 0.1, 0.5), ("ast", 0.1, 0.6),
                                 ("ast", 0.2, 0.8))]
    results = {c.candidate: c for c in compare(rows, "test_acc", "method", "full",
                                               within=["target_rate"])}
    assert results["ast [target_rate=0.1]"].mean_diff == pytest.approx(0.1)  # vs its own 0.5
    assert results["ast [target_rate=0.2]"].mean_diff == pytest.approx(-0.1)  # vs shared 0.9
