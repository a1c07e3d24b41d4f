"""Test-time training on nearest neighbours, and the majority vote of the same neighbours.

Features are the trained model's activations before its last ``layers`` linear layers (the
penultimate layer for ``layers: 1``), for the run's own training set and for the points
scored. For each scored point: its k nearest training points (exact L2, in batched torch;
faiss when installed), a copy of the head fine-tuned for ``steps`` Adam steps at ``lr`` on
those k points, then the prediction. All points of a chunk train at once as one stacked head
(batched matrix multiplies): Adam is elementwise, so one optimizer over the stacked copies is
exactly one optimizer per point, without a Python loop over points.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ScalelabError
from ..models.stacked import bmm_forward
from ..plugin import PluginConfig
from ..registry import evaluators
from ._base import Evaluator


def split_head(model: nn.Module, layers: int) -> tuple[nn.Module, nn.Sequential]:
    """(body, head): the head holds the last ``layers`` linear layers of a Sequential model."""
    if not isinstance(model, nn.Sequential):
        raise ScalelabError("test-time training needs a Sequential model (mlp, cnn)")
    linear = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    if len(linear) < layers:
        raise ScalelabError(f"ttt layers: {layers} exceeds the model's {len(linear)} linear "
                            "layers")
    cut = linear[-layers]
    return model[:cut], model[cut:]


@torch.no_grad()
def nearest(train: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 1024
            ) -> torch.Tensor:
    """Indices (queries, k) of each query's k nearest training rows by exact L2 distance."""
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None and train.device.type == "cpu":
        index = faiss.IndexFlatL2(train.shape[1])
        index.add(train.float().numpy())
        return torch.from_numpy(index.search(queries.float().numpy(), k)[1]).long()
    out = []
    for start in range(0, len(queries), chunk):
        distances = torch.cdist(queries[start:start + chunk].float(), train.float())
        out.append(distances.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def _stacked_params(head: nn.Sequential, copies: int) -> dict[str, torch.Tensor]:
    return {name: p.detach().unsqueeze(0).repeat(copies, *[1] * p.dim()).requires_grad_()
            for name, p in head.named_parameters()}


def finetune_stacked(head: nn.Sequential, feats: torch.Tensor, labels: torch.Tensor,
                     queries: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Logits (P, C) of P copies of ``head``, each fine-tuned on its own k neighbours
    ``feats`` (P, k, d) / ``labels`` (P, k) and applied to its query (P, d)."""
    forward = bmm_forward(head)
    if forward is None:
        raise ScalelabError("ttt: the head must be linear layers and activations")
    params = _stacked_params(head, len(queries))
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            logits = forward(params, {}, feats)
            # Sum over points of each point's mean loss: the points' gradients stay separate.
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none") \
                .view(labels.shape).mean(1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
    with torch.no_grad():
        return forward(params, {}, queries.unsqueeze(1)).squeeze(1)


def finetune_one(head: nn.Sequential, feats: torch.Tensor, labels: torch.Tensor,
                 query: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """The reference: one point, one copied head, a plain loop (used by tests and benchmarks)."""
    local = copy.deepcopy(head)
    optimizer = torch.optim.Adam(local.parameters(), lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            loss = F.cross_entropy(local(feats), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
    with torch.no_grad():
        return local(query.unsqueeze(0)).squeeze(0)


class _Neighbours(Evaluator):
    """Shared by the evaluators that look at each point's nearest training points."""

    class Config(PluginConfig):
        k: int = Field(20, ge=1, description="nearest training points per scored point")
        layers: int = Field(1, ge=1, description="last linear layers after the feature cut")

    def prepare(self, model, data):
        self.body, self.head = split_head(model, self.config.layers)
        if self.config.k > len(data.y_train):
            raise ScalelabError(f"{type(self).__name__.lower()} k: {self.config.k} exceeds the "
                                f"{len(data.y_train)} training points")
        with torch.no_grad():
            self.train_feats = self.body(data.x_train).flatten(1)
        self.train_labels = data.y_train
        self.num_classes = data.num_classes

    def neighbours(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            queries = self.body(x).flatten(1)
        return queries, nearest(self.train_feats, queries, self.config.k)


@evaluators.register("knn_vote")
class KNNVote(_Neighbours):
    """Majority vote of each point's k nearest training points in the model's feature space."""

    def logits(self, model, x):
        _, index = self.neighbours(x)
        votes = F.one_hot(self.train_labels[index], self.num_classes).sum(1).float()
        # Log vote shares (smoothed) as logits: argmax is the vote, ties go to the lower class.
        return (votes + 1e-3).log() - (votes + 1e-3).sum(1, keepdim=True).log()


@evaluators.register("ttt")
class TTT(_Neighbours):
    """Test-time training: the head fine-tuned on each point's k nearest training points."""

    class Config(_Neighbours.Config):
        steps: int = Field(10, ge=0, description="Adam steps per point")
        lr: float = Field(0.01, gt=0, description="fine-tuning learning rate")
        chunk: int = Field(512, ge=1, description="points fine-tuned together")

    def logits(self, model, x):
        queries, index = self.neighbours(x)
        out = []
        c = self.config
        for start in range(0, len(x), c.chunk):
            rows = index[start:start + c.chunk]
            out.append(finetune_stacked(self.head, self.train_feats[rows],
                                        self.train_labels[rows], queries[start:start + c.chunk],
                                        c.steps, c.lr))
        return torch.cat(out)
