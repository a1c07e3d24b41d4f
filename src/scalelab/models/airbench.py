"""The fast CIFAR-10 network of the airbench recipes (Keller Jordan, 2024), written from its
published description:

    whiten  2x2 conv, 24 channels, frozen: +/- the eigenvectors of the covariance of 2x2
            patches of training images, scaled by 1/sqrt(eigenvalue + eps); its bias starts at
            zero and trains
    GELU
    3 blocks, each: conv3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU
            (convs without bias, identity-initialised with torch's dirac_ on their first
            in-channels; BatchNorm weights frozen at 1, biases trained, momentum 0.6)
    max-pool over what is left (3x3 for CIFAR) -> flatten -> linear (no bias) -> times ``output_scale`` (1/9)

Widths are settings (airbench94: 64, 256, 256). BatchNorm mixes samples, so runs of this
family never stack.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from pydantic import Field
from torch import nn

from ..plugin import PluginConfig
from ..registry import models
from ._base import ModelFamily


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])  # the first c_in filters pass their input through
    return conv


def _norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=1 - momentum)
    norm.weight.requires_grad_(False)
    return norm


class Block(nn.Sequential):
    """One of the three blocks; its BatchNorms are named ``norm1``/``norm2`` so that
    ``param_groups: [{match: '*norm*.bias', ...}]`` finds them."""

    def __init__(self, c_in: int, c_out: int, momentum: float):
        super().__init__(OrderedDict(
            conv1=_conv(c_in, c_out), pool=nn.MaxPool2d(2), norm1=_norm(c_out, momentum),
            act1=nn.GELU(), conv2=_conv(c_out, c_out), norm2=_norm(c_out, momentum),
            act2=nn.GELU()))


@models.register("airbench")
class Airbench(ModelFamily):
    """airbench's CIFAR net: frozen whitening conv, 3 conv blocks with BatchNorm, scaled head."""

    class Config(PluginConfig):
        widths: tuple[int, int, int] = Field((64, 256, 256), description="channels of the "
                                             "three blocks (airbench94: 64, 256, 256)")
        batchnorm_momentum: float = Field(0.6, gt=0, lt=1, description="weight of the old "
                                          "running statistics (torch's momentum is 1 - this)")
        output_scale: float = Field(1 / 9, gt=0, description="multiplies the logits")
        whiten_eps: float = Field(5e-4, gt=0, description="added to patch eigenvalues")
        whiten_images: int = Field(5000, ge=1, description="training images whose patches "
                                   "initialise the whitening layer")

    def build(self, input_shape, num_classes) -> nn.Module:
        if len(input_shape) != 3 or min(input_shape[1:]) < 16:
            raise ValueError(f"airbench needs images (C, H, W) of at least 16 x 16 pixels "
                             f"(three halvings), got {input_shape}")
        c = self.config
        channels = input_shape[0]
        whiten_width = 2 * channels * 2 * 2
        w1, w2, w3 = c.widths
        net = nn.Sequential()
        net.add_module("whiten", nn.Conv2d(channels, whiten_width, 2, padding=0, bias=True))
        net.whiten.weight.requires_grad_(False)
        nn.init.zeros_(net.whiten.bias)  # airbench94.py:185-186 (Conv.reset_parameters)
        net.add_module("act", nn.GELU())
        for name, (c_in, c_out) in zip(("block1", "block2", "block3"),
                                       ((whiten_width, w1), (w1, w2), (w2, w3))):
            net.add_module(name, Block(c_in, c_out, c.batchnorm_momentum))
        net.add_module("pool", nn.AdaptiveMaxPool2d(1))  # airbench's max-pool 3 on 3x3 maps
        net.add_module("flatten", nn.Flatten())
        net.add_module("head", nn.Linear(w3, num_classes, bias=False))
        net.add_module("scale", Scale(c.output_scale))
        return net

    def initialize(self, model: nn.Module, data) -> None:
        """The whitening filters from the patch covariance of the first training images."""
        images = data.x_train[: self.config.whiten_images].float()
        layer = model.whiten
        h, w = layer.weight.shape[2:]
        c = images.shape[1]
        patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
        flat = patches.reshape(len(patches), -1).double()
        covariance = flat.T @ flat / len(flat)
        values, vectors = torch.linalg.eigh(covariance)
        values, vectors = values.flip(0), vectors.T.flip(0).reshape(-1, c, h, w)
        scaled = (vectors / torch.sqrt(values + self.config.whiten_eps).view(-1, 1, 1, 1))
        with torch.no_grad():
            layer.weight.copy_(torch.cat((scaled, -scaled)).to(layer.weight))
