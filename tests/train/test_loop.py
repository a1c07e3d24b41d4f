"""The loop's hooks act the same in every training strategy: a batch transform reaches the
training batches, the criterion is the training loss, post-step hooks see the weights after
each update, callbacks see every step and evaluation."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from scalelab.spec import validate_study
from scalelab.train import Callback, Hooks, train_group, train_run

from ..conftest import TINY


def configs(runs=1, **train):
    """The tiny study's runs (a constant learning rate: every step updates the weights)."""
    study = validate_study({**TINY, "grid": {}, "seeds": list(range(runs)),
                            "model": {**TINY["model"], "width": 8},
                            "train": {**TINY["train"], "schedule": "constant", **train}},
                           "t.yaml")
    return [r.config for r in study.runs]


def train(kind, hooks, **train_settings):
    """A run alone on the single loop, or the same configs as one stacked group."""
    if kind == "single":
        return [train_run(c, hooks=hooks) for c in configs(**train_settings)]
    return train_group(configs(**train_settings), hooks=hooks)


class Counter(Callback):
    def __init__(self):
        self.steps, self.evals, self.shapes = [], [], set()

    def on_step(self, step, losses):
        self.steps.append(step)
        self.shapes.add(tuple(losses.shape))

    def on_eval(self, step, run, values):
        self.evals.append((step, run, sorted(values)))


@pytest.mark.parametrize("kind", ["single", "stacked"])
def test_callbacks_see_every_step_and_evaluation(kind):
    counter = Counter()
    [result] = train(kind, Hooks(callbacks=[counter]))
    assert counter.steps == list(range(1, 41))
    assert counter.shapes == {(1,)}
    assert counter.evals == [(s, 0, ["lr", "train_loss", "val_acc", "val_loss"])
                             for s in (10, 20, 30, 40)]
    assert [(s, n) for s, n, _ in result.curves if n == "val_loss"] == \
        [(s, "val_loss") for s in (10, 20, 30, 40)]


@pytest.mark.parametrize("kind", ["single", "stacked"])
def test_a_batch_transform_reaches_every_training_batch(kind):
    seen = []

    def blank(batch, step):  # no input left to learn from: the model can only learn the prior
        seen.append((step, tuple(batch.x.shape)))
        return torch.zeros_like(batch.x), batch.y

    [plain] = train(kind, Hooks())
    [blanked] = train(kind, Hooks(batch_transform=blank))
    expected = (50, 1, 40) if kind == "single" else (1, 50, 1, 40)
    assert seen == [(s, expected) for s in range(1, 41)]
    assert plain.metrics["train_acc"] > 0.3
    assert blanked.metrics["train_acc"] < 0.15  # one class for every input


@pytest.mark.parametrize("kind", ["single", "stacked"])
def test_the_criterion_is_the_training_loss(kind):
    """Plain SGD on twice the loss takes exactly the steps of twice the learning rate (a
    factor of two is exact in floating point); the training curve shows the doubled loss."""

    def doubled(logits, target, reduction="mean"):
        return 2 * F.cross_entropy(logits, target, reduction=reduction)

    sgd = {"optimizer": "sgd", "momentum": 0.0}
    [twice_loss] = train(kind, Hooks(criterion=doubled), lr=0.05, **sgd)
    [twice_lr] = train(kind, Hooks(), lr=0.1, **sgd)
    for key in ("test_loss", "val_loss", "train_acc"):
        assert twice_loss.metrics[key] == pytest.approx(twice_lr.metrics[key], rel=1e-6)
    curves = [{s: v for s, n, v in r.curves if n == "train_loss"} for r in (twice_loss, twice_lr)]
    assert curves[0] == pytest.approx({s: 2 * v for s, v in curves[1].items()}, rel=1e-5)


def test_single_and_stacked_apply_the_same_hooks_alike():
    def hooks():
        return Hooks(batch_transform=lambda batch, step: (batch.x.flip(-1), batch.y),
                     criterion=functools.partial(F.cross_entropy, label_smoothing=0.1))

    [alone] = train("single", hooks())
    [stacked] = train("stacked", hooks())
    for key in ("test_loss", "val_loss", "train_acc"):
        assert stacked.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-4)


@pytest.mark.parametrize("kind", ["single", "stacked"])
def test_post_step_hooks_see_the_weights_after_each_update(kind):
    snapshots = []

    def keep_norm(step, parameters):
        snapshots.append(sum(float(p.detach().norm()) for p in parameters))

    def zero(step, parameters):  # undoes every update: the model never leaves zero
        with torch.no_grad():
            for p in parameters:
                p.zero_()

    [result] = train(kind, Hooks(post_step=[keep_norm]))
    assert len(snapshots) == 40 and len(set(snapshots)) == 40  # every update moved the weights
    [frozen] = train(kind, Hooks(post_step=[zero]))
    assert frozen.metrics["test_loss"] == pytest.approx(torch.log(torch.tensor(10.0)).item())
    assert result.metrics["test_loss"] < frozen.metrics["test_loss"]


def test_a_stacked_group_passes_runs_by_batch_inputs_to_the_transform():
    shapes = set()

    def record(batch, step):
        shapes.add((tuple(batch.x.shape), tuple(batch.y.shape)))
        return batch.x, batch.y

    results = train_group(configs(runs=2), hooks=Hooks(batch_transform=record))
    assert [r.status for r in results] == ["completed", "completed"]
    assert shapes == {((2, 50, 1, 40), (2, 50))}
