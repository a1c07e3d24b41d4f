"""Evaluator base class: how a trained model is scored (plain forward, test-time augmentation).

Evaluators re-score saved checkpoints without training (``scalelab evaluate``); each setting
becomes one evaluation row per trained run, so settings compare paired by trained model.
The settings of one model share a :class:`Forwards`: a forward pass one setting made (a TTA
view of the test set) is not made again by the next (a sweep of view weights makes each
view's forward once per model, not once per weight).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..plugin import Plugin
from ..tasks import TaskData
from ..train.scoring import accuracy_by_class


class Forwards:
    """The forward passes already made on one model (its logits of a split, or of a view of
    it), each with the seconds it took, shared by the settings that score the model; kept up
    to ``limit_bytes`` of logits in all (beyond that a forward is made again when asked)."""

    def __init__(self, limit_bytes: int = 1 << 30):
        self.limit_bytes = limit_bytes
        self.made = 0                   # forwards computed (not taken from the store)
        self._kept: dict[Hashable, tuple[torch.Tensor, float]] = {}
        self._bytes = 0

    def get(self, key: Hashable, forward: Callable[[], torch.Tensor]
            ) -> tuple[torch.Tensor, float]:
        """(logits, seconds the forward took): kept ones as they were measured when made."""
        if key in self._kept:
            return self._kept[key]
        started = time.perf_counter()
        logits = forward()
        found = (logits, time.perf_counter() - started)
        self.made += 1
        size = logits.element_size() * logits.nelement()
        if self._bytes + size <= self.limit_bytes:
            self._kept[key], self._bytes = found, self._bytes + size
        return found


class Evaluator(Plugin):
    """Scores a model with a plain forward; subclasses change :meth:`logits`."""

    def prepare(self, model: nn.Module, data: TaskData) -> None:
        """Called once per model before scoring (an evaluator that uses the training set
        computes what it needs here)."""

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def split_logits(self, model: nn.Module, split: str, x: torch.Tensor, batch_size: int,
                     forwards: Forwards) -> tuple[torch.Tensor, float]:
        """The logits of split ``split`` (inputs ``x``) in batches, and the seconds they take;
        an evaluator whose logits are forward passes of the model keeps them in ``forwards``
        for the model's other settings (:class:`~scalelab.evaluation.tta.TTA` does)."""
        started = time.perf_counter()
        logits = torch.cat([self.logits(model, x[i:i + batch_size]).float()
                            for i in range(0, len(x), batch_size)])
        return logits, time.perf_counter() - started

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TaskData, batch_size: int = 4096,
                 forwards: Forwards | None = None) -> dict[str, Any]:
        """Loss, accuracy and per-class accuracy on validation (when the task has a
        validation split) and test, and ``eval_time_s``: the seconds scoring the test set
        takes (what a time-to-result adds after training), forwards taken from
        ``forwards`` (the model's other settings made them) counted at their measured time,
        as if this setting had scored alone."""
        model.eval()
        self.prepare(model, data)
        forwards = Forwards() if forwards is None else forwards
        out: dict[str, Any] = {}
        for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
            if not len(y):
                continue
            logits, seconds = self.split_logits(model, split, x, batch_size, forwards)
            scored = time.perf_counter()
            pred = logits.argmax(1)
            out[f"{split}_loss"] = F.cross_entropy(logits, y).item()
            out[f"{split}_acc"] = (pred == y).float().mean().item()
            if split == "test":  # its logits' seconds (forwards as measured), then scoring
                out["eval_time_s"] = seconds + time.perf_counter() - scored
                out["test_acc_by_class"] = accuracy_by_class(pred, y, data.num_classes)
        return out
