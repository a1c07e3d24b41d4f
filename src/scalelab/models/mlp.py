"""Multi-layer perceptron over the flattened input."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field
from torch import nn

from ..registry import models
from ._base import ACTIVATIONS, ModelFamily
from .mup import (
    BASE_WIDTH,
    PARAMETRIZATION,
    Parametrization,
    WidthParametrization,
    WidthScale,
    mark,
    scale_bias,
    scale_init,
)


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
    #: The setting μP scales (see models.mup).
    width_setting = "width"

    class Config(WidthParametrization):
        width: int = Field(64, ge=1, description="units per hidden layer")
        depth: int = Field(2, ge=0, description="hidden layers (0 = a linear classifier)")
        activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="nonlinearity")
        parametrization: Parametrization = PARAMETRIZATION
        base_width: int = BASE_WIDTH

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c = self.config
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for _ in range(c.depth):
            layers += [nn.Linear(fan_in, c.width), ACTIVATIONS[c.activation]()]
            fan_in = c.width
        readout = nn.Linear(fan_in, num_classes)
        if c.parametrization == "standard":
            return nn.Sequential(*layers, readout)
        # μP (see models.mup): PyTorch's default init is already var ∝ 1/fan_in for the
        # input and hidden layers' weights; the readout's is made width-independent and its
        # input scaled by 1/m. Biases of layers whose fan-in is the width (hidden layers, the
        # readout) keep the base width's scale, U(±1/sqrt(base fan-in)), as microsoft/mup's
        # set_base_shapes rescales them (mup/layer.py:49-51 readout, :82-83 hidden). A linear
        # classifier (depth 0) has no width: m = 1.
        m = c.multiplier(c.width) if c.depth else 1.0
        scale_init(readout, math.sqrt(m))
        for layer in [lin for lin in layers if isinstance(lin, nn.Linear)][1:] + [readout]:
            scale_bias(layer, math.sqrt(m))  # the layers after the first (fan-in: the width)
        model = nn.Sequential(*layers, WidthScale(1 / m), readout)
        roles = {}
        for i, layer in enumerate(model):
            if isinstance(layer, nn.Linear):
                first = i == 1
                roles[f"{i}.weight"] = "readout" if layer is readout else \
                    "vector" if first else "hidden"
                roles[f"{i}.bias"] = "fixed" if layer is readout else "vector"
        if not c.depth:
            roles = dict.fromkeys(roles, "fixed")
        return mark(model, roles, m)
