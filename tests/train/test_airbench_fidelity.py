"""scalelab's airbench94 study against the reference script, legacy/airbench94.py of
KellerJordan/cifar10-airbench, whose training step is re-enacted here with the script's own
constants (each with its line in that file) and its own schedule, lookahead and freezing
code paths. The study file is loaded as it is; only its size is overridden (a generated
CIFAR-format set, narrow widths, batch 50, 4.93 epochs: 50 steps by the reference's
ceil rule, 49 by rounding), so a constant changed in the study is caught here.

The reference shares only the model's initial weights (its whitening filters included; the
whitening bias is zeroed by the reference's own ``Conv.reset_parameters``) and the random
streams (data order from the seed, augmentation from the seed's augmentation stream) with
scalelab. scalelab translates then flips with the combined mask; the reference flips,
translates, flips: the same distribution (shifts are uniform and symmetric), so the test
draws in scalelab's order."""

from __future__ import annotations

import copy
from math import ceil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scalelab.plugin import instantiate
from scalelab.registry import models, tasks
from scalelab.spec import load_study
from scalelab.train import Callback, Hooks, train_run
from scalelab.train.common import build, epoch_steps
from scalelab.train.options import AUGMENT_STREAM
from scalelab.train.scoring import evaluate

STUDY = Path(__file__).resolve().parents[2] / "studies" / "airbench94.yaml"

# legacy/airbench94.py, hyp['opt'] and main():
LR = 11.5             # line 42: learning rate per 1024 examples
MOMENTUM = 0.85       # line 43
WD = 0.0153           # line 44: weight decay per 1024 examples
BIAS_SCALER = 64.0    # line 45: lr multiplier of BatchNorm biases (not their decay)
SMOOTHING = 0.2       # line 46
WHITEN_BIAS_EPOCHS = 3  # line 47
TRANSLATE = 2         # line 51
WARMUP = 0.23         # line 382: warmup_steps = int(total_train_steps * 0.23)
LR_START, LR_END = 0.2, 0.07  # lines 386, 389
LOOKAHEAD_EVERY, LOOKAHEAD_DECAY, LOOKAHEAD_POWER = 5, 0.95 ** 5, 3  # lines 392, 430

BATCH, EPOCHS, N_TRAIN, SEED = 50, 4.93, 520, 3


def study_config() -> dict:
    study = load_study(STUDY, overrides=[
        "task.synthetic=60", f"task.num_train={N_TRAIN}", "model.widths=[8, 16, 16]",
        f"train.batch_size={BATCH}", f"train.epochs={EPOCHS}", "train.precision=fp32",
        "train.channels_last=false", "train.eval_every=1000", f"seeds=[{SEED}]"])
    return study.runs[0].config


def reference_run(model: torch.nn.Module, data) -> list[float]:
    """legacy/airbench94.py's main() on (x_train, y_train), step for step; per-example losses."""
    with torch.no_grad():
        model.whiten.bias.zero_()  # lines 183-186: Conv.reset_parameters zeroes a conv bias
    n = len(data.y_train)
    steps_per_epoch = n // BATCH                                # line 124 (drop_last)
    total = ceil(steps_per_epoch * EPOCHS)                      # line 370
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))                  # line 359
    lr = LR / kilostep                                          # line 360
    wd = WD * BATCH / kilostep                                  # line 361
    lr_biases = lr * BIAS_SCALER                                # line 362
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                                 dict(params=others, lr=lr, weight_decay=wd / lr)],
                                momentum=MOMENTUM, nesterov=True)  # lines 377-379

    def get_lr(step):                                           # lines 381-389
        warmup_steps = int(total * WARMUP)
        warmdown_steps = total - warmup_steps
        if step < warmup_steps:
            frac = step / warmup_steps
            return LR_START * (1 - frac) + 1.0 * frac
        frac = (step - warmup_steps) / warmdown_steps
        return 1.0 * (1 - frac) + LR_END * frac

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, get_lr)
    alpha = LOOKAHEAD_DECAY * (torch.arange(total + 1) / total) ** LOOKAHEAD_POWER  # line 392
    ema = {k: v.clone() for k, v in model.state_dict().items()}  # LookaheadState, line 265

    def lookahead(decay):                                       # lines 267-271
        for ema_param, net_param in zip(ema.values(), model.state_dict().values()):
            if net_param.dtype in (torch.half, torch.float):
                ema_param.lerp_(net_param, 1 - decay)
                net_param.copy_(ema_param)

    order_stream = torch.Generator().manual_seed(SEED)
    augment_stream = torch.Generator().manual_seed(SEED + AUGMENT_STREAM)
    fixed_flip = torch.rand(n, generator=augment_stream) < 0.5  # line 132: flipped once
    losses, current_steps = [], 0
    for epoch in range(ceil(EPOCHS)):                           # line 408
        model.whiten.bias.requires_grad = epoch < WHITEN_BIAS_EPOCHS  # line 410
        model.train()
        order = torch.randperm(n, generator=order_stream)      # line 151
        for b in range(steps_per_epoch):
            rows = order[b * BATCH:(b + 1) * BATCH]
            shifts = torch.randint(0, 2 * TRANSLATE + 1, (BATCH, 2), generator=augment_stream)
            padded = F.pad(data.x_train[rows], (TRANSLATE,) * 4, mode="reflect")  # line 136
            images = torch.stack([p[:, dy:dy + 32, dx:dx + 32]
                                  for p, (dy, dx) in zip(padded, shifts.tolist())])
            flip = fixed_flip[rows] ^ bool(epoch % 2)           # lines 146-147
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            loss = F.cross_entropy(model(images), data.y_train[rows], label_smoothing=SMOOTHING,
                                   reduction="none").sum()      # lines 364, 422
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            current_steps += 1
            losses.append(loss.item() / BATCH)
            if current_steps % LOOKAHEAD_EVERY == 0:            # lines 430-431
                with torch.no_grad():
                    lookahead(alpha[current_steps].item())
            if current_steps >= total:                          # lines 433-436
                with torch.no_grad():
                    lookahead(1.0)
                break
    return losses


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_step(self, step, losses):
        self.values.append(losses.item())


def test_the_step_count_follows_the_reference_loader():
    assert epoch_steps(9.9, 50_000 // 1024) == 476  # the published recipe's 476 steps
    assert epoch_steps(EPOCHS, N_TRAIN // BATCH) == 50
    assert epoch_steps(0.1, 30) == 3  # 0.1 x 30 is 3.0000000000000004 in floating point
    assert epoch_steps(2, 7) == 14


def test_the_study_trains_like_the_published_script_for_50_steps():
    config = study_config()
    assert config["task"]["num_val"] == 0  # all training images, as the reference
    data = instantiate(tasks, config["task"]).load()
    assert len(data.y_train) == N_TRAIN and len(data.y_val) == 0
    model = build(config, data)
    assert torch.count_nonzero(model.whiten.bias) == 0
    reference_model = copy.deepcopy(model)
    reference = reference_run(reference_model, data)
    seen = Losses()
    result = train_run(config, hooks=Hooks(callbacks=[seen]))
    assert result.status == "completed", result.error
    assert len(seen.values) == len(reference) == 50 == result.metrics["steps"]
    assert seen.values == pytest.approx(reference, abs=1e-4)
    assert reference[-1] < reference[0] - 0.05  # it learned: the comparison is not of noise
    # The final (lookahead-averaged) weights score the test set the same.
    test_loss, test_acc = evaluate(reference_model, data.x_test, data.y_test, 4096)
    assert result.metrics["test_loss"] == pytest.approx(test_loss, abs=1e-4)
    assert result.metrics["test_acc"] == pytest.approx(test_acc, abs=1e-9)
    # Trained without a validation split: no val metrics, the span airbench times recorded.
    assert "val_loss" not in result.metrics and result.metrics["no_validation_split"]
    assert {name for _, name, _ in result.curves} == {"train_loss", "lr"}
    m = result.metrics
    assert 0 < m["test_eval_time_s"] < m["time_to_result_s"] < m["total_time"]


def test_the_learning_rate_scales_with_the_batch_size_as_the_reference_constants_do():
    """The reference states lr and weight decay per 1,024 examples of a summed loss; with
    scalelab's mean loss the per-step lr is proportional to the batch, and so is the
    coupled decay per step (lr x weight_decay = 0.0153 x batch / 7850.7, line 361)."""
    from scalelab.spec import TrainConfig

    config = study_config()
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))
    for batch in (50, 512, 1024, 2048):
        cfg = TrainConfig.model_validate(config["train"]).at_batch(batch)
        assert cfg.lr == pytest.approx(LR / kilostep * batch, rel=1e-4)
        assert cfg.lr * cfg.weight_decay == pytest.approx(WD * batch / kilostep, rel=1e-4)


def test_the_whitening_layer_whitens_the_patches_it_was_fitted_on():
    """Its first half of filters maps 2x2 patches of the training images to coordinates
    with unit variance and no correlation (up to eps); the second half is their negative."""
    data = instantiate(tasks, {"name": "cifar10", "synthetic": 40, "num_val": 20}).load()
    family = instantiate(models, {"name": "airbench", "widths": [8, 8, 8], "whiten_eps": 1e-8})
    model = family.build((3, 32, 32), 10)
    family.initialize(model, data)
    w = model.whiten.weight.detach().double()
    assert torch.equal(w[12:], -w[:12]) and not model.whiten.weight.requires_grad
    patches = data.x_train.double().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5)
    flat = patches.reshape(-1, 12)
    out = flat @ w[:12].reshape(12, -1).T
    covariance = out.T @ out / len(out)
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.float64), atol=1e-3)


def test_counting_flops_leaves_batchnorm_statistics_as_they_were():
    from scalelab.methods import Method
    from scalelab.train.common import counted_compute

    model = instantiate(models, {"name": "resnet", "depth": 18, "width": 4, "stem": "cifar"}
                        ).build((3, 32, 32), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    flops, forward = counted_compute(Method(), model, x, y, 8)
    assert flops > 3 * 8 * forward * 0.9 > 0  # backward counted too
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
