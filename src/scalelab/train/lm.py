"""Language-model training: random context windows of a token stream, next-token loss.

Runs as one process, or as one rank of a ``torchrun`` job (DistributedDataParallel): every
rank draws the same global batch of window offsets from the run's seed and reads only its
own slice of it, so K processes take exactly the steps one process would with the same global
batch. Evaluation is split across ranks the same way and summed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ScalelabError
from ..methods import Method
from ..models import count_parameters
from ..models.gpt import non_embedding_parameters
from ..plugin import instantiate
from ..registry import methods, tasks
from ..spec import TrainConfig
from ..tasks.text import TokenData
from .optim import lr_factor, make_optimizer, set_lr
from .trainer import (
    COMPLETED,
    DIVERGED,
    BestWeights,
    RunResult,
    autocast,
    build,
    counted_compute,
    final_metrics,
    optimizer_step,
    provenance,
)


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a distributed job."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def windows(tokens: torch.Tensor, starts: torch.Tensor, length: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``tokens[s : s+length]`` and next-token targets for each start ``s``."""
    index = starts[:, None] + torch.arange(length + 1, device=starts.device)
    chunk = tokens[index]
    return chunk[:, :-1], chunk[:, 1:]


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


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
    total, scored = _all_sum([loss_sum.item(), float(len(starts) * length)], tokens.device)
    return total / scored, int(scored)


def language_metrics(prefix: str, loss: float, bytes_per_token: float | None) -> dict[str, Any]:
    """Loss (nats/token), perplexity and bits per byte (None when bytes are unknown)."""
    bpb = loss / math.log(2) / bytes_per_token if bytes_per_token else None
    ppl = math.exp(loss) if loss < 700 else math.inf
    return {f"{prefix}_loss": loss, f"{prefix}_ppl": ppl, f"{prefix}_bpb": bpb}


def train_lm(config: dict[str, Any], dev: torch.device, checkpoint: Path | None) -> RunResult:
    started = time.perf_counter()
    rank, size = world()
    cfg = TrainConfig.model_validate(config["train"])
    data: TokenData = instantiate(tasks, config["task"]).load()
    train_tokens = data.train  # batches are cut on the host and copied: no per-step GPU sync
    if dev.type == "cuda":
        train_tokens = train_tokens.pin_memory()
    data = data.to(dev)
    method = instantiate(methods, config["method"])
    if type(method).step_loss is not Method.step_loss or not method.stackable:
        raise ScalelabError(f"method {config['method']['name']} is not supported for language "
                            "models (they train with the plain next-token loss)")
    model = build(config, data).to(dev)
    length = model.context_length
    result = RunResult(COMPLETED, provenance=provenance(dev) | {"world_size": size})

    n_windows = (len(data.train) - 1) // length  # non-overlapping windows: one "epoch"
    if n_windows < 1:
        raise ScalelabError(f"{len(data.train)} training tokens are fewer than context_length + 1")
    batch = cfg.batch_size
    total_steps = cfg.max_steps or max(1, round(cfg.epochs * n_windows / batch))
    if batch % size:
        raise ScalelabError(f"train.batch_size {batch} must divide evenly over {size} processes")
    local = batch // size
    mine = slice(rank * local, (rank + 1) * local)
    generator = torch.Generator().manual_seed(config["seed"])
    highest_start = len(data.train) - length  # exclusive: the last window needs a next token

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(highest_start, (batch,), generator=generator)
        x, y = windows(train_tokens, starts[mine], length)
        if dev.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    probe = windows(data.train, torch.arange(batch, device=dev) % highest_start, length)
    with autocast(dev, cfg):  # counting runs the real kernels once: the warm-up step
        flops_per_step, forward_flops_per_window = counted_compute(method, model, *probe, batch)
    n_nonembed = non_embedding_parameters(model)
    tokens_per_step = batch * length
    optimizer = make_optimizer(model, cfg)
    trained: nn.Module = model
    if size > 1:
        trained = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.compile:
        trained = torch.compile(trained)
    # A per-step finiteness check is free on one CPU process. Ranks must agree on when to stop,
    # so a distributed job checks only the all-reduced loss at evaluations.
    check_every = 1 if dev.type == "cpu" else cfg.eval_every

    m = result.metrics
    m.update(n_params=count_parameters(model), n_params_nonembed=n_nonembed, batch_size=batch,
             context_length=length, tokens_per_step=tokens_per_step,
             flops_per_step=flops_per_step, flops_per_step_6nd=6 * n_nonembed * tokens_per_step,
             world_size=size)
    best = BestWeights(cfg, total_steps)
    running, running_count, evaluated_tokens, step = torch.zeros((), device=dev), 0, 0, 0
    train_started = time.perf_counter()
    eval_time = 0.0
    model.train()
    for step in range(1, total_steps + 1):
        x, y = draw()
        step_lr = set_lr(optimizer, lr_factor(step - 1, total_steps, cfg)) * cfg.lr
        with autocast(dev, cfg):
            loss = method.training_loss(trained, x, y)
        optimizer_step(optimizer, model, loss, cfg)
        running += loss.detach()
        running_count += 1
        if size == 1 and step % check_every == 0 and not math.isfinite(running.item()):
            result.status, m["diverged_step"] = DIVERGED, step
            break
        if step % cfg.eval_every and step != total_steps:
            continue
        eval_started = time.perf_counter()
        train_loss = _all_sum([running.item()], dev)[0] / (running_count * size)
        running.zero_()
        running_count = 0
        with autocast(dev, cfg):
            val_loss, scored = evaluate_tokens(model, data.val, length, cfg.eval_batch_size)
        evaluated_tokens += scored
        eval_time += time.perf_counter() - eval_started
        result.curves += [(step, "train_loss", train_loss), (step, "val_loss", val_loss),
                          (step, "lr", step_lr)]
        if best.should_stop(result, model, train_loss, val_loss, step):
            break
    train_time = time.perf_counter() - train_started

    tokens_seen = step * tokens_per_step
    m.update(steps=step, samples_seen=step * batch, tokens_seen=tokens_seen,
             epochs_seen=tokens_seen / len(data.train), train_flops=flops_per_step * step,
             train_flops_6nd=6 * n_nonembed * tokens_seen, wall_time=train_time,
             tokens_per_second=tokens_seen / max(1e-9, train_time - eval_time),
             stopped_early=m.get("stopped_early", False), best_step=best.step)
    splits = {"train": data.train[: cfg.eval_train_samples], "val": data.val, "test": data.test}

    def evaluate_all(module: nn.Module) -> tuple[dict[str, float], int]:
        out, scored_total = {}, 0
        for name, tokens in splits.items():
            loss_value, scored = evaluate_tokens(module, tokens, length, cfg.eval_batch_size)
            out |= language_metrics(name, loss_value, data.bytes_per_token[name])
            scored_total += scored
        return out, scored_total

    with autocast(dev, cfg):
        evaluated_tokens += final_metrics(result, model, evaluate_all, cfg, best.state, best.step,
                                          step, checkpoint if rank == 0 else None)
    m["eval_flops"] = int(forward_flops_per_window / length * evaluated_tokens)
    m["total_time"] = time.perf_counter() - started
    return result
