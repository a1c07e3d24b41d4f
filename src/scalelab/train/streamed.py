"""One model on a streamed image folder: the examples strategy, with batches decoded and
augmented by DataLoader workers instead of indexed from tensors in memory. The epoch order
(a selection method may prune it) and everything else are the in-memory strategy's."""

from __future__ import annotations

from typing import Any

import torch

from ..records import COMPLETED, RunResult
from ..tasks.imagefolder import FolderData
from .common import autocast, final_metrics
from .loop import Outcome
from .scoring import accuracy_by_class, score_loader
from .single import Examples


class EpochBatches:
    """The training rows of each epoch in batches; the strategy sets the next epoch's order
    before the loader asks for it (the loader's persistent workers keep their processes)."""

    def __init__(self, batch: int):
        self.batch, self.order = batch, torch.empty(0, dtype=torch.long)

    def __iter__(self):
        order = self.order
        for start in range(0, len(order) - self.batch + 1, self.batch):
            yield order[start:start + self.batch].tolist()

    def __len__(self) -> int:
        return len(self.order) // self.batch


class Streamed(Examples):
    """Examples from an image folder, through a DataLoader of Pillow-decoding workers."""

    def __init__(self, config: dict[str, Any], data: FolderData, dev: torch.device, criterion):
        super().__init__(config, data, dev, criterion)
        self.sampler = EpochBatches(self.batch)
        self.loader = torch.utils.data.DataLoader(
            data.dataset("train", train_view=True), batch_sampler=self.sampler,
            num_workers=data.workers, pin_memory=dev.type == "cuda",
            persistent_workers=data.workers > 0,
            generator=torch.Generator().manual_seed(config["seed"] + 1))

    def probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = next(iter(self.data.loader("train", self.batch)))
        return x.to(self.dev), y.to(self.dev)

    def start_epoch(self, order: torch.Tensor) -> torch.Tensor:
        self.sampler.order = order  # the loader's workers decode this epoch's batches in order
        self.iterator = iter(self.loader)
        return order

    def fetch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, index = next(self.iterator)  # the loader yields ``rows``, decoded
        return (x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True),
                index.to(self.dev))

    def evaluate(self):
        loss, acc, seen, _, _ = score_loader(self.model, self.data.loader(
            "val", self.cfg.eval_batch_size), self.dev)
        return [{"val_loss": loss, "val_acc": acc}], seen

    def finalize(self, result: RunResult, run: int, outcome: Outcome, checkpoint: bool) -> None:
        """Final metrics on every split through the loaders, per-class accuracy, the
        checkpoint, eval FLOPs."""
        data, cfg, state = self.data, self.cfg, outcome.states[0]
        limits = {"train": cfg.eval_train_samples, "val": None, "test": None}

        def evaluate_all(module):
            out, seen = {}, 0
            for split, limit in limits.items():
                loss, acc, n, _, _ = score_loader(
                    module, data.loader(split, cfg.eval_batch_size, limit), self.dev)
                out[f"{split}_loss"], out[f"{split}_acc"] = loss, acc
                seen += n
            return out, seen

        with autocast(self.dev, cfg):
            evaluated = state.evaluated + final_metrics(result, self.model, evaluate_all, cfg,
                                                        state, outcome.steps(0), checkpoint)
            if result.status == COMPLETED:
                _, _, n, pred, labels = score_loader(
                    self.model, data.loader("test", cfg.eval_batch_size), self.dev)
                result.metrics["test_acc_by_class"] = accuracy_by_class(pred, labels,
                                                                        data.num_classes)
                result.metrics["class_names"] = data.class_names
                evaluated += n
        result.metrics["eval_flops"] = int(self.forward_flops_per_sample * evaluated)
