"""Base of the selection rules: each step, choose rows of the batch and train on those.

Only the chosen rows go through the forward-with-gradients and the backward, so the saving is
real, and the trainer counts it (scored and trained samples times their counted per-sample
FLOPs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...models import buffers_kept
from ...plugin import PluginConfig
from ...registry import methods
from .._base import Method, StepLoss


class Selection(Method, ABC):
    """Base of the selection methods: choose rows of the batch, train on those."""

    #: True when choosing needs a no-grad forward over the whole batch.
    scores: ClassVar[bool] = False

    class Config(PluginConfig):
        target_rate: float = Field(0.2, gt=0, le=1, description="fraction of each batch trained on")

    @property
    def stackable(self) -> bool:
        return False  # each step trains on its own choice of rows

    @classmethod
    def baselines(cls, config: dict[str, Any], kinds: list[str]
                  ) -> list[tuple[str, dict[str, Any], float | None, str | None]]:
        """Every baseline at this run's rate: the full data (``full``), the full data at
        the compute this run spends (``matched_full``), a random subset (``random``)."""
        rate, scoring = config["target_rate"], bool(cls.scores)
        wanted = {"full": ({"name": "full"}, None, None),
                  "matched_full": ({"name": "full", "match_rate": rate, "match_scoring": scoring},
                                   rate, "scoring" if scoring else "non-scoring"),
                  "random": ({"name": "random", "target_rate": rate}, rate, None)}
        out = []
        for kind in kinds:
            settings, point_rate, matched_to = wanted[kind]
            plugin = methods.get(settings["name"])
            resolved = {"name": settings["name"], **plugin.Config.model_validate(
                {k: v for k, v in settings.items() if k != "name"}).model_dump(mode="json")}
            out.append((kind, resolved, point_rate, matched_to))
        return out

    def begin(self, n_train: int, total_steps: int, batch: int, seed: int) -> None:
        self.total_steps, self.batch = total_steps, batch
        self.generator = torch.Generator().manual_seed(seed + 7919)  # apart from the data order
        self.rates: list[float] = []

    @abstractmethod
    def choose(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
               step: int) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """(rows to train on, their loss weights or None, trace values)."""

    def step_loss(self, model, x, y, index, step) -> StepLoss:
        keep, weights, trace = self.choose(model, x, y, index, step)
        losses = self.criterion(model(x[keep]), y[keep], reduction="none")
        self.trained_losses(index[keep], losses.detach())
        if weights is None:
            loss = losses.mean()
        else:  # an unbiased estimate of the whole batch's mean loss
            loss = (losses * weights).sum() / len(y)
        rate = len(keep) / len(y)
        self.rates.append(rate)
        return StepLoss(loss, trained=len(keep), scored=len(y) if self.scores else 0,
                        trace={"batch_rate": rate, **trace})

    def trained_losses(self, rows: torch.Tensor, losses: torch.Tensor) -> None:
        """The per-sample losses of the rows just trained on (InfoBatch keeps them)."""

    def summary(self) -> dict[str, Any]:
        rates = np.array(self.rates)
        second = rates[len(rates) // 2:] if len(rates) else rates
        return {"target_rate": self.config.target_rate,
                "activation_rate": float(rates.mean()) if len(rates) else None,
                "activation_rate_2nd_half": float(second.mean()) if len(second) else None,
                "nominal_saving": 1 - self.config.target_rate}

    def k(self, batch: int) -> int:
        return max(1, round(self.config.target_rate * batch))


@torch.no_grad()
def scoring_forward(model: nn.Module, x: torch.Tensor, eval_mode: bool = False) -> torch.Tensor:
    """Logits of the batch without building a graph (the scoring pass). Buffers are kept:
    scoring never moves BatchNorm's running statistics, which only training steps move, as
    in a full-data run. ``eval_mode`` also normalises with those statistics instead of the
    batch's (selective backprop's reference scores with ``net.eval()``)."""
    training = model.training
    model.train(training and not eval_mode)
    try:
        with buffers_kept(model):
            return model(x).float()
    finally:
        model.train(training)


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")
