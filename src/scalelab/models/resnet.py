"""ResNets (He et al., 2016): 18 and 34 with basic blocks, 50 with bottlenecks.

    stem   ImageNet: conv7x7 stride 2 -> BN -> ReLU -> max-pool 3 stride 2
           CIFAR:    conv3x3 stride 1 -> BN -> ReLU            (small images keep their size)
    stages 4, of [2,2,2,2] (18), [3,4,6,3] (34 and 50) blocks; widths width x (1, 2, 4, 8),
           stride 2 at the start of stages 2-4 (in the 3x3 conv, as torchvision's v1.5);
           bottlenecks expand by 4
    head   global average pool -> linear

Each residual branch's last BatchNorm starts at zero (``zero_init_residual``), so every block
starts as the identity. BatchNorm mixes samples: runs never stack.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from ..plugin import PluginConfig
from ..registry import models
from ._base import ModelFamily

LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
           50: ("bottleneck", (3, 4, 6, 3))}


def _bn(channels: int, zero: bool = False) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels)
    if zero:
        nn.init.zeros_(norm.weight)
    return norm


class Residual(nn.Module):
    """branch(x) + shortcut(x), then ReLU."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module):
        super().__init__()
        self.branch, self.shortcut = branch, shortcut
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.branch(x) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _bn(c_out))


def basic(c_in: int, width: int, stride: int, zero: bool) -> tuple[Residual, int]:
    branch = nn.Sequential(
        nn.Conv2d(c_in, width, 3, stride, 1, bias=False), _bn(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, 1, 1, bias=False), _bn(width, zero))
    return Residual(branch, _shortcut(c_in, width, stride)), width


def bottleneck(c_in: int, width: int, stride: int, zero: bool) -> tuple[Residual, int]:
    out = 4 * width
    branch = nn.Sequential(
        nn.Conv2d(c_in, width, 1, bias=False), _bn(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, stride, 1, bias=False), _bn(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, out, 1, bias=False), _bn(out, zero))
    return Residual(branch, _shortcut(c_in, out, stride)), out


@models.register("resnet")
class ResNet(ModelFamily):
    """ResNet-18/34/50 with an ImageNet or CIFAR stem; width sets the first stage's channels."""

    class Config(PluginConfig):
        depth: Literal[18, 34, 50] = Field(18, description="18 and 34: basic blocks; 50: "
                                           "bottlenecks")
        width: int = Field(64, ge=1, description="channels of the first stage (64 standard)")
        stem: Literal["imagenet", "cifar"] = Field(
            "imagenet", description="imagenet: 7x7 stride-2 conv and max-pool; cifar: 3x3 conv")
        zero_init_residual: bool = Field(True, description="each block starts as the identity")

    def build(self, input_shape, num_classes) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(f"resnet needs images (C, H, W), got {input_shape}")
        c = self.config
        kind, counts = LAYOUTS[c.depth]
        make = basic if kind == "basic" else bottleneck
        if c.stem == "imagenet":
            stem = [nn.Conv2d(input_shape[0], c.width, 7, 2, 3, bias=False), _bn(c.width),
                    nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        else:
            stem = [nn.Conv2d(input_shape[0], c.width, 3, 1, 1, bias=False), _bn(c.width),
                    nn.ReLU(inplace=True)]
        layers, channels = list(stem), c.width
        for stage, count in enumerate(counts):
            for i in range(count):
                block, channels = make(channels, c.width * 2 ** stage,
                                       2 if stage > 0 and i == 0 else 1, c.zero_init_residual)
                layers.append(block)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
        net = nn.Sequential(*layers)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        return net
