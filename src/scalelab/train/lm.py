"""Language-model training: random context windows of a token stream, next-token loss.

Runs as one process, or as one rank of a ``torchrun`` job (see ``train.ddp``): every rank
draws the same global batch of window offsets from the run's seed and reads only its own
slice of it. Evaluation is split across ranks the same way and summed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ScalelabError
from ..models import count_parameters
from ..plugin import instantiate
from ..records import RunResult
from ..registry import methods, models
from ..spec import TrainConfig
from ..tasks.text import TokenData
from .common import OneModel, autocast, build, counted_compute, epoch_steps, final_metrics
from .ddp import all_sum, world, wrap
from .loop import Batch, Outcome
from .optim import make_optimizer


def windows(tokens: torch.Tensor, starts: torch.Tensor, length: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``tokens[s : s+length]`` and next-token targets for each start ``s``."""
    index = starts[:, None] + torch.arange(length + 1, device=starts.device)
    chunk = tokens[index]
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def evaluate_tokens(model: nn.Module, tokens: torch.Tensor, length: int,
                    tokens_per_forward: int) -> tuple[float, int]:
    """(mean next-token loss in nats, tokens scored) over consecutive non-overlapping windows;
    in a distributed job each rank scores every world-th window and the sums are combined."""
    rank, size = world()
    count = (len(tokens) - 1) // length
    if count < 1:
        raise ScalelabError(f"an evaluation split has {len(tokens)} tokens, fewer than "
                            f"context_length + 1 = {length + 1}")
    starts = torch.arange(count, device=tokens.device)[rank::size] * length
    per_forward = max(1, tokens_per_forward // length)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=tokens.device)
    for chunk in starts.split(per_forward):
        x, y = windows(tokens, chunk, length)
        logits = model(x)
        loss_sum += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
    model.train(was_training)
    total, scored = all_sum([loss_sum.item(), float(len(starts) * length)], tokens.device)
    return total / scored, int(scored)


def language_metrics(prefix: str, loss: float, bytes_per_token: float | None) -> dict[str, Any]:
    """Loss (nats/token), perplexity and bits per byte (None when bytes are unknown)."""
    bpb = loss / math.log(2) / bytes_per_token if bytes_per_token else None
    ppl = math.exp(loss) if loss < 700 else math.inf
    return {f"{prefix}_loss": loss, f"{prefix}_ppl": ppl, f"{prefix}_bpb": bpb}


class TokenWindows(OneModel):
    """Random context windows of the training stream for one language model (one rank's
    slice of each global batch in a ``torchrun`` job)."""

    def __init__(self, config: dict[str, Any], data: TokenData, dev: torch.device, criterion):
        self.cfg = cfg = TrainConfig.model_validate(config["train"])
        self.dev = dev
        self.rank, self.size = world()
        self.train_tokens = data.train  # batches are cut on the host: no per-step GPU sync
        if dev.type == "cuda":
            self.train_tokens = self.train_tokens.pin_memory()
        self.data = data = data.to(dev)
        method = instantiate(methods, config["method"])
        if not method.stackable:
            raise ScalelabError(f"method {config['method']['name']} is not supported for "
                                "language models (they train with the plain next-token loss)")
        method.criterion = criterion
        self.method = method
        self.family = instantiate(models, config["model"])
        self.model = build(config, data).to(dev)
        self.length = length = self.model.context_length
        n_windows = (len(data.train) - 1) // length  # non-overlapping windows: one "epoch"
        if n_windows < 1:
            raise ScalelabError(f"{len(data.train)} training tokens are fewer than "
                                "context_length + 1")
        self.batch = batch = cfg.batch_size
        self.cfg = cfg = cfg.at_batch(batch)
        self.total_steps = cfg.max_steps or epoch_steps(cfg.epochs, n_windows / batch)
        if batch % self.size:
            raise ScalelabError(f"train.batch_size {batch} must divide evenly over "
                                f"{self.size} processes")
        local = batch // self.size
        self.mine = slice(self.rank * local, (self.rank + 1) * local)
        self.generator = torch.Generator().manual_seed(config["seed"])
        self.highest_start = len(data.train) - length  # exclusive: the last window needs a next token
        probe = windows(data.train, torch.arange(batch, device=dev) % self.highest_start, length)
        with autocast(dev, cfg):  # counting runs the real kernels once: the warm-up step
            self.flops_per_step, self.forward_flops_per_window = counted_compute(
                method, self.model, *probe, batch)
        self.optimizer = make_optimizer(self.model, cfg)
        self.trained: nn.Module = wrap(self.model, dev)
        if cfg.compile:
            self.trained = torch.compile(self.trained)
        self.lr = cfg.lr
        self.model.train()

    @staticmethod
    def train_size(data: TokenData) -> int:
        return len(data.train)

    def draw(self, step: int) -> Batch:
        starts = torch.randint(self.highest_start, (self.batch,), generator=self.generator)
        x, y = windows(self.train_tokens, starts[self.mine], self.length)
        if self.dev.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return Batch(x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True),
                     None, step - 1, step == self.total_steps)

    def step(self, batch: Batch, step: int):
        self.schedule(batch)
        with autocast(self.dev, self.cfg):
            loss = self.method.training_loss(self.trained, batch.x, batch.y)
        self.update(loss)
        return loss.detach().reshape(1), {}

    def evaluate(self):
        with autocast(self.dev, self.cfg):
            val_loss, scored = evaluate_tokens(self.model, self.data.val, self.length,
                                               self.cfg.eval_batch_size)
        return [{"val_loss": val_loss}], scored

    def check_every(self) -> int | None:
        # Ranks must agree on when to stop, so a distributed job checks only the all-reduced
        # loss at evaluations.
        return None if self.size > 1 else super().check_every()

    def mean(self, sums: list[float], count: int) -> list[float]:
        return [s / (count * self.size) for s in all_sum(sums, self.dev)]


    def account(self, result: RunResult, run: int, outcome: Outcome) -> None:
        result.provenance["world_size"] = self.size
        steps = outcome.steps(run)
        n_nonembed = self.family.non_embedding_parameters(self.model)
        tokens_per_step = self.batch * self.length
        tokens_seen = steps * tokens_per_step
        train_time = outcome.train_time
        result.metrics.update(
            n_params=count_parameters(self.model), n_params_nonembed=n_nonembed,
            batch_size=self.batch, context_length=self.length, tokens_per_step=tokens_per_step,
            flops_per_step=self.flops_per_step,
            flops_per_step_6nd=6 * n_nonembed * tokens_per_step, world_size=self.size,
            steps=steps, samples_seen=steps * self.batch, tokens_seen=tokens_seen,
            epochs_seen=tokens_seen / len(self.data.train),
            train_flops=self.flops_per_step * steps, train_flops_6nd=6 * n_nonembed * tokens_seen,
            wall_time=train_time,
            tokens_per_second=tokens_seen / max(1e-9, train_time - outcome.eval_time))

    def finalize(self, result: RunResult, run: int, outcome: Outcome, checkpoint: bool) -> None:
        """Loss, perplexity and bits per byte on every split; the checkpoint from rank 0."""
        data, cfg = self.data, self.cfg
        splits = {"train": data.train[: cfg.eval_train_samples], "val": data.val,
                  "test": data.test}

        def evaluate_all(module: nn.Module) -> tuple[dict[str, float], int]:
            out, scored_total = {}, 0
            for name, tokens in splits.items():
                loss_value, scored = evaluate_tokens(module, tokens, self.length,
                                                     cfg.eval_batch_size)
                out |= language_metrics(name, loss_value, data.bytes_per_token[name])
                scored_total += scored
            return out, scored_total

        state = outcome.states[run]
        with autocast(self.dev, cfg):
            evaluated = state.evaluated + final_metrics(
                result, self.model, evaluate_all, cfg, state, outcome.steps(run),
                checkpoint and self.rank == 0)
        result.metrics["eval_flops"] = int(self.forward_flops_per_window / self.length
                                           * evaluated)
