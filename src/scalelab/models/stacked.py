"""Many same-shaped models as one forward: parameters stacked along a new leading (runs)
dimension, inputs (runs, batch, ...), outputs (runs, batch, ...).

Stacked training (``train.stacked``) trains a group of small runs this way, and test-time
training (``evaluation.ttt``) fine-tunes one copy of a head per scored point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from .mup import WidthScale

#: ``forward(params, buffers, x)``: stacked parameter and buffer tensors by name, and inputs.
StackedForward = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor],
                          torch.Tensor]


def stacked_forward(skeleton: nn.Module) -> StackedForward:
    """The stacked forward of ``skeleton``'s architecture (its own weights unused: a meta
    copy will do): batched matrix multiplies for a Sequential MLP, else torch's vmap."""
    return bmm_forward(skeleton) or vmap(
        lambda p, b, inputs: functional_call(skeleton, (p, b), (inputs,)))


def bmm_forward(skeleton: nn.Module) -> StackedForward | None:
    """A stacked forward for Sequential MLPs with batched matrix multiplies (no vmap or
    functional_call per step), or None for other models."""
    elementwise = (nn.ReLU, nn.GELU, nn.Tanh)
    if not isinstance(skeleton, nn.Sequential) or not all(
            isinstance(m, (nn.Flatten, nn.Linear, WidthScale, *elementwise)) for m in skeleton):
        return None
    if any(isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) != (1, -1) for m in skeleton):
        return None

    def forward(params, buffers, x):
        h = x
        for name, module in skeleton.named_children():
            if isinstance(module, nn.Flatten):
                h = h.flatten(2)
            elif isinstance(module, nn.Linear):
                weight = params[f"{name}.weight"].transpose(1, 2)
                bias = params.get(f"{name}.bias")
                h = torch.bmm(h, weight) if bias is None else torch.baddbmm(
                    bias.unsqueeze(1), h, weight)
            elif isinstance(module, WidthScale):  # each run's own factor
                h = h * buffers[f"{name}.factor"].view(-1, 1, 1)
            else:
                h = module(h)
        return h

    return forward
