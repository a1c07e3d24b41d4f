"""Multi-layer perceptron over the flattened input."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field
from torch import nn

from ..plugin import PluginConfig
from ..registry import models
from ._base import ACTIVATIONS, ModelFamily


@models.register("mlp")
class MLP(ModelFamily):
    """Multi-layer perceptron: `depth` hidden layers of `width` units on the flattened input."""

    stackable = True  # no cross-sample state: runs can be stacked and trained together
    # A zero-padded hidden unit (zero weights in and out, zero bias) has activation f(0) = 0
    # and zero gradients for relu, gelu and tanh, and SGD/Adam/AdamW keep zeros at zero: each
    # run in a padded group trains exactly as at its own width.
    paddable = ("width",)
    # Stacked MLPs train with batched matrix multiplies; a pair ran 1.0-1.2x the speed of two
    # single runs (1 thread, widths 16-128), so pairs are worth stacking. Others need 3.
    min_stack_group = 2

    class Config(PluginConfig):
        width: int = Field(64, ge=1, description="units per hidden layer")
        depth: int = Field(2, ge=0, description="hidden layers (0 = a linear classifier)")
        activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="nonlinearity")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c = self.config
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for _ in range(c.depth):
            layers += [nn.Linear(fan_in, c.width), ACTIVATIONS[c.activation]()]
            fan_in = c.width
        layers.append(nn.Linear(fan_in, num_classes))
        return nn.Sequential(*layers)
