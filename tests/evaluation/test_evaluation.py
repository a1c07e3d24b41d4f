"""Test-time augmentation and re-scoring checkpoints without retraining."""

import json

import pytest
import torch
import yaml
from torch import nn

import scalelab
from scalelab.errors import ScalelabError
from scalelab.evaluation.tta import TTA, shift, views
from scalelab.store import Store

from ..conftest import TINY


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
    """Train the study without evaluation settings; return (file with them, output dir)."""
    path = tmp_path / "ev.yaml"
    path.write_text(yaml.safe_dump({**EVAL_STUDY, **changes, "evaluations": []}))
    result = scalelab.run(path, out=tmp_path / "out", device="cpu")
    assert result.ok
    with_settings = tmp_path / "ev_settings.yaml"
    with_settings.write_text(yaml.safe_dump({**EVAL_STUDY, **changes}))
    return with_settings, tmp_path / "out"


def test_evaluate_rescores_every_checkpoint_and_trains_nothing(tmp_path):
    study, out = trained(tmp_path)
    with Store.open(out) as store:
        before = store.records()
        assert store.evaluations() == []
    result = scalelab.api.evaluate(out, study=study, device="cpu")
    assert (result.models, result.scored, len(result.settings)) == (3, 9, 3)
    with Store.open(out) as store:
        after, rows = store.records(), store.evaluations()
    assert before == after  # no run was trained or touched
    assert {r["run_id"] for r in rows} == {r["run_id"] for r in before}
    by_run = {r["run_id"]: r for r in before}
    for row in rows:  # rows are linked to their run: the plain forward reproduces its test_acc
        if row["eval.level"] == 0:
            assert row["test_acc"] == pytest.approx(by_run[row["run_id"]]["test_acc"])
    again = scalelab.api.evaluate(out, study=study, device="cpu")
    assert (again.scored, again.already_done) == (0, 9)
    rerun = scalelab.run(study, out=out, device="cpu")  # run evaluates what is declared
    assert not rerun.trained
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
    study, out = trained(tmp_path, save_checkpoints=False)
    with pytest.raises(ScalelabError, match=r"3 of 3 completed runs have no checkpoint .*"
                                            r"save_checkpoints: true"):
        scalelab.api.evaluate(out, study=study, device="cpu")
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({**EVAL_STUDY, "evaluations": []}))
    with pytest.raises(ScalelabError, match="declares no evaluation settings"):
        scalelab.api.evaluate(out, study=bare, device="cpu")


# ------------------------------------------------------------------- test-time training


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def test_knn_matches_brute_force():
    from scalelab.evaluation.ttt import nearest

    torch.manual_seed(0)
    train, queries = torch.randn(300, 5), torch.randn(40, 5)
    found = nearest(train, queries, 7, chunk=16)
    for q, row in zip(queries, found):
        brute = sorted(range(300), key=lambda i: float(((train[i] - q) ** 2).sum()))[:7]
        assert sorted(row.tolist()) == sorted(brute)


@pytest.mark.parametrize("layers", [1, 2])
def test_batched_finetuning_equals_the_per_point_loop(layers):
    from scalelab.evaluation.ttt import finetune_one, finetune_stacked, split_head

    model = small_mlp()
    body, head = split_head(model, layers)
    torch.manual_seed(1)
    x = torch.randn(6, 1, 12)
    feats = body(torch.randn(6, 10, 1, 12).flatten(0, 1)).view(6, 10, -1).detach()
    labels = torch.randint(0, 3, (6, 10))
    queries = body(x).detach()
    stacked = finetune_stacked(head, feats, labels, queries, steps=15, lr=0.05)
    for i in range(6):
        alone = finetune_one(head, feats[i], labels[i], queries[i], steps=15, lr=0.05)
        torch.testing.assert_close(stacked[i], alone, rtol=1e-4, atol=1e-5)
    untouched = finetune_stacked(head, feats, labels, queries, steps=0, lr=0.05)
    torch.testing.assert_close(untouched, head(queries))  # zero steps: the global head


def test_majority_vote_and_ttt_evaluators_score_a_task():
    from scalelab.registry import evaluators

    data = scalelab.plugin.instantiate(scalelab.registry.tasks, {
        "name": "mnist1d", "num_train": 300, "num_val": 50, "num_test": 100,
        "pool_size": 400}).load()
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))
    vote = scalelab.plugin.instantiate(evaluators, {"name": "knn_vote", "k": 1})
    vote.prepare(model, data)
    # k = 1 on the training points themselves returns their own labels
    assert torch.equal(vote.logits(model, data.x_train[:50]).argmax(1), data.y_train[:50])
    ttt = scalelab.plugin.instantiate(evaluators, {"name": "ttt", "k": 10, "steps": 3})
    metrics = ttt.evaluate(model, data)
    assert 0 <= metrics["test_acc"] <= 1 and len(metrics["test_acc_by_class"]) == 10
    with pytest.raises(ScalelabError, match="k: 500 exceeds the 300 training points"):
        scalelab.plugin.instantiate(evaluators, {"name": "ttt", "k": 500}).evaluate(model, data)


def test_gains_by_point_pair_by_model_within_each_size():
    from scalelab.analysis.evaluations import gains_by_point

    settings = [{"eval_id": "a", "config": {"name": "plain"}},
                {"eval_id": "b", "config": {"name": "ttt", "k": 5}}]
    records = [{"run_id": f"w{w}s{s}", "width": w, "n_params": 10 * w, "seed": s}
               for w in (8, 64) for s in range(3)]
    rows = [{"run_id": f"w{w}s{s}", "eval_id": e, "test_acc": 0.5 + 0.1 * s + gain}
            for w, g in ((8, 0.05), (64, 0.0)) for s in range(3)
            for e, gain in (("a", 0.0), ("b", g + 0.001 * s))]
    gains = gains_by_point(rows, settings, records, ["width"])
    assert [(g["width"], g["setting"]) for g in gains] == [
        (8, "plain"), (8, "ttt k=5"), (64, "plain"), (64, "ttt k=5")]
    small = gains[1]
    assert small["gain"] == pytest.approx(0.051) and small["n_params"] == 80
    assert small["gain_low"] < 0.051 < small["gain_high"] and small["gain_high"] - small["gain_low"] < 0.01


# ------------------------------------------------------------------- embeddings task


def test_embeddings_task_reads_pt_and_npy_features(tmp_path):
    import numpy as np

    from scalelab.registry import tasks

    torch.save(torch.randn(300, 8), tmp_path / "train_features.pt")
    torch.save(torch.randint(0, 4, (300,)), tmp_path / "train_labels.pt")
    np.save(tmp_path / "val_features.npy", np.ones((20, 8), np.float32))
    np.save(tmp_path / "val_labels.npy", np.zeros(20, np.int64))
    np.save(tmp_path / "test_features.npy", np.full((30, 8), 2.0, np.float32))
    np.save(tmp_path / "test_labels.npy", np.arange(30) % 4)
    data = scalelab.plugin.instantiate(tasks, {"name": "embeddings", "path": str(tmp_path),
                                               "num_train": 100, "normalize": True}).load()
    assert data.x_train.shape == (100, 8) and len(data.y_val) == 20 and data.num_classes == 4
    torch.testing.assert_close(data.x_test.norm(dim=1), torch.ones(30))
    study = {**TINY, "name": "probe", "grid": {},
             "task": {"name": "embeddings", "path": str(tmp_path)},
             "model": {"name": "mlp", "depth": 0}}  # a linear probe
    result = scalelab.train.train_run(scalelab.spec.validate_study(study).runs[0].config)
    assert result.status == "completed" and result.metrics["n_params"] == 8 * 4 + 4


def test_embeddings_task_names_the_missing_files(tmp_path):
    from scalelab.registry import tasks

    with pytest.raises(ScalelabError, match=r"task.path: missing .*train_features.npy or "
                                            r".*train_features.pt"):
        scalelab.plugin.instantiate(tasks, {"name": "embeddings", "path": str(tmp_path)}).load()


def test_tuned_evaluation_settings_are_chosen_per_shape_on_validation_only():
    from scalelab.analysis.evaluations import compare_evaluations, tune_per_shape

    settings = [{"eval_id": "plain", "config": {"name": "plain"}, "tune": []}]
    for k in (10, 50):
        settings.append({"eval_id": f"ttt{k}", "config": {"name": "ttt", "k": k, "steps": 10},
                         "tune": ["k"]})
    records, rows = [], []
    for width in (8, 32):
        for seed in range(3):
            rid = f"{width}-{seed}"
            records.append({"run_id": rid, "width": width, "seed": seed})
            rows.append({"run_id": rid, "eval_id": "plain", "val_loss": 1.0, "val_acc": 0.8,
                         "test_acc": 0.80})
            good_k = 10 if width == 8 else 50
            for k in (10, 50):
                # the test set favours the other k: a choice made on test would flip; so
                # does validation loss, which is not the metric compared
                rows.append({"run_id": rid, "eval_id": f"ttt{k}",
                             "val_acc": 0.85 if k == good_k else 0.81,
                             "val_loss": 0.9 if k == good_k else 0.5,
                             "test_acc": 0.82 if k == good_k else 0.95})
    by_loss = tune_per_shape(rows, settings, records, ["width"], "val_loss")[2]
    assert [(w["point"]["width"], w["chosen"]["k"]) for w in by_loss] == [(8, 50), (32, 10)]
    tuned_rows, tuned_settings, winners = tune_per_shape(rows, settings, records, ["width"])
    assert [s["config"] for s in tuned_settings] == [
        {"name": "plain"}, {"name": "ttt", "k": "tuned", "steps": 10}]
    assert [(w["point"]["width"], w["chosen"]["k"]) for w in winners] == [(8, 10), (32, 50)]
    assert all(w["at_edge"] == ["k"] for w in winners)
    ttt = [r for r in tuned_rows if r["eval_id"].startswith("tuned-")]
    assert len(ttt) == 6 and {r["test_acc"] for r in ttt} == {0.82}
    summary, (comparison,) = compare_evaluations(tuned_rows, tuned_settings)
    assert summary[1]["setting"] == "ttt k=tuned steps=10"
    assert comparison.mean_diff == pytest.approx(0.02)


def test_tune_names_must_be_swept_settings_of_their_entry(tmp_path, tiny_study):
    from scalelab.errors import StudyError
    from scalelab.spec import load_study

    path = tiny_study(tmp_path, save_checkpoints=True,
                      evaluations=["plain", {"name": "ttt", "k": 20, "tune": ["k"]}])
    with pytest.raises(StudyError, match=r"evaluations\[1\]\.tune\[0\]: 'k' is not a setting of "
                                         "this entry given as a list"):
        _ = load_study(path).evaluations
    path = tiny_study(tmp_path, save_checkpoints=True,
                      evaluations=["plain", {"name": "ttt", "k": [5, 20], "tune": ["k"]}])
    study = load_study(path)
    assert len(study.evaluations) == 3 and len(study.evaluation_tune) == 2
    assert all(v == ["k"] for v in study.evaluation_tune.values())


def test_evaluate_command_prints_the_settings_table_and_json(tmp_path):
    from typer.testing import CliRunner

    from scalelab.cli import app

    study, out = trained(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", str(out), "--study", str(study), "--device",
                                      "cpu", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "9 evaluations now, 0 already stored (3 models x 3 settings); nothing was trained" \
        in result.output
    assert "tta level=2 untranslated_weight=0.3" in result.output
    again = CliRunner().invoke(app, ["evaluate", str(out), "--study", str(study), "--device",
                                     "cpu", "--no-report", "--format", "json"])
    payload = json.loads(again.output)
    assert (payload["scored"], payload["already_done"], payload["models"]) == (0, 9, 3)
    assert len(payload["settings"]) == 3


def test_a_deleted_checkpoint_is_trained_again_with_the_same_numbers(tmp_path):
    study, out = trained(tmp_path, save_checkpoints=True)
    with Store.open(out) as store:
        before = {r["run_id"]: r for r in store.records()}
    lost = sorted((out / "checkpoints").glob("*.pt"))[0]
    lost.unlink()
    with pytest.raises(ScalelabError, match=r"1 of 3 completed runs have no checkpoint .*"
                                            r"`scalelab run .* --out .*` trains them again"):
        scalelab.api.evaluate(out, study=study, device="cpu")
    result = scalelab.run(study, out=out, device="cpu", workers=1)
    assert result.trained == {"completed": 1} and lost.exists()
    with Store.open(out) as store:
        after = {r["run_id"]: r for r in store.records()}
        assert len(store.evaluations()) == 9  # and the study's evaluations then ran
    for key in ("test_loss", "val_loss", "steps"):
        assert after[lost.stem][key] == before[lost.stem][key]


def test_a_weight_sweep_makes_each_view_forward_once_and_scores_as_each_alone():
    """The settings of one model share its forward passes (a sweep of TTA weights made every
    view's forward once per weight before): the same numbers, to the bit, as each setting
    scored alone, and as the views summed batch by batch."""
    from types import SimpleNamespace

    from scalelab.evaluation._base import Forwards

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 5))
    calls = []
    net.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    data = SimpleNamespace(x_val=torch.randn(9, 3, 6, 6), y_val=torch.randint(0, 5, (9,)),
                           x_test=torch.randn(11, 3, 6, 6), y_test=torch.randint(0, 5, (11,)),
                           num_classes=5)
    settings = [TTA(TTA.Config(level=2, untranslated_weight=w)) for w in (0.5, 0.3, 0.7)]
    settings += [TTA(TTA.Config(level=1)), TTA(TTA.Config(level=0))]
    forwards = Forwards()
    shared = [s.evaluate(net, data, 4, forwards) for s in settings]
    assert forwards.made == 2 * 6  # six views of each split, once: levels 1 and 0 reuse them
    assert len(calls) == 2 * 6 * 3  # in batches of 4: 3 per split
    alone = [s.evaluate(net, data, 4) for s in settings]
    for a, b in zip(shared, alone):
        assert a.pop("eval_time_s") > 0 and b.pop("eval_time_s") > 0
        assert a == b
    level2 = settings[1]
    with torch.no_grad():
        by_batch = torch.cat([level2.logits(net, data.x_test[i:i + 4]) for i in (0, 4, 8)])
        whole, _ = level2.split_logits(net, "test", data.x_test, 4, Forwards())
    assert torch.equal(by_batch, whole)
