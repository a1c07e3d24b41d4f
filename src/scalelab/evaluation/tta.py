"""Test-time augmentation: logits averaged over weighted views of each input.

Images (C, H, W): identity, horizontal flip, and ±1-pixel translations (reflect padding) of
both, as in the fast CIFAR-10 recipes: level 0 is the plain forward, level 1 averages the
image and its mirror, level 2 gives the two untranslated views ``untranslated_weight / 2``
each (0.25 by default) and the four translated views the rest in equal parts (0.125).
Signals (C, L) have no mirror: level 1 is the signal and its ±1 shifts, level 2 adds ±2; the
unshifted view gets ``untranslated_weight``, the shifted ones share the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..plugin import PluginConfig
from ..registry import evaluators
from ._base import Evaluator, Forwards


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


@dataclass(frozen=True)
class View:
    """One view of the inputs: translated by ``offsets`` (none: untranslated), then mirrored
    when ``mirror``. Equal views are one view: the settings of a model share its forward."""

    offsets: tuple[int, ...] = ()
    mirror: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        moved = shift(x, self.offsets) if self.offsets else x
        return flip(moved) if self.mirror else moved


def views(input_dims: int, level: int, untranslated_weight: float | None
          ) -> list[tuple[float, View]]:
    """(weight, view) pairs of a TTA level for inputs with 1 (signals) or 2 (images) spatial
    dims; weights sum to 1."""
    identity = View()
    if level == 0:
        return [(1.0, identity)]
    if input_dims == 2:
        if level == 1:
            return [(0.5, identity), (0.5, View(mirror=True))]
        w = 0.5 if untranslated_weight is None else untranslated_weight
        moved = [(1, 1), (-1, -1)]
        translated = [View(o) for o in moved] + [View(o, mirror=True) for o in moved]
        return [(w / 2, identity), (w / 2, View(mirror=True))] + [((1 - w) / 4, v)
                                                                  for v in translated]
    offsets = (1, -1) if level == 1 else (1, -1, 2, -2)
    w = 0.5 if untranslated_weight is None else untranslated_weight
    return [(w, identity)] + [((1 - w) / len(offsets), View((o,))) for o in offsets]


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
        return self._weighted(model, "", x, max(1, len(x)), Forwards(limit_bytes=0))[0]

    def split_logits(self, model, split, x, batch_size, forwards):
        """Each view's forward over the split (in batches) taken from ``forwards`` when
        another setting of the model made it, and kept there for the next; the weighted sum
        is the same, to the bit, as summing the views batch by batch."""
        return self._weighted(model, split, x, batch_size, forwards)

    def _weighted(self, model, split: str, x: torch.Tensor, batch_size: int,
                  forwards: Forwards) -> tuple[torch.Tensor, float]:
        spatial = x.dim() - 2  # (N, C, L) or (N, C, H, W)
        total, seconds = None, 0.0
        for weight, view in views(spatial, self.config.level, self.config.untranslated_weight):
            if weight == 0:
                continue
            logits, took = forwards.get((split, view), lambda view=view: torch.cat(
                [model(view(x[i:i + batch_size])).float() for i in range(0, len(x), batch_size)]))
            started = time.perf_counter()
            part = weight * logits
            total = part if total is None else total + part
            seconds += took + time.perf_counter() - started
        return total, seconds


@evaluators.register("plain")
class Plain(Evaluator):
    """The model's own forward pass (no augmentation)."""
