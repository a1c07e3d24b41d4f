"""scalelab's airbench94 recipe against a reference training loop written here from the
recipe's published description (airbench94, Jordan 2024): summed label-smoothed loss, SGD
with Nesterov momentum whose lr and weight decay are given per 1,024 examples, BatchNorm
biases at 64x the lr, the whitening bias frozen after 3 epochs, lr by np.interp through
(0, 0.2), (20%, 1), (end, 0.07), lookahead every 5 steps with strength 0.95^5 (t/T)^3 and the
average copied in at the end, alternating flip and 2-pixel reflect-padded translation.

The reference shares only the model's initial weights and the random streams (data order
from the seed, augmentation from the seed's augmentation stream) with scalelab."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scalelab.plugin import instantiate
from scalelab.registry import models, tasks
from scalelab.spec import validate_study
from scalelab.train import Callback, Hooks, train_run
from scalelab.train.options import AUGMENT_STREAM
from scalelab.train.run import build

LR, WD, MOMENTUM, BIAS_SCALE, SMOOTHING = 11.5, 0.0153, 0.85, 64.0, 0.2
BATCH, EPOCHS, SEED = 50, 5, 3


def study_config(n_train: int) -> dict:
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))
    raw = {
        "name": "fidelity",
        "task": {"name": "cifar10", "synthetic": 60, "num_val": 100, "num_train": n_train},
        "model": {"name": "airbench", "widths": [8, 16, 16]},
        "train": {
            "optimizer": "sgd", "momentum": MOMENTUM, "nesterov": True,
            "lr": LR / kilostep * BATCH, "weight_decay": WD / LR,
            "batch_size": BATCH, "epochs": EPOCHS, "label_smoothing": SMOOTHING,
            "schedule": "airbench", "warmup_fraction": 0.2, "initial_lr_ratio": 0.2,
            "final_lr_ratio": 0.07,
            "param_groups": [{"match": "*norm*.bias", "lr_scale": BIAS_SCALE,
                              "weight_decay_scale": 1 / BIAS_SCALE},
                             {"match": "whiten.bias", "frozen_after_epochs": 3}],
            "averaging": {"kind": "lookahead", "every": 5, "decay": 0.95 ** 5,
                          "warmup_power": 3},
            "augment": {"flip": "alternating", "translate": 2},
            "restore_best": False, "eval_every": 1000,
        },
        "seeds": [SEED],
    }
    return validate_study(raw, "fidelity.yaml").runs[0].config


def reference_losses(config: dict, model: torch.nn.Module, data) -> list[float]:
    """The recipe as published, step by step (loss per example, to compare with the mean)."""
    n = len(data.y_train)
    steps_per_epoch = n // BATCH
    total = round(EPOCHS * steps_per_epoch)
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr = LR / kilostep
    wd = WD * BATCH / kilostep
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
    groups = [{"params": norm_biases, "lr": lr * BIAS_SCALE, "weight_decay": wd / (lr * BIAS_SCALE)},
              {"params": others, "lr": lr, "weight_decay": wd / lr}]
    optimizer = torch.optim.SGD(groups, momentum=MOMENTUM, nesterov=True)
    for g in groups:
        g["initial_lr"] = g["lr"]
    schedule = np.interp(np.arange(total + 1), [0, int(0.2 * total), total], [0.2, 1, 0.07])
    average = {k: v.clone() for k, v in model.state_dict().items()}

    order_stream = torch.Generator().manual_seed(SEED)
    augment_stream = torch.Generator().manual_seed(SEED + AUGMENT_STREAM)
    fixed_flip = torch.rand(n, generator=augment_stream) < 0.5
    losses, step = [], 0
    model.train()
    for epoch in range(EPOCHS):
        if epoch == 3:
            model.whiten.bias.requires_grad_(False)
        order = torch.randperm(n, generator=order_stream)
        for b in range(steps_per_epoch):
            rows = order[b * BATCH:(b + 1) * BATCH]
            images = data.x_train[rows]
            shifts = torch.randint(0, 5, (BATCH, 2), generator=augment_stream)
            padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
            images = torch.stack([p[:, dy:dy + 32, dx:dx + 32]
                                  for p, (dy, dx) in zip(padded, shifts.tolist())])
            flip = fixed_flip[rows] ^ bool(epoch % 2)
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * schedule[step]
            loss = F.cross_entropy(model(images), data.y_train[rows],
                                   label_smoothing=SMOOTHING, reduction="none").sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item() / BATCH)
            if step % 5 == 0:
                decay = 0.95 ** 5 * (step / total) ** 3
                with torch.no_grad():
                    for key, value in model.state_dict().items():
                        if value.is_floating_point():
                            average[key].lerp_(value, 1 - decay)
                            value.copy_(average[key])
    return losses


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_step(self, step, losses):
        self.values.append(losses.item())


def test_the_recipe_follows_the_published_training_step_for_50_steps():
    config = study_config(n_train=500)  # 10 steps an epoch, 5 epochs: 50 steps
    data = instantiate(tasks, config["task"]).load()
    reference = reference_losses(config, copy.deepcopy(build(config, data)), data)
    seen = Losses()
    result = train_run(config, hooks=Hooks(callbacks=[seen]))
    assert result.status == "completed", result.error
    assert len(seen.values) == len(reference) == 50
    assert seen.values == pytest.approx(reference, abs=1e-4)
    assert reference[-1] < reference[0] - 0.05  # it learned: the comparison is not of noise


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
    from scalelab.train.run import counted_compute

    model = instantiate(models, {"name": "resnet", "depth": 18, "width": 4, "stem": "cifar"}
                        ).build((3, 32, 32), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    flops, forward = counted_compute(Method(), model, x, y, 8)
    assert flops > 3 * 8 * forward * 0.9 > 0  # backward counted too
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
