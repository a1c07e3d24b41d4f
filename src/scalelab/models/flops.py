"""FLOPs counted by ``torch.utils.flop_counter`` on the real modules — never estimated. With the
models, since a model on the meta device is priced here before anything is built for real."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten


# torch counts the CUDA attention kernels but not the CPU one that scaled_dot_product_attention
# dispatches to, so attention would count as free on a CPU. Same formulas as torch's (which,
# like torch's, count causal attention as full).
@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                            out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


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
