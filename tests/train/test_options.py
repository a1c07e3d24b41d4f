"""Training options that act through the loop's hooks: augmentation, label smoothing,
weight averaging, parameter groups and the airbench schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scalelab.errors import StudyError
from scalelab.evaluation.tta import shift
from scalelab.spec import Augment, Averaging, TrainConfig, validate_study
from scalelab.train import Hooks, train_group, train_run
from scalelab.train.loop import Batch
from scalelab.train.optim import lr_factor, make_optimizer
from scalelab.train.options import Augmentation, WeightAveraging, cutout, translate, with_options

from ..conftest import TINY


def test_translate_moves_each_image_by_its_own_offset_with_reflection():
    x = torch.randn(3, 2, 6, 7)
    offsets = torch.tensor([[0, 4], [2, 2], [4, 1]])  # pad 2: offset 2 is no move
    out = translate(x, offsets, 2)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], shift(x[i:i + 1], (2 - dy, 2 - dx))[0])


def test_cutout_zeroes_one_square_per_image_clipped_at_the_edge():
    x = torch.ones(2, 3, 8, 8)
    out = cutout(x, torch.tensor([[4, 4], [0, 7]]), 4)
    assert (out[0] == 0).sum() == 3 * 16 and (out[0, :, 2:6, 2:6] == 0).all()
    assert (out[1] == 0).sum() == 3 * 2 * 3 and (out[1, :, 0:2, 5:8] == 0).all()


def test_alternating_flip_flips_every_image_the_other_way_in_odd_epochs():
    aug = Augmentation(Augment(flip="alternating"), [0], n_train=8)
    x = torch.randn(8, 1, 4, 4)
    rows = torch.arange(8)
    even = aug(Batch(x, torch.zeros(8), rows, 0, False, 0.0), 1)[0]
    odd = aug(Batch(x, torch.zeros(8), rows, 0, False, 1.0), 2)[0]
    for i in range(8):
        assert torch.equal(odd[i], even[i].flip(-1))
        assert torch.equal(even[i], x[i]) or torch.equal(even[i], x[i].flip(-1))
    assert 0 < sum(torch.equal(even[i], x[i]) for i in range(8)) < 8


def configs(runs=1, **train):
    study = validate_study({**TINY, "grid": {}, "seeds": list(range(runs)),
                            "model": {"name": "cnn", "channels": 4, "depth": 2},
                            "train": {**TINY["train"], **train}}, "t.yaml")
    return [r.config for r in study.runs]


def test_augmented_runs_train_the_same_alone_and_stacked():
    settings = {"augment": {"flip": "random", "translate": 1, "cutout": 3},
                "label_smoothing": 0.1,
                "averaging": {"kind": "ema", "decay": 0.9, "every": 2}}
    alone = [train_run(c) for c in configs(2, **settings)]
    stacked = train_group(configs(2, **settings))
    plain = train_run(configs(1)[0])
    for a, s in zip(alone, stacked):
        assert s.metrics["test_loss"] == pytest.approx(a.metrics["test_loss"], rel=1e-4)
    assert alone[0].metrics["test_loss"] != pytest.approx(plain.metrics["test_loss"], rel=1e-3)


def test_label_smoothing_is_the_training_loss_and_not_the_evaluation():
    hooks = with_options(Hooks(), TrainConfig(max_steps=1, label_smoothing=0.3), [0], 10)
    logits, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    assert torch.equal(hooks.criterion(logits, y),
                       F.cross_entropy(logits, y, label_smoothing=0.3))

    def losses(result, name):
        return [v for _, n, v in result.curves if n == name]

    smooth = train_run(configs(1, label_smoothing=0.5, lr=1e-9, schedule="constant")[0])
    plain = train_run(configs(1, lr=1e-9, schedule="constant")[0])
    # lr ~ 0: the same weights, so validation (plain cross-entropy) is the same
    assert losses(smooth, "val_loss") == pytest.approx(losses(plain, "val_loss"), rel=1e-6)


def test_lookahead_pulls_the_weights_toward_their_average_and_ends_on_it():
    hook = WeightAveraging(Averaging(kind="lookahead", every=2, decay=0.5))
    w = torch.zeros(3)
    hook.begin([w], total_steps=4)
    w += 1.0  # step 1's update
    hook(1, [w])
    assert torch.equal(w, torch.ones(3))  # not a lookahead step
    hook(2, [w])
    assert torch.equal(w, torch.full((3,), 0.5))  # halfway back to the average (0)
    ema = WeightAveraging(Averaging(kind="ema", every=1, decay=0.5, warmup_power=1))
    v = torch.ones(1)
    ema.begin([torch.zeros(1)], total_steps=2)
    ema(1, [v])  # decay 0.5 * (1/2): average 0.75; the model keeps its weights
    assert v.item() == 1.0 and ema.average[0].item() == 0.75
    ema(2, [v])  # decay 0.5: average 0.875, copied in at the end
    assert v.item() == 0.875


def test_parameter_groups_scale_lr_and_decay_and_freeze_after_their_epochs():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    cfg = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.01, max_steps=1,
                      param_groups=[{"match": "1.bias", "lr_scale": 64,
                                     "weight_decay_scale": 0.5},
                                    {"match": "0.*", "frozen_after_epochs": 2}])
    optimizer = make_optimizer(model, cfg)
    groups = {tuple(id(p) for p in g["params"]): g for g in optimizer.param_groups}
    bias = groups[(id(model[1].bias),)]
    assert bias["lr"] == pytest.approx(6.4) and bias["weight_decay"] == pytest.approx(0.005)
    from scalelab.train.optim import set_lr

    set_lr(optimizer, 0.5, epochs_done=1.9)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([3.2, 0.05, 0.05])
    set_lr(optimizer, 0.5, epochs_done=2.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([3.2, 0.0, 0.05])


def test_the_airbench_schedule_is_airbenchs_interpolation():
    cfg = TrainConfig(max_steps=100, schedule="airbench", warmup_fraction=0.2,
                      initial_lr_ratio=0.2, final_lr_ratio=0.07)
    expected = np.interp(np.arange(100), [0, 20, 100], [0.2, 1, 0.07])
    assert [lr_factor(s, 100, cfg) for s in range(100)] == pytest.approx(expected)


def test_augmenting_token_ids_is_refused_when_the_study_is_validated():
    raw = {"name": "lm", "task": {"name": "text", "source": "pydocs"},
           "model": {"name": "gpt"}, "train": {"max_steps": 1, "augment": {"flip": "random"}},
           "seeds": 1}
    with pytest.raises(StudyError, match="train.augment: .*image or signal"):
        validate_study(raw, "lm.yaml")


def test_settings_left_at_their_defaults_keep_the_run_ids_of_older_stores():
    [config] = configs(1)
    assert "augment" not in config["train"] and "label_smoothing" not in config["train"]
    [smoothed] = configs(1, label_smoothing=0.1)
    assert smoothed["train"]["label_smoothing"] == 0.1


def test_rapl_counters_give_a_runs_energy_across_a_wraparound(tmp_path, monkeypatch):
    from scalelab.train import energy

    package = tmp_path / "intel-rapl:0"
    (tmp_path / "intel-rapl:0:0").mkdir(parents=True)  # a sub-domain (cores): not counted
    package.mkdir()
    (package / "energy_uj").write_text("999000000")
    (package / "max_energy_range_uj").write_text("1000000000")
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("5")
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    with energy.EnergyMeter(torch.device("cpu")) as meter:
        (package / "energy_uj").write_text("2500000")  # wrapped: 1,000 J + 2.5 J later
    assert meter.joules == pytest.approx(3.5) and meter.source == "rapl:intel-rapl:0"
    assert energy.energy_metrics(meter, runs=2) == {"energy_j": pytest.approx(1.75),
                                                    "energy_source": "rapl:intel-rapl:0"}
    from scalelab import devices

    monkeypatch.setattr(devices, "sharing", devices.Sharing(cpu=True))  # others on the package
    with energy.EnergyMeter(torch.device("cpu")) as shared:
        pass
    assert shared.joules is None and energy.energy_metrics(shared) == {}


def test_no_counter_means_no_energy_recorded(tmp_path, monkeypatch):
    from scalelab.train import energy

    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "absent")
    result = train_run(configs(1)[0])
    assert "energy_j" not in result.metrics and result.status == "completed"
