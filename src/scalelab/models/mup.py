"""Maximal-update parametrization (μP; Yang et al. 2022, "Tensor Programs V"), relative to a
base width, so that one learning rate tuned on a small model transfers to wide ones.

With m = width / base_width, every parameter has a role by how its shape grows with width,
and the role sets its initialisation, its forward multiplier and its learning rate (the
"multiplier" form of the paper's Table 3, chosen because it also holds for a readout tied to
the input embedding):

=========  =========================================  ========  ==========  ==========
role       parameters                                 init      Adam/AdamW  SGD
=========  =========================================  ========  ==========  ==========
vector     input weights, embeddings, biases and      as SP †   lr          lr · m
           norm gains of width-sized layers
hidden     width × width matrices                     var ∝     lr / m      lr
                                                      1/fan_in
readout    the output layer; its input is scaled by   var       lr          lr · m
           1/m in the forward pass                    constant
fixed      no width-sized dimension (output bias)     as SP †   lr          lr
=========  =========================================  ========  ==========  ==========

† a bias whose layer's fan-in is the width (hidden layers, the readout) starts at the base
width's scale (below). Every role's weight decay is multiplied by the inverse of its
learning-rate multiplier (below).

Attention scores use 1/d_head (times sqrt of the base head size) instead of 1/sqrt(d_head).

Weight decay follows Microsoft's μP package (microsoft/mup, ``mup/optim.py``): a group whose
learning rate is multiplied by k has its weight decay multiplied by 1/k (:func:`decay_multiplier`),
so lr · weight_decay, the decay per step, is the same at every width. That is the package's
rule for coupled (L2) decay, torch's SGD and Adam (``MuSGD``/``MuAdam`` with their default
``decoupled_wd=False``, optim.py:38, 77-79, 91, 131-139), and also what it does for AdamW:
``MuAdamW`` is ``MuAdam(impl=AdamW)`` with the same default (optim.py:83-89), and torch's AdamW
decays by lr · weight_decay, so the rescaling keeps that product width-independent too.

Biases are initialised as the package's ``set_base_shapes`` leaves them (mup/shape.py:189-194):
PyTorch's default bias init U(±1/sqrt(fan_in)) times sqrt(fan-in multiplier) for a layer whose
fan-in is the width (``rescale_linear_bias``, mup/layer.py:82-83) and for the readout
(``MuReadout._rescale_parameters``, mup/layer.py:49-51), i.e. the base width's scale at every
width; a bias whose fan-in is not the width (the input layer's) is left as it is. (The package
zero-initialises them only on request, ``MuReadout(readout_zero_init=True)``, layer.py:20-23:
zero biases would make μP at its base width differ from the standard parametrization.)

At m = 1 every rule is the identity: μP at its base width is the standard parametrization.
The model carries its roles and m (:func:`mark`), and the optimizer and the stacked trainer
read them from there (:func:`lr_multipliers`), so a μP run trains the same alone or stacked.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from ..plugin import PluginConfig

Role = Literal["vector", "hidden", "readout", "fixed"]


Parametrization = Literal["standard", "mup"]
#: The two settings of a width-scalable family's config, declared after its own (so that
#: messages list width and depth first): ``parametrization: Parametrization = PARAMETRIZATION``
#: and ``base_width: int = BASE_WIDTH``.
PARAMETRIZATION = Field("standard", description="standard, or mup: maximal-update "
                        "parametrization (one learning rate transfers across widths)")
BASE_WIDTH = Field(64, ge=1, description="mup: the width at which mup equals standard (tune "
                   "there, then scale)")


class WidthParametrization(PluginConfig):
    """What a width-scalable family's config shares: its run identity and m (the subclass
    declares the two fields)."""

    later_settings: ClassVar[dict[str, object]] = {"parametrization": "standard",
                                                   "base_width": 64}

    def identity(self) -> dict[str, object]:
        out = super().identity()
        if self.parametrization == "standard":
            out.pop("base_width", None)  # no effect without μP: never a different run
        return out

    def multiplier(self, width: int) -> float:
        """m = width / base_width under μP, 1 under standard."""
        return width / self.base_width if self.parametrization == "mup" else 1.0


class WidthScale(nn.Module):
    """Multiplies its input by a constant (μP's 1/m before the readout). The factor is a
    buffer so that runs of several widths stacked together each keep their own."""

    def __init__(self, factor: float):
        super().__init__()
        self.register_buffer("factor", torch.tensor(float(factor)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def mark(model: nn.Module, roles: dict[str, Role], multiplier: float) -> nn.Module:
    """Record each parameter's role (by name) and the width multiplier on ``model``."""
    names = {name for name, _ in model.named_parameters()}
    if names - roles.keys():
        raise ValueError(f"μP roles missing for {sorted(names - roles.keys())}")
    model.mup_roles, model.mup_multiplier = roles, multiplier
    return model


#: The learning-rate multiplier of each role, as a power of m, per optimizer kind.
LR_POWER: dict[str, dict[Role, int]] = {
    "adam": {"vector": 0, "hidden": -1, "readout": 0, "fixed": 0},
    "sgd": {"vector": 1, "hidden": 0, "readout": 1, "fixed": 0},
}


def lr_multipliers(model: nn.Module, optimizer: str) -> dict[str, float] | None:
    """Each parameter's learning-rate multiplier (by name), or None for a standard model."""
    roles = getattr(model, "mup_roles", None)
    if roles is None:
        return None
    powers = LR_POWER["sgd" if optimizer == "sgd" else "adam"]
    m = model.mup_multiplier
    return {name: m ** powers[role] for name, role in roles.items()}


def decay_multiplier(lr_multiplier: float) -> float:
    """The weight-decay multiplier of a parameter whose learning rate is multiplied by
    ``lr_multiplier``: its inverse, as microsoft/mup's optimizers scale it (module docstring);
    exactly 1 at the base width."""
    return 1 / lr_multiplier


def scale_init(module: nn.Linear | nn.Embedding, factor: float) -> None:
    """Multiply a layer's initial weights by ``factor`` (its bias: :func:`scale_bias`)."""
    with torch.no_grad():
        module.weight.mul_(factor)


def scale_bias(module: nn.Linear, factor: float) -> None:
    """Multiply a layer's initial bias (if any) by ``factor``."""
    if module.bias is not None:
        with torch.no_grad():
            module.bias.mul_(factor)
