"""Vision Transformer (Dosovitskiy et al., 2021): the image cut into patches, each linearly
embedded, a learned class token and position embeddings, pre-norm transformer blocks, and
the class token's final LayerNorm into a linear head.

    patches  conv patch_size x patch_size, stride patch_size -> width
    blocks   depth x [LayerNorm -> multi-head self-attention (heads) -> +,
                      LayerNorm -> MLP (mlp_ratio x width, GELU) -> +]
    head     LayerNorm(class token) -> linear

``preset: vit_b16`` is ViT-B/16 (patch 16, depth 12, width 768, 12 heads, MLP 3072;
86,567,656 parameters at 224 x 224 and 1,000 classes, as torchvision's vit_b_16). Every block
is built on its own and the whole model is initialised as torchvision's VisionTransformer
(the constants below, with the lines they come from).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..plugin import PluginConfig
from ..registry import models
from ._base import ModelFamily

PRESETS = {"vit_b16": {"patch_size": 16, "depth": 12, "width": 768, "heads": 12,
                       "mlp_ratio": 4.0},
           "vit_s16": {"patch_size": 16, "depth": 12, "width": 384, "heads": 6,
                       "mlp_ratio": 4.0}}


# Initialisation as torchvision's VisionTransformer (pytorch/vision,
# torchvision/models/vision_transformer.py at 07a929e8b851242b1c75c9016ee06a8e502961d8):
#   LayerNorm eps 1e-6 ............................................... lines 96, 135, 176
#   MLP linears: xavier_uniform weights, biases normal std 1e-6 ...... lines 50, 52
#   position embedding normal std 0.02 ("from BERT") ................. line 140
#   class token zeros ................................................ line 221
#   patch stem: trunc_normal std sqrt(1 / fan_in), fan_in = C·p·p, zero bias  lines 248-251
#   head: zero weight and bias ....................................... lines 266-267
# Attention keeps nn.MultiheadAttention's own init (xavier_uniform in-projection, zero
# biases), as torchvision does (line 104).
LN_EPS = 1e-6
POSITION_STD = 0.02
MLP_BIAS_STD = 1e-6


def _block(width: int, heads: int, hidden: int, dropout: float) -> nn.TransformerEncoderLayer:
    """One pre-LN block (LayerNorm -> attention -> +, LayerNorm -> MLP with GELU -> +), built
    on its own so that no two blocks share their initial weights."""
    block = nn.TransformerEncoderLayer(width, heads, hidden, dropout, activation="gelu",
                                       layer_norm_eps=LN_EPS, batch_first=True,
                                       norm_first=True)
    for linear in (block.linear1, block.linear2):
        nn.init.xavier_uniform_(linear.weight)
        nn.init.normal_(linear.bias, std=MLP_BIAS_STD)
    return block


class Blocks(nn.Module):
    """The blocks in order (``layers``: the state-dict keys nn.TransformerEncoder had)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


class ViTModule(nn.Module):
    def __init__(self, channels: int, size: tuple[int, int], num_classes: int, patch: int,
                 depth: int, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        if size[0] % patch or size[1] % patch:
            raise ValueError(f"vit: image size {size} is not a multiple of patch_size {patch}")
        tokens = (size[0] // patch) * (size[1] // patch)
        self.patches = nn.Conv2d(channels, width, patch, patch)
        nn.init.trunc_normal_(self.patches.weight, std=math.sqrt(1 / (channels * patch * patch)))
        nn.init.zeros_(self.patches.bias)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.empty(1, tokens + 1, width))
        nn.init.normal_(self.position, std=POSITION_STD)
        self.blocks = Blocks([_block(width, heads, int(mlp_ratio * width), dropout)
                              for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.head = nn.Linear(width, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.position
        return self.head(self.norm(self.blocks(tokens)[:, 0]))


@models.register("vit")
class ViT(ModelFamily):
    """Vision Transformer: patch size, depth, width, heads; presets vit_b16 and vit_s16."""

    class Config(PluginConfig):
        preset: Literal["none", "vit_b16", "vit_s16"] = Field(
            "none", description="a published shape; overrides patch_size/depth/width/heads")
        patch_size: int = Field(4, ge=1, description="side of the square patches")
        depth: int = Field(6, ge=1, description="transformer blocks")
        width: int = Field(192, ge=1, description="embedding width")
        heads: int = Field(3, ge=1, description="attention heads (must divide width)")
        mlp_ratio: float = Field(4.0, gt=0, description="MLP hidden width / width")
        dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the blocks")

        @model_validator(mode="after")
        def _heads_divide(self):
            shape = PRESETS.get(self.preset, {"width": self.width, "heads": self.heads})
            if shape["width"] % shape["heads"]:
                raise ValueError(f"heads ({shape['heads']}) must divide width ({shape['width']})")
            return self

    def build(self, input_shape, num_classes) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(f"vit needs images (C, H, W), got {input_shape}")
        c = self.config
        shape = {"patch_size": c.patch_size, "depth": c.depth, "width": c.width,
                 "heads": c.heads, "mlp_ratio": c.mlp_ratio, **PRESETS.get(c.preset, {})}
        return ViTModule(input_shape[0], tuple(input_shape[1:]), num_classes,
                         shape["patch_size"], shape["depth"], shape["width"], shape["heads"],
                         shape["mlp_ratio"], c.dropout)
