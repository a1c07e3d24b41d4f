"""Method base class: how one training step turns a batch into the loss to minimise.

Methods that change what is trained on (sample selection) override :meth:`Method.step_loss`
and the other hooks; plain training uses the do-nothing defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..plugin import Plugin


@dataclass
class StepLoss:
    """One step's loss and what it cost: samples through the forward-with-gradients and
    backward (``trained``) and through a no-grad scoring forward (``scored``)."""

    loss: torch.Tensor
    trained: int
    scored: int = 0
    trace: dict[str, float] = field(default_factory=dict)  # per-step values worth plotting


class Method(Plugin):
    """Plain supervised training: mean cross-entropy of the whole batch."""

    #: The training loss, with ``F.cross_entropy``'s signature; the trainer sets it from the
    #: run's hooks (label smoothing replaces it). Scoring passes keep plain cross-entropy.
    criterion: Callable[..., torch.Tensor] = staticmethod(F.cross_entropy)

    #: What a run of this method is in a sample-selection comparison (recorded with the
    #: study, read by the analysis): ``full`` (every sample: the equal-steps baseline, or the
    #: compute-matched one with a ``match_rate`` setting), ``random`` (the same-rate random
    #: control), or None. A rule with a ``target_rate`` setting is a selection cell itself.
    comparison_role: ClassVar[str | None] = None
    #: Per-step curves worth a figure in the report: name -> (axis label, the method setting
    #: drawn beside it as a dotted reference line, or None).
    traces: ClassVar[dict[str, tuple[str, str | None]]] = {}
    #: True when the budget is ``train.epochs`` passes over what :meth:`epoch_order` returns,
    #: so pruning an epoch (or :meth:`gather`-ing fewer, full steps from it) takes fewer
    #: steps; the schedule then follows epoch progress.
    epoch_budget: ClassVar[bool] = False

    @classmethod
    def baselines(cls, config: dict[str, Any], kinds: list[str]
                  ) -> list[tuple[str, dict[str, Any], float | None, str | None]]:
        """The runs a study's ``baselines:`` (``kinds``) adds beside a run of this method,
        whose resolved method config is ``config``: (kind, resolved baseline method config,
        the rate it stands for, which selection runs a compute-matched run serves:
        ``scoring`` or ``non-scoring``). None for a method that selects nothing."""
        return []

    @property
    def stackable(self) -> bool:
        """Whether this configured method trains every sample of every batch with the
        criterion at the study's step budget: then runs can train in a stacked group
        (``train.stacked``) and it can train a language model. A method that overrides
        :meth:`step_loss`, :meth:`budget`, :meth:`epoch_order` or :meth:`gather` must say
        False."""
        return True

    def begin(self, n_train: int, total_steps: int, batch: int, seed: int) -> None:
        """Called once before the first step."""

    def budget(self, total_steps: int, train_flops_per_sample: float,
               forward_flops_per_sample: float) -> int:
        """Optimizer steps this run takes (a compute-matched baseline takes fewer); the
        learning-rate schedule is built for this number."""
        return total_steps

    def epoch_order(self, order: torch.Tensor, epoch: int) -> torch.Tensor:
        """The training rows visited in epoch ``epoch`` (from 0), given the epoch's shuffled
        order: all of them by default; a per-epoch pruning method returns fewer (at least a
        batch), in the same order."""
        return order

    def gather(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
               *, epoch: int, flush: bool, last: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The batch of the next step (inputs, targets, training rows), or None to be offered
        the next candidate batch first; ``x, y, index`` is the next candidate batch of epoch
        ``epoch`` (from 0). By default each candidate is one step. A method that keeps part
        of each candidate (judged with the current ``model``) and steps once a full batch is
        kept takes fewer steps over ``train.epochs``, so it sets :attr:`epoch_budget`, and
        counts what it scored here in its next step's ``StepLoss.scored``. ``flush``: the
        epoch's last candidate (what is kept may then train as a smaller batch); ``last``:
        the run's last candidate, when a batch must come back."""
        return x, y, index

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  index: torch.Tensor, step: int) -> StepLoss:
        """The loss of one step on the batch ``x, y`` (training-set rows ``index``)."""
        return StepLoss(self.training_loss(model, x, y), trained=len(y))

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over every prediction: one per example (logits (N, C)), or one
        per position for a language model (logits (B, T, vocab), targets (B, T))."""
        return self.criterion(model(x).flatten(0, -2), y.flatten())

    def summary(self) -> dict[str, Any]:
        """Metrics the method adds to the run's record at the end."""
        return {}
