"""Model-family base class: a family builds a torch module for a task's input shape."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import nn

from ..plugin import Plugin


class ModelFamily(Plugin, ABC):
    """Builds one model of the family from its config. Subclasses implement :meth:`build`."""

    #: True when runs of this family can be stacked and trained together (see train.stacked);
    #: a family with cross-sample state (batch-norm) must leave it False.
    stackable: ClassVar[bool] = False
    #: Size settings whose runs can share one stacked group by zero-padding to the group's
    #: largest value: valid only where a zero-padded unit provably stays zero in training.
    paddable: ClassVar[tuple[str, ...]] = ()
    #: Smallest group of runs worth stacking (``stack_min_runs`` overrides it).
    min_stack_group: ClassVar[int] = 3
    #: The task data kinds (``Task.data_kind``) this family can learn.
    data_kinds: ClassVar[tuple[str, ...]] = ("classification",)
    #: The config setting that is the model's width, for families with μP
    #: (``parametrization: mup``); None where there is none.
    width_setting: ClassVar[str | None] = None

    @abstractmethod
    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """A freshly initialised model for inputs of ``input_shape``."""

    def initialize(self, model: nn.Module, data) -> None:
        """Data-dependent initialisation from the run's data (airbench's whitening layer
        reads the training images), after :meth:`build`; nothing by default."""

    def non_embedding_parameters(self, model: nn.Module) -> int:
        """The size scaling laws count (Kaplan et al.'s N) of a model this family built:
        by default its parameters outside ``nn.Embedding`` tables; a family whose
        embeddings are held otherwise answers here."""
        return non_embedding_parameters(model)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters outside the ``nn.Embedding`` tables (token and position embeddings).

    An untied output head is a matrix of the network and counts; a tied one is the token
    embedding itself and does not.
    """
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
                 for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Run a pass that must leave no trace (counting FLOPs, a selection method's scoring
    forward): buffers (BatchNorm's running statistics and its batch count) are put back as
    they were, so only training steps move them."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
