"""What the strategies share, below them and above the loop: the model from its seed, the step
budget, counted compute, bf16 autocast, the one-model optimizer step (:class:`OneModel`),
final metrics and checkpoints.

Every strategy imports from here and nothing here imports a strategy, so training flows one
way: ``run`` (the entries) -> the strategies -> ``common`` -> the loop and its leaves.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import synchronize
from ..errors import ScalelabError, first_line
from ..models import buffers_kept
from ..models.flops import count_flops, step_flops
from ..plugin import instantiate
from ..records import COMPLETED, RunResult
from ..registry import models, tasks
from ..spec import TrainConfig
from ..tasks import TaskData
from .loop import Batch, Outcome, RunState, Strategy
from .optim import lr_factor, set_lr
from .scoring import class_accuracy, evaluate


def build(config: dict[str, Any], data) -> nn.Module:
    """The run's model, initialised from its seed."""
    torch.manual_seed(config["seed"])
    family = instantiate(models, config["model"])
    model = family.build(data.input_shape, data.num_classes)
    family.initialize(model, data)
    return model


def budget(cfg: TrainConfig, n: int) -> tuple[int, int]:
    """(batch size capped at the training-set size ``n``, total optimizer steps)."""
    batch = min(cfg.batch_size, n)
    return batch, cfg.max_steps or epoch_steps(cfg.epochs, n // batch)


def epoch_steps(epochs: float, batches_per_epoch: float) -> int:
    """Steps of ``epochs`` passes of ``batches_per_epoch`` full batches (the last partial
    batch of an epoch dropped): ceil(batches x epochs), as airbench's loader counts them
    (``total_train_steps = ceil(len(train_loader) * epochs)``, 476 for 9.9 epochs of 48
    batches); the product is rounded to 9 decimals first, so 0.1 x 30 is 3 steps, not 4."""
    return max(1, math.ceil(round(epochs * batches_per_epoch, 9)))


def counted_compute(method, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch: int) -> tuple[int, float]:
    """(FLOPs of one training step, forward FLOPs per sample), counted on the real model."""
    with buffers_kept(model):  # counting must not move BatchNorm's running statistics
        per_step = step_flops(lambda: method.training_loss(model, x[:batch], y[:batch]), model)
        return per_step, count_flops(lambda: model(x[:batch])) / batch


def step_metrics(steps: int, batch: int, n: int, flops_per_step: int) -> dict[str, Any]:
    """What follows from the number of steps a run took."""
    return {"steps": steps, "samples_seen": steps * batch, "epochs_seen": steps * batch / n,
            "train_flops": flops_per_step * steps}


def time_to_result(init_time: float, outcome: Outcome, test_eval_time: float) -> float:
    """airbench's timed span: the model's (data-dependent) initialisation, the training steps
    and one scoring of the test set; the periodic evaluations and the FLOP-counting warm-up
    step are left out, as the reference script leaves out its per-epoch evaluations."""
    return init_time + outcome.train_time - outcome.eval_time + test_eval_time


def autocast(device: torch.device, cfg: TrainConfig):
    """bf16 autocast when the study asks for it (weights and optimizer state stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def optimizer_step(optimizer, model: nn.Module, loss: torch.Tensor, cfg: TrainConfig) -> None:
    """Backward, optional gradient-norm clipping, update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()


class OneModel(Strategy):
    """What a strategy training one model shares: its optimizer step at the scheduled
    learning rate, its weights for hooks and snapshots, and the finiteness-check cadence."""

    dev: torch.device
    model: nn.Module
    optimizer: Any
    lr: float

    @staticmethod
    def train_size(data) -> int:
        """Training examples in ``data`` (what per-example options such as alternating flips
        are sized by)."""
        return len(data.y_train)

    def update(self, loss: torch.Tensor) -> None:
        optimizer_step(self.optimizer, self.model, loss, self.cfg)

    def schedule(self, batch: Batch) -> None:
        """Set this step's learning rate from the batch's schedule progress (and stop the
        parameter groups frozen by now)."""
        factor = lr_factor(batch.progress, self.total_steps, self.cfg)
        self.lr = set_lr(self.optimizer, factor, batch.epoch) * self.cfg.lr

    def parameters(self) -> list[torch.Tensor]:
        return [t for t in self.model.state_dict().values() if t.is_floating_point()]

    def lrs(self, batch: Batch) -> list[float]:
        return [self.lr]

    def snapshot(self, run: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def synchronize(self) -> None:
        synchronize(self.dev)

    def check_every(self) -> int | None:
        # A per-step finiteness check costs a device sync; on the CPU it is free, so exact there.
        return 1 if self.dev.type == "cpu" else self.cfg.eval_every


def classifier_metrics(result: RunResult, model: nn.Module, data: TaskData, cfg: TrainConfig,
                       state: RunState, last_step: int, checkpoint: bool,
                       forward_flops_per_sample: float) -> None:
    """Final and best-weight metrics of a classifier on train/val/test, per-class test
    accuracy, the checkpoint, eval FLOPs."""
    x, y = data.x_train, data.y_train
    splits = {"train": (x[: cfg.eval_train_samples], y[: cfg.eval_train_samples]),
              "val": (data.x_val, data.y_val), "test": (data.x_test, data.y_test)}
    if not len(data.y_val):  # trained without a validation split (task.num_val: 0)
        del splits["val"]
        result.metrics["no_validation_split"] = True
    split_samples = sum(len(labels) for _, labels in splits.values())

    def evaluate_all(module: nn.Module) -> tuple[dict[str, float], int]:
        out = {}
        for name, (xs, ys) in splits.items():
            started = time.perf_counter()
            out[f"{name}_loss"], out[f"{name}_acc"] = evaluate(module, xs, ys, cfg.eval_batch_size)
            if name == "test" and "test_eval_time_s" not in result.metrics:
                result.metrics["test_eval_time_s"] = time.perf_counter() - started
        return out, split_samples

    evaluated = state.evaluated + final_metrics(result, model, evaluate_all, cfg, state,
                                                last_step, checkpoint)
    if result.status == COMPLETED:  # which classes a method helps or hurts
        result.metrics["test_acc_by_class"] = class_accuracy(model, data.x_test, data.y_test,
                                                             data.num_classes, cfg.eval_batch_size)
        if data.class_names is not None:
            result.metrics["class_names"] = data.class_names
        evaluated += len(data.y_test)
    result.metrics["eval_flops"] = int(forward_flops_per_sample * evaluated)


def final_metrics(result: RunResult, model: nn.Module,
                  evaluate_all: Callable[[nn.Module], tuple[dict[str, float], int]],
                  cfg: TrainConfig, state: RunState, last_step: int, checkpoint: bool) -> int:
    """Metrics of the last step's weights (as ``final_*``) and of the best validation weights
    (unprefixed; the same weights when the last step was the best), and the checkpoint.

    ``model`` holds the last step's weights and ``state.best_state`` those of the best
    evaluation when it was not the last one. Returns the units (samples, tokens) evaluated.
    """
    if result.status != COMPLETED:
        return 0
    m = result.metrics
    final, evaluated = evaluate_all(model)
    m.update({f"final_{k}": v for k, v in final.items()})
    if cfg.restore_best and state.best_state is not None and state.best_step != last_step:
        model.load_state_dict(state.best_state)
        final, more = evaluate_all(model)
        evaluated += more
    m.update(final)
    if checkpoint:
        result.checkpoint = checkpoint_bytes(model)
    return evaluated


def checkpoint_bytes(model: nn.Module) -> bytes:
    """The model's weights as a ``torch.save`` file, in memory (the runner writes it)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def load_checkpoint(config: dict[str, Any], path: Path, device: str = "cpu") -> nn.Module:
    """Rebuild a run's model from its config and load its saved weights (weights only)."""
    data = instantiate(tasks, config["task"]).load()
    model = build(config, data)
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of a foreign file
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # missing, truncated, not a checkpoint, another model's weights
        first = first_line(exc)
        raise ScalelabError(f"{path}: not a readable checkpoint of this run ({first})") from None
    return model.to(device).eval()
