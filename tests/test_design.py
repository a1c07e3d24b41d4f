"""IsoFLOP designs: every budget x size cell gets the data whose counted FLOPs spend the budget,
checked against what the trained runs themselves count."""

from __future__ import annotations

import re

import pytest
import yaml

import scalelab
from scalelab.errors import StudyError
from scalelab.spec import load_study

from .conftest import TINY

DESIGN = {"isoflop": {"budgets": [1e7, 3e7], "sizes": {"width": [4, 8, 16]},
                      "data": "train.max_steps"}}


def _study(tmp_path, **changes):
    spec = {**TINY, "grid": {}, "seeds": [0], "design": DESIGN, **changes}
    path = tmp_path / "iso.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_trained_cells_spend_their_budget_within_two_percent(tmp_path):
    study = load_study(_study(tmp_path))
    assert len(study.runs) == 6
    assert sorted({r.point["budget"] for r in study.runs}) == [1e7, 3e7]
    scalelab.run(study, out=tmp_path / "out", workers=1)
    records = scalelab.api.records(tmp_path / "out")
    assert len(records) == 6 and all(r["status"] == "completed" for r in records)
    for r in records:  # the run's own count, on the real model, against the budget
        assert abs(r["train_flops"] / r["budget"] - 1) <= 0.02, r
    by_budget = {}
    for r in records:
        by_budget.setdefault(r["budget"], []).append((r["width"], r["max_steps"]))
    for cells in by_budget.values():  # a bigger model gets fewer steps of the same budget
        steps = [s for _, s in sorted(cells)]
        assert steps == sorted(steps, reverse=True)
    from scalelab.store import Store

    with Store.open(tmp_path / "out") as store:
        meta = store.study_meta()
    assert meta.design == {"budgets": [1e7, 3e7], "size": "width", "data": "max_steps"}
    # the report sets the approaches side by side, with the profiles drawn
    report = scalelab.api.report(tmp_path / "out", n_resamples=50)
    text = report.markdown.read_text()
    assert "How big a model for the compute: three approaches" in text
    assert "| Approach 2 (IsoFLOP parabolas) |" in text
    assert "Approach 3 (L(N, D), variable projection)" in text
    assert (tmp_path / "out" / "figures" / "isoflop_profiles.png").exists()
    answers = report.analysis.compute_optimal
    assert [p.budget for p in answers.approach2.profiles] == [1e7, 3e7]
    assert answers.agreement.verdict in ("agree", "disagree", "not compared")


def test_num_train_cells_follow_the_epoch_rule(tmp_path):
    path = _study(tmp_path, train={**TINY["train"], "max_steps": None, "epochs": 1,
                                   "batch_size": 10},
                  task={**TINY["task"], "pool_size": 6000},
                  design={"isoflop": {"budgets": [3e6, 6e6], "sizes": {"width": [8, 16]},
                                      "data": "num_train"}})
    study = load_study(path)
    assert len(study.design_cells) == 4
    for cell in study.design_cells:
        assert abs(cell.error) <= 0.02
        assert cell.steps == cell.data // 10  # one epoch of whole batches (the trainer's rule)
    assert {r.config["task"]["num_train"] for r in study.runs} == \
        {c.data for c in study.design_cells}


@pytest.mark.parametrize("change, field, message", [
    ({"design": {"isoflop": {**DESIGN["isoflop"], "data": "train.lr"}}}, "design.isoflop.data",
     "cannot set a data amount (allowed: train.max_steps, task.num_train)"),
    ({"grid": {"width": [4]}}, "grid", "set by design.isoflop; remove them from the grid"),
    ({"design": {"isoflop": {**DESIGN["isoflop"], "budgets": [1e4]}}},
     "design.isoflop.budgets", "off the budget (allowed: 2%)"),
    ({"design": {"isoflop": {**DESIGN["isoflop"], "data": "num_train"}}},
     "design.isoflop.data", "only with a train.epochs budget"),
    ({"design": {"isoflop": {**DESIGN["isoflop"], "sizes": {"width": [4], "depth": [1]}}}},
     "design.isoflop.sizes", "exactly one size axis"),
])
def test_bad_designs_are_one_line_errors(tmp_path, change, field, message):
    with pytest.raises(StudyError, match=re.escape(message)) as caught:
        load_study(_study(tmp_path, **change))
    assert caught.value.field.startswith(field)


def test_dry_run_shows_the_plan_and_warns_before_training(tmp_path):
    from typer.testing import CliRunner

    from scalelab.cli import app

    result = CliRunner().invoke(app, ["run", str(_study(tmp_path)), "--dry-run",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "IsoFLOP design" in result.output
    assert "has 3 sizes (fewer than 5)" in result.output  # both budgets warned
    assert "2 budgets planned (fewer than 3)" in result.output
    assert not (tmp_path / "out").exists()


def test_next_append_adds_a_budget_to_the_design_not_the_quick_block(tmp_path):
    """`next --append` on an IsoFLOP study edits one line: the design's own budgets list."""
    from scalelab.proposal import _append_budget

    text = _study(tmp_path).read_text().replace("budgets:\n    - 10000000.0\n    - 30000000.0",
                                                "budgets: [1.0e+07, 3.0e+07]  # two to start")
    text += "quick:\n  design:\n    isoflop:\n      budgets: [1.0e+06, 3.0e+06]\n"
    path = tmp_path / "iso.yaml"
    path.write_text(text)
    assert _append_budget(path, 1e8) == 1 and _append_budget(path, 1e8) == 0
    edited = path.read_text()
    assert "budgets: [1.0e+07, 3.0e+07, 1.0e+08]  # two to start" in edited
    assert "budgets: [1.0e+06, 3.0e+06]" in edited  # the quick block is left alone
    assert edited.replace(", 1.0e+08", "") == text
