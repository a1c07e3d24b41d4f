"""GPT: a decoder-only transformer with the options of the fast GPT-2 training recipes.

Pre-norm blocks of causal self-attention (``scaled_dot_product_attention``) and an MLP.
Options: learned or rotary positions, LayerNorm or RMSNorm, GELU or ReLU², QK-norm,
zero-initialised output projections, tied input/output embeddings, and μP
(``parametrization: mup``, with d_model as the width; see models.mup).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..registry import models
from ._base import ModelFamily
from .mup import (
    BASE_WIDTH,
    PARAMETRIZATION,
    Parametrization,
    WidthParametrization,
    WidthScale,
    mark,
    scale_init,
)


@models.register("gpt")
class GPT(ModelFamily):
    """Decoder-only transformer language model (rotary, RMSNorm, ReLU², QK-norm as options)."""

    data_kinds = ("language",)
    width_setting = "d_model"  # the width μP scales (see models.mup)

    class Config(WidthParametrization):
        d_model: int = Field(64, ge=1, description="width of the residual stream")
        n_layers: int = Field(2, ge=1, description="transformer blocks")
        n_heads: int = Field(4, ge=1, description="attention heads (must divide d_model)")
        context_length: int = Field(64, ge=1, description="tokens the model attends over")
        mlp_ratio: int = Field(4, ge=1, description="MLP hidden width / d_model")
        positions: Literal["learned", "rotary"] = Field(
            "learned", description="learned absolute embeddings (GPT-2) or rotary (RoPE)")
        norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="normalisation")
        activation: Literal["gelu", "relu2"] = Field("gelu", description="MLP nonlinearity")
        qk_norm: bool = Field(False, description="RMS-normalise queries and keys per head")
        zero_init_proj: bool = Field(
            False, description="zero-initialise attention/MLP output projections")
        tied_embeddings: bool = Field(True, description="output head shares the token embedding")
        rope_base: float = Field(10_000.0, gt=1, description="rotary frequency base")
        parametrization: Parametrization = PARAMETRIZATION
        base_width: int = BASE_WIDTH

        @model_validator(mode="after")
        def _heads_divide(self):
            if self.d_model % self.n_heads:
                raise ValueError(f"n_heads {self.n_heads} must divide d_model {self.d_model}")
            if self.positions == "rotary" and (self.d_model // self.n_heads) % 2:
                raise ValueError("rotary positions need an even head size (d_model / n_heads)")
            if self.parametrization == "mup" and self.base_width % self.n_heads:
                raise ValueError(f"n_heads {self.n_heads} must divide base_width "
                                 f"{self.base_width} (the base d_model of mup)")
            return self

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """``num_classes`` is the vocabulary; the sequence length comes from the config."""
        return GPTModule(self.config, num_classes)


def _norm(kind: str, dim: int) -> nn.Module:
    return nn.LayerNorm(dim) if kind == "layernorm" else nn.RMSNorm(dim)


class Rotary(nn.Module):
    """Rotary position embedding: rotates pairs of query/key features by position."""

    def __init__(self, head_dim: int, length: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, heads, T, head_dim)
        t = x.shape[-2]
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, c: GPT.Config):
        super().__init__()
        self.n_heads, self.head_dim = c.n_heads, c.d_model // c.n_heads
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.qk_norm = c.qk_norm
        # μP scores q·k by 1/d_head (× sqrt of the base head size, so base width = standard).
        self.scale = math.sqrt(c.base_width // c.n_heads) / self.head_dim \
            if c.parametrization == "mup" else None
        self.rotary = Rotary(self.head_dim, c.context_length, c.rope_base) \
            if c.positions == "rotary" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
                   for z in self.qkv(x).split(d, dim=2))
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, c: GPT.Config):
        super().__init__()
        self.fc = nn.Linear(c.d_model, c.mlp_ratio * c.d_model, bias=False)
        self.proj = nn.Linear(c.mlp_ratio * c.d_model, c.d_model, bias=False)
        self.relu2 = c.activation == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, c: GPT.Config):
        super().__init__()
        self.norm1, self.attn = _norm(c.norm, c.d_model), Attention(c)
        self.norm2, self.mlp = _norm(c.norm, c.d_model), MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPTModule(nn.Module):
    """Token ids (B, T) in, next-token logits (B, T, vocab) out."""

    def __init__(self, c: GPT.Config, vocab_size: int):
        super().__init__()
        self.context_length = c.context_length
        self.wte = nn.Embedding(vocab_size, c.d_model)
        self.wpe = nn.Embedding(c.context_length, c.d_model) if c.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = _norm(c.norm, c.d_model)
        m = c.multiplier(c.d_model)
        self.readout_scale = WidthScale(1 / m) if c.parametrization == "mup" else None
        self.head = nn.Linear(c.d_model, vocab_size, bias=False)
        # GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers).
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                if c.zero_init_proj:
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * c.n_layers))
        if c.tied_embeddings:
            self.head.weight = self.wte.weight
        if self.readout_scale is not None:
            self._mup(m)

    def _mup(self, m: float) -> None:
        """μP on top of the GPT-2 initialisation: width × width matrices start at std / √m
        (var ∝ 1/fan_in), the readout's input is scaled by 1/m (see models.mup)."""
        hidden = [layer for block in self.blocks
                  for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj)]
        for layer in hidden:
            scale_init(layer, 1 / math.sqrt(m))
        names = {id(layer.weight) for layer in hidden}
        roles = {name: "hidden" if id(p) in names else
                 "readout" if name == "head.weight" else "vector"
                 for name, p in self.named_parameters()}
        mark(self, roles, m)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context_length:
            raise ValueError(f"sequence of {t} tokens exceeds context_length {self.context_length}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.readout_scale is not None:
            x = self.readout_scale(x)
        return self.head(x)
