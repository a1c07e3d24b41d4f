"""The extrapolation ledger's verdict: misses against what calibrated intervals predict."""

from __future__ import annotations

import pytest
from scipy import stats

from scalelab.analysis.ledger import calibration, scorecard


def graded(held: int, missed: int, level: float = 0.95, pending: int = 0) -> list[dict]:
    row = {"status": "measured", "level": level}
    return ([{**row, "held": True}] * held + [{**row, "held": False}] * missed
            + [{"status": "pending", "level": level, "held": None}] * pending)


def test_one_miss_in_twenty_at_95_percent_is_what_calibration_predicts():
    c = calibration(graded(19, 1))
    p = stats.binomtest(1, 20, 0.05, alternative="greater").pvalue
    assert c["held"] == 19 and c["n"] == 20 and c["expected_held"] == pytest.approx(19.0)
    assert c["p_value"] == pytest.approx(p, rel=1e-12) and p > 0.6
    assert not c["overconfident"]
    text = scorecard(graded(19, 1))
    assert "extrapolates worse" not in text
    assert "19 of 20" in text and f"p = {p:.2g}" in text


def test_five_misses_in_ten_call_the_law_over_confident_with_scipys_p_value():
    c = calibration(graded(5, 5))
    p = stats.binomtest(5, 10, 0.05, alternative="greater").pvalue  # 6.4e-5
    assert c["p_value"] == pytest.approx(p, rel=1e-12)
    assert c["overconfident"]
    text = scorecard(graded(5, 5, pending=2))
    assert "the law extrapolates worse than its intervals claim" in text
    assert f"p = {p:.2g}" in text and "2 not measured yet" in text


def test_the_threshold_is_the_one_sided_tail():
    # 2 misses of 10 at 95%: P(>= 2) = 0.086, not unlikely; 3 of 10: 0.0115, unlikely
    assert not calibration(graded(8, 2))["overconfident"]
    assert calibration(graded(7, 3))["overconfident"]
    assert calibration(graded(10, 0))["p_value"] == 1.0


def test_mixed_levels_use_the_exact_tail_of_the_miss_count():
    rows = graded(3, 1, 0.9) + graded(2, 0, 0.5)
    c = calibration(rows)
    # P(at least one miss) = 1 - 0.9^4 * 0.5^2
    assert c["p_value"] == pytest.approx(1 - 0.9 ** 4 * 0.5 ** 2, rel=1e-12)
    assert c["expected_held"] == pytest.approx(4 * 0.9 + 2 * 0.5)


def test_nothing_measured_says_so():
    assert calibration(graded(0, 0, pending=3)) is None
    assert "none measured yet" in scorecard(graded(0, 0, pending=3))


def _rows(held: int, missed: int) -> list[dict]:
    base = {"created_at": 0.0, "kind": "uncertainty", "point": {"width": 64}, "n": 1e6,
            "d": 1e7, "budget": 6e13, "predicted": 1.0, "interval": [0.9, 1.1],
            "measured": 1.0, "runs": 2, "proposed": 2}
    return [{**g, **base} for g in graded(held, missed)]


@pytest.mark.parametrize(("held", "missed", "kind"), [(19, 1, "p"), (5, 5, "warn")])
def test_the_report_warns_only_for_an_over_confident_law(held, missed, kind):
    from scalelab.report.report import _ledger_blocks

    blocks = []
    _ledger_blocks(_rows(held, missed), blocks)
    assert blocks[1][0] == kind and blocks[1][1] == scorecard(_rows(held, missed)) + "."
