"""Scoring a trained classifier: loss and accuracy over a split (tensors in memory, or a
streamed loader), and accuracy per class.

The loop evaluates through these (one model, or a stacked group through its forward); the
final metrics and re-scoring of checkpoints use the same functions, so every ``*_loss`` and
``*_acc`` in the store is computed one way. Token streams are scored in ``train.lm``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    model.train(was_training)
    return loss_sum.item() / len(y), correct.item() / len(y)


@torch.no_grad()
def evaluate_stacked(forward: Callable, runs: int, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int) -> tuple[list[float], list[float]]:
    """Each stacked run's mean cross-entropy and accuracy over (x, y); ``forward`` maps
    (runs, batch, ...) inputs to (runs, batch, classes) logits."""
    loss_sum = torch.zeros(runs, device=x.device)
    correct = torch.zeros(runs, device=x.device)
    for start in range(0, len(y), batch_size):
        xs, ys = x[start:start + batch_size], y[start:start + batch_size]
        logits = forward(xs.expand(runs, *xs.shape)).float()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), ys.repeat(runs), reduction="none") \
            .view(runs, -1).sum(1)
        correct += (logits.argmax(-1) == ys).sum(1)
    return (loss_sum / len(y)).tolist(), (correct / len(y)).tolist()


@torch.no_grad()
def class_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                   batch_size: int) -> list[float | None]:
    """Test accuracy of each class (None for a class absent from the test set)."""
    was_training = model.training
    model.eval()
    pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)])
    model.train(was_training)
    return accuracy_by_class(pred, y, num_classes)


def accuracy_by_class(pred: torch.Tensor, y: torch.Tensor, num_classes: int
                      ) -> list[float | None]:
    """Share of each class's examples predicted right (None for a class with none)."""
    total = torch.bincount(y, minlength=num_classes)
    correct = torch.bincount(y[pred == y], minlength=num_classes)
    return [c / t if t else None for c, t in zip(correct.tolist(), total.tolist())]


def score_loader(model: nn.Module, loader, device
                 ) -> tuple[float, float, int, torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, accuracy, examples, predictions, labels) of ``model`` over a
    loader of (inputs, labels, rows) batches, such as a streamed image folder's."""
    was_training = model.training
    model.eval()
    loss, correct, seen, preds, labels = 0.0, 0, 0, [], []
    with torch.no_grad():
        for x, y, _ in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            pred = logits.argmax(1)
            correct += int((pred == y).sum())
            seen += len(y)
            preds.append(pred.cpu())
            labels.append(y.cpu())
    model.train(was_training)
    return loss / max(1, seen), correct / max(1, seen), seen, torch.cat(preds), torch.cat(labels)
