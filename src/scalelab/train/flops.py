"""FLOPs counted by ``torch.utils.flop_counter`` on the real modules — never estimated."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmuls/convolutions ``fn`` runs (forward and, if it calls it, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def step_flops(loss_fn: Callable[[], torch.Tensor], model: torch.nn.Module) -> int:
    """FLOPs of one training step (forward + backward); leaves no gradients behind."""
    flops = count_flops(lambda: loss_fn().backward())
    model.zero_grad(set_to_none=True)
    return flops
