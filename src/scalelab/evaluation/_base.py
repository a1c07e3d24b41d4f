"""Evaluator base class: how a trained model is scored (plain forward, test-time augmentation).

Evaluators re-score saved checkpoints without training (``scalelab evaluate``); each setting
becomes one evaluation row per trained run, so settings compare paired by trained model.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..plugin import Plugin
from ..tasks import TaskData
from ..train.scoring import accuracy_by_class


class Evaluator(Plugin):
    """Scores a model with a plain forward; subclasses change :meth:`logits`."""

    def prepare(self, model: nn.Module, data: TaskData) -> None:
        """Called once per model before scoring (an evaluator that uses the training set
        computes what it needs here)."""

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TaskData, batch_size: int = 4096) -> dict[str, Any]:
        """Loss, accuracy and per-class accuracy on validation (when the task has a
        validation split) and test, and ``eval_time_s``: the seconds scoring the test set
        took (what a time-to-result adds after training)."""
        model.eval()
        self.prepare(model, data)
        out: dict[str, Any] = {}
        for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
            if not len(y):
                continue
            started = time.perf_counter()
            logits = torch.cat([self.logits(model, x[i:i + batch_size]).float()
                                for i in range(0, len(y), batch_size)])
            pred = logits.argmax(1)
            out[f"{split}_loss"] = F.cross_entropy(logits, y).item()
            out[f"{split}_acc"] = (pred == y).float().mean().item()
            if split == "test":
                out["eval_time_s"] = time.perf_counter() - started
                out["test_acc_by_class"] = accuracy_by_class(pred, y, data.num_classes)
        return out
