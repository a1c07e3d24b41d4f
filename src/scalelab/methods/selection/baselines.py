"""The fair baselines of a selection run, and their expansion in a study (``baselines:``).

``full`` trains on everything; with ``match_rate`` it is the compute-matched baseline of a
selection run: the same expected training FLOPs in fewer steps, its schedule built for that
shorter budget. ``random`` (a rule) is the same-rate control.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ...plugin import PluginConfig
from ...registry import methods
from .._base import Method


@methods.register("full")
class Full(Method):
    """Every sample of every batch; with match_rate, the compute-matched baseline of a
    selection run (its expected FLOPs, in fewer steps with the schedule rebuilt for them)."""

    comparison_role = "full"

    class Config(PluginConfig):
        # Only what sets the matched budget is a setting: selection methods of one rate that
        # both score (or both do not) share one compute-matched run instead of two
        # identical configs under different names.
        match_rate: float | None = Field(
            None, gt=0, le=1, description="target rate of the selection run this matches")
        match_scoring: bool = Field(
            False, description="the matched method also runs a scoring forward over each batch "
                               "(ast, topk_loss, selective_backprop)")

        @model_validator(mode="after")
        def _rate_for_scoring(self):
            if self.match_scoring and self.match_rate is None:
                raise ValueError("match_scoring needs match_rate")
            return self

    def budget(self, total_steps, train_flops_per_sample, forward_flops_per_sample):
        c = self.config
        if c.match_rate is None:
            return total_steps
        # A selection step trains rate * batch samples and, if it scores, runs a forward
        # over the whole batch: that fraction of a full step's FLOPs.
        fraction = c.match_rate
        if c.match_scoring:
            fraction += forward_flops_per_sample / train_flops_per_sample
        return max(1, round(total_steps * min(1.0, fraction)))

    @property
    def stackable(self) -> bool:
        return self.config.match_rate is None  # stacked runs share one step budget
