"""The training loop: one resolved run config in, one :class:`RunResult` out.

A run reads nothing but its config, and returns everything it produced; the runner stores
it. Same config and seed on the CPU give bitwise-identical results.
"""

from __future__ import annotations

import math
import os
import platform
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..errors import ScalelabError
from ..models import count_parameters
from ..plugin import instantiate
from ..registry import methods, models, tasks
from ..spec import TrainConfig
from ..tasks import TaskData
from .flops import count_flops, step_flops
from .optim import lr_factor, make_optimizer, set_lr

COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"


@dataclass
class RunResult:
    """What one run produced. ``curves`` rows are (step, metric name, value)."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    curves: list[tuple[int, str, float]] = field(default_factory=list)
    error: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    batch_group: str | None = None  # set when trained together with other runs


def provenance(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, stored with every result."""
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {
        "scalelab_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": name,
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "pid": os.getpid(),
    }


def resolve_device(device: str) -> torch.device:
    """``auto`` takes a CUDA GPU, then Apple's MPS, then the CPU; a named device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ScalelabError(f"--device: unknown device {device!r} (allowed: auto, cpu, cuda, cuda:N, mps)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScalelabError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    if dev.type == "mps" and not has_mps:
        raise ScalelabError("--device mps: Apple's MPS backend is not available; use --device cpu")
    return dev


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    model.train(was_training)
    return loss_sum.item() / len(y), correct.item() / len(y)


def train_run(
    config: dict[str, Any], device: str = "cpu", checkpoint: Path | None = None
) -> RunResult:
    """Train one run; exceptions become a ``failed`` result with the traceback."""
    dev = resolve_device(device)
    try:
        if tasks.get(config["task"]["name"]).data_kind == "language":
            from .lm import train_lm  # imports this module

            return train_lm(config, dev, checkpoint)
        return _train(config, dev, checkpoint)
    except Exception:
        return RunResult(FAILED, error=traceback.format_exc(), provenance=provenance(dev))


def build(config: dict[str, Any], data: TaskData) -> nn.Module:
    """The run's model, initialised from its seed."""
    torch.manual_seed(config["seed"])
    return instantiate(models, config["model"]).build(data.input_shape, data.num_classes)


def budget(cfg: TrainConfig, n: int) -> tuple[int, int]:
    """(batch size capped at the training-set size ``n``, total optimizer steps)."""
    batch = min(cfg.batch_size, n)
    return batch, cfg.max_steps or max(1, round(cfg.epochs * (n // batch)))


def counted_compute(method, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch: int) -> tuple[int, float]:
    """(FLOPs of one training step, forward FLOPs per sample), counted on the real model."""
    per_step = step_flops(lambda: method.training_loss(model, x[:batch], y[:batch]), model)
    return per_step, count_flops(lambda: model(x[:batch])) / batch


def step_metrics(steps: int, batch: int, n: int, flops_per_step: int) -> dict[str, Any]:
    """What follows from the number of steps a run took."""
    return {"steps": steps, "samples_seen": steps * batch, "epochs_seen": steps * batch / n,
            "train_flops": flops_per_step * steps}


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


class BestWeights:
    """The best validation loss so far, its step and weights, and early stopping's patience."""

    def __init__(self, cfg: TrainConfig, total_steps: int):
        self.cfg, self.total_steps = cfg, total_steps
        self.loss, self.step, self.state, self.evals_without_gain = math.inf, 0, None, 0

    def should_stop(self, result: RunResult, model: nn.Module, train_loss: float,
                    val_loss: float, step: int) -> bool:
        """Record one evaluation; True (with the reason in ``result``) when the run diverged
        or early stopping says to stop."""
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            result.status, result.metrics["diverged_step"] = DIVERGED, step
            return True
        if self._observe(model, val_loss, step):
            result.metrics["stopped_early"] = True
            return True
        return False

    def _observe(self, model: nn.Module, val_loss: float, step: int) -> bool:
        stopping = self.cfg.early_stopping
        if val_loss < self.loss - (stopping.min_delta if stopping else 0.0):
            self.loss, self.step, self.evals_without_gain = val_loss, step, 0
            if self.cfg.restore_best and step != self.total_steps:
                self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.evals_without_gain += 1
        return bool(stopping and self.evals_without_gain >= stopping.patience)


def _train(config: dict[str, Any], dev: torch.device, checkpoint: Path | None) -> RunResult:
    started = time.perf_counter()
    cfg = TrainConfig.model_validate(config["train"])
    data = instantiate(tasks, config["task"]).load().to(dev)
    method = instantiate(methods, config["method"])
    model = build(config, data).to(dev)
    result = RunResult(COMPLETED, provenance=provenance(dev))

    n = len(data.y_train)
    batch, total_steps = budget(cfg, n)
    x, y = data.x_train, data.y_train
    with autocast(dev, cfg):  # counting runs the real kernels once: the warm-up step
        flops_per_step, forward_flops_per_sample = counted_compute(method, model, x, y, batch)
    total_steps = method.budget(total_steps, flops_per_step / batch, forward_flops_per_sample)
    method.begin(n, total_steps, batch, config["seed"])
    optimizer = make_optimizer(model, cfg)
    trained = torch.compile(model) if cfg.compile else model
    generator = torch.Generator().manual_seed(config["seed"])
    # A per-step finiteness check costs a device sync; on the CPU it is free, so it is exact there.
    check_every = 1 if dev.type == "cpu" else cfg.eval_every

    m = result.metrics
    m.update(n_params=count_parameters(model), batch_size=batch, flops_per_step=flops_per_step)
    best = BestWeights(cfg, total_steps)
    running, running_count, evaluated_samples = torch.zeros((), device=dev), 0, 0
    trained_samples = scored_samples = 0
    order, cursor, step, epoch = torch.empty(0, dtype=torch.long), n, 0, 0
    # An epoch-budget method (per-epoch pruning) ends after whole epochs, however short.
    epochs = max(1, round(cfg.epochs)) if method.epoch_budget else None
    train_started = time.perf_counter()
    model.train()
    for step in range(1, total_steps + 1):
        if cursor + batch > len(order):
            order = method.epoch_order(torch.randperm(n, generator=generator), epoch).to(dev)
            cursor, epoch = 0, epoch + 1
        index = order[cursor:cursor + batch]
        cursor += batch
        last = step == total_steps or (epochs is not None and epoch == epochs
                                       and cursor + batch > len(order))
        progress = step - 1 if epochs is None else \
            round((epoch - 1 + (cursor - batch) / len(order)) / epochs * total_steps)
        step_lr = set_lr(optimizer, lr_factor(progress, total_steps, cfg)) * cfg.lr
        with autocast(dev, cfg):
            out = method.step_loss(trained, x[index], y[index], index, step)
        loss = out.loss
        trained_samples += out.trained
        scored_samples += out.scored
        result.curves += [(step, name, value) for name, value in out.trace.items()]
        optimizer_step(optimizer, model, loss, cfg)
        running += loss.detach()
        running_count += 1
        if step % check_every == 0 and not math.isfinite(running.item()):
            result.status, m["diverged_step"] = DIVERGED, step
            break
        if step % cfg.eval_every and not last:
            continue
        train_loss = running.item() / running_count
        running.zero_()
        running_count = 0
        with autocast(dev, cfg):
            val_loss, val_acc = evaluate(model, data.x_val, data.y_val, cfg.eval_batch_size)
        evaluated_samples += len(data.y_val)
        result.curves += [(step, "train_loss", train_loss), (step, "val_loss", val_loss),
                          (step, "val_acc", val_acc), (step, "lr", step_lr)]
        if best.should_stop(result, model, train_loss, val_loss, step) or last:
            break
    train_time = time.perf_counter() - train_started

    m.update(step_metrics(step, batch, n, flops_per_step), wall_time=train_time,
             stopped_early=m.get("stopped_early", False), best_step=best.step)
    if not (trained_samples == step * batch and scored_samples == 0):  # selection: what ran
        scoring = round(scored_samples * forward_flops_per_sample)
        training = round(trained_samples * flops_per_step / batch)
        m.update(train_flops=scoring + training, scoring_flops=scoring,
                 selected_train_flops=training, samples_trained=trained_samples,
                 samples_scored=scored_samples, full_batch_flops=flops_per_step * step,
                 flops_saving=1 - (scoring + training) / (flops_per_step * step))
    m.update(method.summary())
    with autocast(dev, cfg):
        finalize(result, model, data, cfg, best.state, best.step, step, checkpoint,
                 forward_flops_per_sample, evaluated_samples)
    m["total_time"] = time.perf_counter() - started
    return result


def finalize(result: RunResult, model: nn.Module, data: TaskData, cfg: TrainConfig,
             best_state: dict | None, best_step: int, last_step: int, checkpoint: Path | None,
             forward_flops_per_sample: float, evaluated_samples: int) -> None:
    """Final and best-checkpoint metrics on train/val/test, the checkpoint, eval FLOPs."""
    x, y = data.x_train, data.y_train
    splits = {"train": (x[: cfg.eval_train_samples], y[: cfg.eval_train_samples]),
              "val": (data.x_val, data.y_val), "test": (data.x_test, data.y_test)}
    split_samples = sum(len(labels) for _, labels in splits.values())

    def evaluate_all(module: nn.Module) -> tuple[dict[str, float], int]:
        return _evaluate_splits(module, splits, cfg.eval_batch_size), split_samples

    evaluated_samples += final_metrics(result, model, evaluate_all, cfg, best_state, best_step,
                                       last_step, checkpoint)
    if result.status == COMPLETED:  # which classes a method helps or hurts
        result.metrics["test_acc_by_class"] = class_accuracy(model, data.x_test, data.y_test,
                                                             data.num_classes, cfg.eval_batch_size)
        evaluated_samples += len(data.y_test)
    result.metrics["eval_flops"] = int(forward_flops_per_sample * evaluated_samples)


@torch.no_grad()
def class_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                   batch_size: int) -> list[float | None]:
    """Test accuracy of each class (None for a class absent from the test set)."""
    was_training = model.training
    model.eval()
    pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)])
    model.train(was_training)
    return accuracy_by_class(pred, y, num_classes)


def accuracy_by_class(pred: torch.Tensor, y: torch.Tensor, num_classes: int
                      ) -> list[float | None]:
    """Share of each class's examples predicted right (None for a class with none)."""
    total = torch.bincount(y, minlength=num_classes)
    correct = torch.bincount(y[pred == y], minlength=num_classes)
    return [c / t if t else None for c, t in zip(correct.tolist(), total.tolist())]


def final_metrics(result: RunResult, model: nn.Module,
                  evaluate_all: Callable[[nn.Module], tuple[dict[str, float], int]],
                  cfg: TrainConfig, best_state: dict | None, best_step: int, last_step: int,
                  checkpoint: Path | None) -> int:
    """Metrics of the last step's weights (as ``final_*``) and of the best validation weights
    (unprefixed; the same weights when the last step was the best), and the checkpoint.

    ``model`` holds the last step's weights and ``best_state`` those of the best evaluation
    when it was not the last one. Returns the units (samples, tokens) evaluated.
    """
    if result.status != COMPLETED:
        return 0
    m = result.metrics
    final, evaluated = evaluate_all(model)
    m.update({f"final_{k}": v for k, v in final.items()})
    if cfg.restore_best and best_state is not None and best_step != last_step:
        model.load_state_dict(best_state)
        final, more = evaluate_all(model)
        evaluated += more
    m.update(final)
    if checkpoint is not None:
        save_checkpoint(model, checkpoint)
    return evaluated


def _evaluate_splits(model, splits, batch_size) -> dict[str, float]:
    out = {}
    for name, (xs, ys) in splits.items():
        out[f"{name}_loss"], out[f"{name}_acc"] = evaluate(model, xs, ys, batch_size)
    return out


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Best weights, written under a temporary name and renamed so a kill leaves no torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


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
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScalelabError(f"{path}: not a readable checkpoint of this run ({first})") from None
    return model.to(device).eval()
