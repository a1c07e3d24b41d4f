"""Test-time augmentation and re-scoring checkpoints without retraining."""

import pytest
import torch
import yaml
from torch import nn

import scalelab
from scalelab.errors import ScalelabError
from scalelab.evaluation.tta import TTA, shift, views
from scalelab.store import Store

from .conftest import TINY


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("weight", [None, 0.3, 0.7])
def test_tta_weights_sum_to_one(dims, level, weight):
    assert sum(w for w, _ in views(dims, level, weight)) == pytest.approx(1.0)


def test_level_two_image_weights_follow_the_fast_cifar_recipes():
    weights = [w for w, _ in views(2, 2, None)]
    assert weights == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    assert [w for w, _ in views(2, 2, 0.7)][:2] == [0.35, 0.35]


def test_shifts_reflect_at_the_edge():
    x = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    assert shift(x, (1,)).tolist() == [[[1.0, 0.0, 1.0, 2.0]]]
    assert shift(x, (-1,)).tolist() == [[[1.0, 2.0, 3.0, 2.0]]]
    image = torch.arange(16.0).view(1, 1, 4, 4)
    moved = shift(image, (1, 1))
    assert moved.shape == image.shape and moved[0, 0, 1:, 1:].equal(image[0, 0, :3, :3])


def test_level_zero_is_a_plain_forward_and_level_two_averages_its_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(5, 1, 12)
    assert torch.equal(TTA(TTA.Config(level=0)).logits(model, x), model(x))
    expected = sum(w * model(v(x)) for w, v in views(1, 2, 0.4))
    torch.testing.assert_close(TTA(TTA.Config(level=2, untranslated_weight=0.4)).logits(model, x),
                               expected)


EVAL_STUDY = {**TINY, "name": "ev", "grid": {}, "seeds": [0, 1, 2], "save_checkpoints": True,
              "model": {"name": "cnn", "channels": 4, "depth": 2},
              "evaluations": [{"name": "tta", "level": 2, "untranslated_weight": [0.5, 0.3]},
                              {"name": "tta", "level": 0}]}


def trained(tmp_path, **changes):
    path = tmp_path / "ev.yaml"
    path.write_text(yaml.safe_dump({**EVAL_STUDY, **changes}))
    result = scalelab.run(path, out=tmp_path / "out", device="cpu")
    assert result.ok
    return path, tmp_path / "out"


def test_evaluate_rescores_every_checkpoint_and_trains_nothing(tmp_path):
    _, out = trained(tmp_path)
    with Store.open(out) as store:
        before = store.records()
    result = scalelab.api.evaluate(out, device="cpu")
    assert (result.models, result.scored, len(result.settings)) == (3, 9, 3)
    with Store.open(out) as store:
        after, rows = store.records(), store.evaluations()
    assert before == after  # no run was trained or touched
    assert {r["run_id"] for r in rows} == {r["run_id"] for r in before}
    by_run = {r["run_id"]: r for r in before}
    for row in rows:  # rows are linked to their run: the plain forward reproduces its test_acc
        if row["eval.level"] == 0:
            assert row["test_acc"] == pytest.approx(by_run[row["run_id"]]["test_acc"])
    again = scalelab.api.evaluate(out, device="cpu")
    assert (again.scored, again.already_done) == (0, 9)
    report = scalelab.api.report(out, n_resamples=50)
    text = report.markdown.read_text()
    assert "## Evaluation settings (checkpoints re-scored, nothing retrained)" in text
    assert "tta level=2 untranslated_weight=0.3" in text


def test_evaluation_comparisons_pair_by_trained_model():
    from scalelab.analysis.evaluations import compare_evaluations

    settings = [{"eval_id": "a", "config": {"name": "tta", "level": 2}},
                {"eval_id": "b", "config": {"name": "tta", "level": 0}}]
    rows = [{"run_id": f"r{i}", "eval_id": e, "test_acc": acc}
            for i, (base, gain) in enumerate([(0.5, 0.01), (0.9, 0.02), (0.7, 0.03)])
            for e, acc in (("a", base), ("b", base + gain))]
    summary, (comparison,) = compare_evaluations(rows, settings)
    assert comparison.paired and comparison.n_candidate == 3
    assert comparison.mean_diff == pytest.approx(0.02)  # paired: model differences cancel
    assert comparison.ci_high - comparison.ci_low < 0.06
    assert [s["models"] for s in summary] == [3, 3]


def test_evaluate_needs_checkpoints_and_settings(tmp_path):
    _, out = trained(tmp_path, save_checkpoints=False)
    with pytest.raises(ScalelabError, match=r"3 of 3 completed runs have no checkpoint .*"
                                            r"save_checkpoints: true"):
        scalelab.api.evaluate(out, device="cpu")
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({**EVAL_STUDY, "evaluations": []}))
    with pytest.raises(ScalelabError, match="declares no evaluation settings"):
        scalelab.api.evaluate(out, study=bare, device="cpu")
