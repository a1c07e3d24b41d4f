"""One run across the processes of a ``torchrun`` job (DistributedDataParallel).

Every rank draws the same global batch from the run's seed and trains on its own slice, so
K processes take exactly the steps one process would with the same global batch; evaluation
sums are combined across ranks. Outside a job, everything here is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a distributed job."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over every rank (in float64)."""
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as this rank trains it: DDP-wrapped in a job, itself otherwise."""
    if world()[1] == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
