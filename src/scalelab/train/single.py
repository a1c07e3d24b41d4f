"""One model on a classification task: shuffled epochs of training rows (a method may prune
an epoch), the method's loss for each batch, and accounting of what the method trained."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..devices import synchronize
from ..models import count_parameters
from ..plugin import instantiate
from ..records import RunResult
from ..registry import methods
from ..spec import TrainConfig
from .common import (
    OneModel,
    autocast,
    budget,
    build,
    classifier_metrics,
    counted_compute,
    step_metrics,
    time_to_result,
)
from .loop import Batch, Outcome
from .optim import make_optimizer
from .scoring import evaluate


class Examples(OneModel):
    """Batches of training rows for one model; the method turns each into its loss."""

    def __init__(self, config: dict[str, Any], data, dev: torch.device, criterion):
        self.cfg = cfg = TrainConfig.model_validate(config["train"])
        self.data = data = data.to(dev)
        self.dev = dev
        self.method = instantiate(methods, config["method"])
        self.method.criterion = criterion
        started = time.perf_counter()
        self.model = build(config, data).to(dev)
        synchronize(dev)
        self.init_time = time.perf_counter() - started  # data-dependent init (whitening) too
        self.n = n = len(data.y_train)
        self.batch, total_steps = budget(cfg, n)
        self.cfg = cfg = cfg.at_batch(self.batch)
        with autocast(dev, cfg):  # counting runs the real kernels once: the warm-up step
            self.flops_per_step, self.forward_flops_per_sample = counted_compute(
                self.method, self.model, *self.probe(), self.batch)
        self.total_steps = self.method.budget(total_steps, self.flops_per_step / self.batch,
                                              self.forward_flops_per_sample)
        self.method.begin(n, self.total_steps, self.batch, config["seed"])
        if cfg.channels_last and len(data.input_shape) == 3:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, cfg)
        self.trained = torch.compile(self.model) if cfg.compile else self.model
        self.generator = torch.Generator().manual_seed(config["seed"])
        # An epoch-budget method (per-epoch pruning) ends after whole epochs, however short.
        self.epochs = max(1, round(cfg.epochs)) if self.method.epoch_budget else None
        self.order, self.cursor, self.epoch = torch.empty(0, dtype=torch.long), n, 0
        self.trained_samples = self.scored_samples = 0
        self.lr = cfg.lr
        self.model.train()

    def probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training inputs and targets of at least one batch, for counting FLOPs."""
        return self.data.x_train[:self.batch], self.data.y_train[:self.batch]

    def draw(self, step: int) -> Batch:
        batch, epochs = self.batch, self.epochs
        while True:  # candidate batches until the method has a step's batch (Method.gather)
            if self.cursor + batch > len(self.order):
                self.order = self.start_epoch(self.method.epoch_order(
                    torch.randperm(self.n, generator=self.generator), self.epoch))
                self.cursor, self.epoch = 0, self.epoch + 1
            x, y, index = self.fetch(self.order[self.cursor:self.cursor + batch])
            self.cursor += batch
            flush = self.cursor + batch > len(self.order)  # the epoch's last candidate
            last = step == self.total_steps or (epochs is not None and self.epoch == epochs
                                                and flush)
            with autocast(self.dev, self.cfg):  # a selecting method scores candidates here
                chosen = self.method.gather(self.trained, x, y, index, epoch=self.epoch - 1,
                                            flush=flush, last=last)
            if chosen is not None:
                break
        x, y, index = chosen
        epoch, order = self.epoch, self.order
        done = epoch - 1 + (self.cursor - batch) / len(order)  # epochs completed before it
        progress = step - 1 if epochs is None else round(done / epochs * self.total_steps)
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, y, index, progress, last, done)

    def start_epoch(self, order: torch.Tensor) -> torch.Tensor:
        """Prepare an epoch visiting ``order``; returns the order as :meth:`fetch` takes it."""
        return order.to(self.dev)

    def fetch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs, targets and row indices of the next batch (``rows`` of the epoch order)."""
        return self.data.x_train[rows], self.data.y_train[rows], rows

    def step(self, batch: Batch, step: int):
        self.schedule(batch)
        with autocast(self.dev, self.cfg):
            out = self.method.step_loss(self.trained, batch.x, batch.y, batch.index, step)
        self.trained_samples += out.trained
        self.scored_samples += out.scored
        self.update(out.loss)
        return out.loss.detach().reshape(1), out.trace

    def evaluate(self):
        if not len(self.data.y_val):  # no validation split: the curve has train_loss only
            return [{}], 0
        with autocast(self.dev, self.cfg):
            val_loss, val_acc = evaluate(self.model, self.data.x_val, self.data.y_val,
                                         self.cfg.eval_batch_size)
        return [{"val_loss": val_loss, "val_acc": val_acc}], len(self.data.y_val)

    def account(self, result: RunResult, run: int, outcome: Outcome) -> None:
        steps = outcome.steps(run)
        result.metrics.update(
            step_metrics(steps, self.batch, self.n, self.flops_per_step),
            n_params=count_parameters(self.model), batch_size=self.batch,
            flops_per_step=self.flops_per_step, wall_time=outcome.train_time)
        result.metrics.update(self.selection_metrics(steps))
        result.metrics.update(self.method.summary())

    def finalize(self, result: RunResult, run: int, outcome: Outcome, checkpoint: bool) -> None:
        """Final metrics on every split, per-class accuracy, the checkpoint, and airbench's
        time to result."""
        with autocast(self.dev, self.cfg):
            classifier_metrics(result, self.model, self.data, self.cfg, outcome.states[run],
                               outcome.steps(run), checkpoint, self.forward_flops_per_sample)
        if "test_eval_time_s" in result.metrics:
            result.metrics["time_to_result_s"] = time_to_result(
                self.init_time, outcome, result.metrics["test_eval_time_s"])

    def selection_metrics(self, steps: int) -> dict[str, Any]:
        """What a selection method actually ran: scored and trained samples and their FLOPs
        against full batches over the same data (empty for a method that trains every sample
        of every batch)."""
        if self.trained_samples == steps * self.batch and self.scored_samples == 0:
            return {}
        # Full batches over the same data: the same steps, or for an epoch-budget method
        # (fewer steps over the same epochs) the epochs it went through.
        full_steps = steps if self.epochs is None else round(
            (self.epoch - 1 + self.cursor / len(self.order)) * (self.n // self.batch))
        full = self.flops_per_step * full_steps
        scoring = round(self.scored_samples * self.forward_flops_per_sample)
        training = round(self.trained_samples * self.flops_per_step / self.batch)
        return {"train_flops": scoring + training, "scoring_flops": scoring,
                "selected_train_flops": training, "samples_trained": self.trained_samples,
                "samples_scored": self.scored_samples, "full_batch_flops": full,
                "flops_saving": 1 - (scoring + training) / full}

