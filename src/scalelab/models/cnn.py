"""Convolutional network; 1-D for signals (C, L), 2-D for images (C, H, W)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..plugin import PluginConfig
from ..registry import models
from ._base import ACTIVATIONS, ModelFamily


@models.register("cnn")
class CNN(ModelFamily):
    """Convolutional net: `depth` conv layers of `channels`, then a linear head (1-D or 2-D)."""

    stackable = True  # no cross-sample state: runs can be stacked and trained together

    class Config(PluginConfig):
        channels: int = Field(32, ge=1, description="channels of every conv layer")
        depth: int = Field(3, ge=1, description="conv layers")
        kernel_size: int = Field(3, ge=1, description="odd kernel width keeps the size with padding")
        stride: int = Field(2, ge=1, description="stride of every conv layer after the first")
        activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="nonlinearity")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c = self.config
        if len(input_shape) not in (2, 3):
            raise ValueError(f"cnn needs inputs shaped (C, L) or (C, H, W), got {input_shape}")
        conv = nn.Conv1d if len(input_shape) == 2 else nn.Conv2d
        layers: list[nn.Module] = []
        in_ch = input_shape[0]
        for i in range(c.depth):
            stride = 1 if i == 0 else c.stride
            layers += [conv(in_ch, c.channels, c.kernel_size, stride, padding=c.kernel_size // 2),
                       ACTIVATIONS[c.activation]()]
            in_ch = c.channels
        layers.append(nn.Flatten())
        with torch.no_grad():
            flat = nn.Sequential(*layers)(torch.zeros(1, *input_shape)).shape[1]
        layers.append(nn.Linear(flat, num_classes))
        return nn.Sequential(*layers)
