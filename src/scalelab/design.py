"""Study designs that place cells by a target rather than by a grid: IsoFLOP profiles.

An IsoFLOP design names compute budgets and model sizes; every (budget, size) cell gets the
data amount whose *counted* training FLOPs equal the budget. The count is the one a run
records (``train_flops``: forward + backward of one step through ``torch.utils.flop_counter``,
times the steps), taken here on PyTorch's meta device, so nothing is allocated and no data is
loaded while a study is planned. A cell that cannot spend its budget within
:data:`TOLERANCE` (too few steps to round well) is refused before anything trains.

Imports no study-file code: ``spec`` calls in with a resolver for one cell's config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import StudyError
from .models.flops import step_flops
from .plugin import instantiate
from .registry import methods, models, tasks

#: A cell's counted FLOPs may differ from its budget by at most this (relative).
TOLERANCE = 0.02
#: Data axes a design can set, and what one unit of each is: optimizer steps (examples or
#: token windows of one batch each), or training examples passed over ``train.epochs`` times.
DATA_AXES = {"train.max_steps": "steps", "task.num_train": "examples"}


@dataclass(frozen=True)
class IsoflopCell:
    """One cell of an IsoFLOP design: its budget, size, data amount and counted FLOPs."""

    budget: float
    size: Any
    data: int
    flops_per_step: int
    steps: int
    params: int  # the model's parameter count (on the meta device)

    @property
    def flops(self) -> int:
        return self.flops_per_step * self.steps

    @property
    def error(self) -> float:
        """Counted FLOPs against the budget, relative."""
        return self.flops / self.budget - 1


def meta_model(config: Mapping[str, Any]) -> tuple[torch.nn.Module, tuple[int, ...], int, int]:
    """(the run's model on the meta device: shapes, no memory; its input shape; classes or
    vocabulary; training examples), from the resolved config alone."""
    input_shape, num_classes, num_train = instantiate(tasks, config["task"]).shape()
    with torch.device("meta"):
        model = instantiate(models, config["model"]).build(input_shape, num_classes)
    return model, input_shape, num_classes, num_train


def flops_per_step(config: Mapping[str, Any], batch: int) -> int:
    """Counted FLOPs of one training step of ``batch`` examples (token windows for a language
    model), on the meta device, through the run's method's own training loss."""
    model, input_shape, num_classes, _ = meta_model(config)
    method = instantiate(methods, config["method"])
    if input_shape:  # examples with a shape; class labels
        x = torch.empty((batch, *input_shape), device="meta")
        y = torch.empty((batch,), dtype=torch.long, device="meta")
    else:  # token windows: inputs and next-token targets
        length = config["model"]["context_length"]
        x = torch.empty((batch, length), dtype=torch.long, device="meta")
        y = torch.empty((batch, length), dtype=torch.long, device="meta")
    return step_flops(lambda: method.training_loss(model, x, y), model)


def isoflop_cells(budgets: Sequence[float], sizes: Sequence[Any], data_path: str,
                  config_at: Callable[[Any, int], dict[str, Any]], source: str
                  ) -> list[IsoflopCell]:
    """Every budget x size cell with the data amount that spends the budget.

    ``config_at(size, data)`` is the resolved config of the cell at that size and data
    amount (None: the study's own). Steps of a ``task.num_train`` cell follow the trainer's own epoch rule
    (``ceil(epochs x batches per epoch)``), so the amount is searched near its estimate."""
    cells = []
    for size in sizes:
        probe = config_at(size, None)  # the study's own data setting: FLOPs per step do not
        # depend on it (a cell's batch is the study's, see _cell)
        batch = probe["train"]["batch_size"]
        per_step = flops_per_step(probe, batch)
        params = sum(p.numel() for p in meta_model(probe)[0].parameters())
        for budget in budgets:
            cell = _cell(budget, size, per_step, batch, data_path, probe["train"], params)
            if abs(cell.error) > TOLERANCE:
                raise StudyError(source, "design.isoflop.budgets",
                                 f"budget {budget:.3g} at size {size!r} is {cell.steps} step(s) "
                                 f"of {per_step:.3g} FLOPs, {abs(cell.error):.1%} off the budget "
                                 f"(allowed: {TOLERANCE:.0%}); raise the budget or lower "
                                 "train.batch_size")
            cells.append(cell)
    return cells


def _cell(budget: float, size: Any, per_step: int, batch: int, data_path: str,
          train: Mapping[str, Any], params: int) -> IsoflopCell:
    steps = max(1, round(budget / per_step))
    if data_path == "train.max_steps":
        return IsoflopCell(budget, size, steps, per_step, steps, params)
    epochs = train["epochs"]
    estimate = max(batch, round(steps * batch / epochs))

    def steps_of(n: int) -> int:  # the trainer's rule (train.common.epoch_steps)
        return max(1, math.ceil(round(epochs * (n // min(batch, n)), 9)))

    best = min(range(max(batch, estimate - 2 * batch), estimate + 2 * batch + 1),
               key=lambda n: (abs(steps_of(n) * per_step - budget), n))
    return IsoflopCell(budget, size, best, per_step, steps_of(best), params)
