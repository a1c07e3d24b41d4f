"""Test-time augmentation: logits averaged over weighted views of each input.

Images (C, H, W): identity, horizontal flip, and ±1-pixel translations (reflect padding) of
both, as in the fast CIFAR-10 recipes: level 0 is the plain forward, level 1 averages the
image and its mirror, level 2 gives the two untranslated views ``untranslated_weight / 2``
each (0.25 by default) and the four translated views the rest in equal parts (0.125).
Signals (C, L) have no mirror: level 1 is the signal and its ±1 shifts, level 2 adds ±2; the
unshifted view gets ``untranslated_weight``, the shifted ones share the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..plugin import PluginConfig
from ..registry import evaluators
from ._base import Evaluator

View = Callable[[torch.Tensor], torch.Tensor]


def shift(x: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
    """Translate the trailing dims by ``offsets`` pixels, filling the edge by reflection."""
    pad = max(abs(o) for o in offsets)
    if pad == 0:
        return x
    padded = F.pad(x, [pad] * 2 * len(offsets), mode="reflect")
    index = [slice(None)] * (x.dim() - len(offsets))
    for o, size in zip(offsets, x.shape[-len(offsets):]):
        index.append(slice(pad - o, pad - o + size))
    return padded[tuple(index)]


def flip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def views(input_dims: int, level: int, untranslated_weight: float | None
          ) -> list[tuple[float, View]]:
    """(weight, view) pairs of a TTA level for inputs with 1 (signals) or 2 (images) spatial
    dims; weights sum to 1."""
    identity: View = lambda x: x  # noqa: E731
    if level == 0:
        return [(1.0, identity)]
    if input_dims == 2:
        if level == 1:
            return [(0.5, identity), (0.5, flip)]
        w = 0.5 if untranslated_weight is None else untranslated_weight
        moved = [lambda x, o=o: shift(x, o) for o in ((1, 1), (-1, -1))]
        translated = moved + [lambda x, m=m: flip(m(x)) for m in moved]
        return [(w / 2, identity), (w / 2, flip)] + [((1 - w) / 4, v) for v in translated]
    offsets = (1, -1) if level == 1 else (1, -1, 2, -2)
    w = 0.5 if untranslated_weight is None else untranslated_weight
    return [(w, identity)] + [((1 - w) / len(offsets), lambda x, o=o: shift(x, (o,)))
                              for o in offsets]


@evaluators.register("tta")
class TTA(Evaluator):
    """Test-time augmentation: weighted logits over flips and ±1-pixel translations/shifts."""

    class Config(PluginConfig):
        level: Literal[0, 1, 2] = Field(2, description="0 plain, 1 mirror (or ±1 shift), 2 adds "
                                                       "translations (±2 shifts)")
        untranslated_weight: float | None = Field(
            None, ge=0, le=1, description="total weight of the untranslated views (level 2: "
                                          "0.5; signals, levels 1-2: 0.5)")

    def logits(self, model, x):
        spatial = x.dim() - 2  # (N, C, L) or (N, C, H, W)
        total = None
        for weight, view in views(spatial, self.config.level, self.config.untranslated_weight):
            if weight == 0:
                continue
            part = weight * model(view(x)).float()
            total = part if total is None else total + part
        return total


@evaluators.register("plain")
class Plain(Evaluator):
    """The model's own forward pass (no augmentation)."""
