"""Wrong-result cases of the study analysis: nuisance tuning with divergence, selection cells
keyed by every other axis (in any store order), runs outside the study left out."""

import json
import random

import numpy as np
import pytest

from scalelab.analysis.nuisance import best_over_nuisance
from scalelab.analysis.sample_selection import analyze_selection
from scalelab.analysis.study_analysis import analyze_study, in_study


def test_a_setting_that_diverges_on_some_seeds_never_wins_on_its_survivors():
    records = []
    for seed in range(3):
        records.append({"width": 8, "lr": 0.01, "seed": seed, "status": "completed",
                        "val_loss": 0.50})
        # lr = 0.1: two seeds diverged, the survivor looks better than every lr = 0.01 seed
        records.append({"width": 8, "lr": 0.1, "seed": seed,
                        "status": "completed" if seed == 0 else "diverged",
                        "val_loss": 0.45 if seed == 0 else None})
    selected, winners = best_over_nuisance(records, ["width"], ["lr"])
    assert winners[0].nuisance == {"lr": 0.01} and winners[0].diverged == 0
    assert len(selected) == 3 and {r["lr"] for r in selected} == {0.01}
    # when every setting diverged somewhere, the fewest divergences win, and it is recorded
    for r in records:
        if r["lr"] == 0.01 and r["seed"] == 2:
            r.update(status="diverged", val_loss=None)
    records = [r for r in records if not (r["lr"] == 0.1 and r["seed"] == 1)]
    _, winners = best_over_nuisance(records, ["width"], ["lr"])
    assert winners[0].diverged == 1


#: The comparison roles the bundled methods declare, as a study records them.
ROLES = {"full": "full", "standard": "full", "random": "random", "ast": None}


def _selection_records(seed_offsets=(0.0,)):
    """A selection study that also sweeps model.channels: AST and full at each width."""
    rng = np.random.default_rng(0)
    rows = []
    for channels, level in ((16, 0.80), (64, 0.90)):
        for seed in range(4):
            base = {"status": "completed", "seed": seed, "task.num_train": 1000,
                    "model.name": "cnn", "model.channels": channels, "train.lr": 0.01,
                    "group_size": 1}
            full = level + rng.normal(0, 0.003)
            rows.append({**base, "run_id": f"full-{channels}-{seed}", "method.name": "full",
                         "method.match_method": None, "method.match_rate": None,
                         "test_acc": full, "train_flops": 100.0, "wall_time": 10.0})
            rows.append({**base, "run_id": f"ast-{channels}-{seed}", "method.name": "ast",
                         "method.target_rate": 0.2, "method.scoring": "loss",
                         "test_acc": full - 0.01 + rng.normal(0, 0.002),
                         "train_flops": 30.0, "wall_time": 4.0})
    return rows


def test_selection_cells_are_keyed_by_every_other_axis_in_any_store_order():
    rows = _selection_records()
    reference = analyze_selection(rows, ROLES).to_dict()
    assert [c["context"] for c in reference["cells"]] == [{"model.channels": "16"},
                                                          {"model.channels": "64"}]
    means = [c["metric_mean"] for c in reference["cells"]]
    assert means[0] == pytest.approx(np.mean([r["test_acc"] for r in rows
                                              if r["run_id"].startswith("ast-16")]))
    diff = reference["cells"][1]["comparisons"]["equal_steps"]["mean_diff"]
    pairs = [(r["test_acc"], next(f["test_acc"] for f in rows
                                   if f["run_id"] == f"full-64-{r['seed']}"))
             for r in rows if r["run_id"].startswith("ast-64")]
    assert diff == pytest.approx(np.mean([a - b for a, b in pairs]), abs=1e-12)
    for trial in range(5):
        shuffled = rows[:]
        random.Random(trial).shuffle(shuffled)
        assert json.dumps(analyze_selection(shuffled, ROLES).to_dict(), sort_keys=True, default=str) == \
            json.dumps(reference, sort_keys=True, default=str)


def test_wall_time_fraction_needs_a_full_run_timed_alone():
    rows = _selection_records()
    assert analyze_selection(rows, ROLES).cells[0].wall_fraction == pytest.approx(0.4)
    for r in rows:
        if r["method.name"] == "full":
            r["group_size"] = 4
    analysis = analyze_selection(rows, ROLES)
    assert analysis.cells[0].wall_fraction is None
    assert any("trained stacked" in n for n in analysis.notes)


def test_runs_not_in_the_study_as_written_are_left_out():
    meta = {"axes": json.dumps({"width": "model.width"}), "run_ids": json.dumps(["a", "b"])}
    rows = [{"run_id": rid, "status": "completed", "width": w, "n_params": 10 * w,
             "test_loss": 1.0 / w, "val_loss": 1.0 / w, "seed": 0}
            for rid, w in (("a", 4), ("b", 8), ("old", 16))]
    kept, other = in_study(rows, meta)
    assert [r["run_id"] for r in kept] == ["a", "b"] and [r["run_id"] for r in other] == ["old"]
    analysis = analyze_study(rows, meta, n_resamples=10)
    assert analysis.excluded == [{"run_id": "old", "status": "completed",
                                  "point": {"width": 16, "seed": 0}}]
    assert sum(r["runs"] for r in analysis.table) == 2


def test_per_class_differences_are_holm_adjusted_over_the_classes():
    from scipy import stats

    from scalelab.analysis.sample_selection import _class_diffs
    from scalelab.analysis.stats import holm

    rng = np.random.default_rng(4)
    seeds, classes = 5, 40
    base = rng.uniform(0.6, 0.9, (seeds, classes))
    cand = base + rng.normal(0, 0.02, (seeds, classes))
    cand[:, 0] = base[:, 0] + 0.2 + rng.normal(0, 0.001, seeds)  # one class truly gains
    runs = {s: {"test_acc_by_class": list(cand[s])} for s in range(seeds)}
    baseline = {s: {"test_acc_by_class": list(base[s])} for s in range(seeds)}
    diffs = _class_diffs(runs, baseline, 0.95)
    raw = [stats.ttest_rel(cand[:, c], base[:, c]).pvalue for c in range(classes)]
    assert [d[4] for d in diffs] == pytest.approx(raw, rel=1e-10)
    assert [d[5] for d in diffs] == pytest.approx(list(holm(raw)), rel=1e-10)
    unadjusted = [c for c, _, lo, hi, *_ in diffs if lo > 0 or hi < 0]
    adjusted = [c for c, *_, ph in diffs if ph < 0.05]
    assert adjusted == [0] and len(unadjusted) > 1  # noise passes unadjusted, not Holm


def test_per_size_evaluation_gains_carry_holm_adjusted_p_values():
    from scipy import stats

    from scalelab.analysis.evaluations import gains_by_point
    from scalelab.analysis.stats import holm

    rng = np.random.default_rng(1)
    settings = [{"eval_id": "plain", "config": {"name": "plain"}},
                {"eval_id": "tta", "config": {"name": "tta", "level": 2}}]
    records, rows = [], []
    for width in (8, 16, 32):
        for seed in range(4):
            rid = f"{width}-{seed}"
            records.append({"run_id": rid, "width": width, "n_params": 10 * width})
            acc = 0.8 + rng.normal(0, 0.01)
            rows.append({"run_id": rid, "eval_id": "plain", "test_acc": acc})
            rows.append({"run_id": rid, "eval_id": "tta",
                         "test_acc": acc + 0.01 + rng.normal(0, 0.005)})
    gains = [g for g in gains_by_point(rows, settings, records, ["width"]) if g["p"] is not None]
    assert [g["width"] for g in gains] == [8, 16, 32]
    raw = []
    for width in (8, 16, 32):
        plain = [r["test_acc"] for r in rows if r["eval_id"] == "plain"
                 and r["run_id"].startswith(f"{width}-")]
        tta = [r["test_acc"] for r in rows if r["eval_id"] == "tta"
               and r["run_id"].startswith(f"{width}-")]
        raw.append(stats.ttest_rel(tta, plain).pvalue)
    assert [g["p"] for g in gains] == pytest.approx(raw, rel=1e-10)
    assert [g["p_holm"] for g in gains] == pytest.approx(list(holm(raw)), rel=1e-10)


def test_cells_whose_runs_came_out_identical_are_shown_and_tested_once():
    rows = [r for r in _selection_records() if r["model.channels"] == 16]
    twins = []
    for r in rows:
        if r["method.name"] == "ast":
            r.update({"method.name": "infobatch_per_batch", "method.scoring": None,
                      "method.target_rate": 0.1})
            twins.append({**r, "run_id": r["run_id"] + "-b", "method.target_rate": 0.2})
    analysis = analyze_selection(rows + twins, ROLES)
    assert len(analysis.cells) == 1
    cell = analysis.cells[0]
    assert cell.label == "infobatch_per_batch@0.1 = @0.2"
    assert cell.comparisons["equal_steps"].candidate == cell.label
    assert cell.comparisons["equal_steps"].p_holm == pytest.approx(
        cell.comparisons["equal_steps"].p_value)  # one test, nothing to adjust for
    assert any("gave exactly the runs of" in n for n in analysis.notes)


def test_the_roles_used_here_are_what_the_methods_declare():
    from scalelab.registry import methods

    assert {name: methods.get(name).comparison_role for name in ROLES} == ROLES


def test_a_cell_without_a_matched_run_reports_its_controller_and_no_matched_compute():
    """The controller numbers once landed in the matched-compute column (positional field)."""
    rows = _selection_records()
    for r in rows:
        if r["method.name"] == "ast":
            r.update(settling_step=40.0 + r["seed"], overshoot=0.1, energy_j=3.0)
        else:
            r["energy_j"] = 10.0
    cells = analyze_selection(rows, ROLES).cells
    assert all(c.matched_compute is None for c in cells)
    assert cells[0].controller == {"settling_step": 41.5, "overshoot": 0.1}
    assert cells[0].energy_fraction == pytest.approx(0.3)
