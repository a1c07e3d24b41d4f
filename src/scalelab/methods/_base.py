"""Method base class: how one training step turns a batch into the loss to minimise.

Methods that change what is trained on (sample selection) or how a model is evaluated
(test-time augmentation, test-time training) override the hooks; plain training uses the
do-nothing defaults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..plugin import Plugin


class Method(Plugin):
    """Plain supervised training: mean cross-entropy of the whole batch."""

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over every prediction: one per example (logits (N, C)), or one
        per position for a language model (logits (B, T, vocab), targets (B, T))."""
        return F.cross_entropy(model(x).flatten(0, -2), y.flatten())
