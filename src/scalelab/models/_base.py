"""Model-family base class: a family builds a torch module for a task's input shape."""

from __future__ import annotations

from torch import nn

from ..plugin import Plugin


class ModelFamily(Plugin):
    """Builds one model of the family from its config. Subclasses implement :meth:`build`."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        raise NotImplementedError


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
