"""Optimizers and learning-rate schedules named by a study's ``train`` section."""

from __future__ import annotations

import math
from fnmatch import fnmatch

import numpy as np
import torch
from torch import nn

from ..models.mup import decay_multiplier, lr_multipliers
from ..spec import TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    """The study's optimizer over ``model``'s parameters.

    Every parameter group remembers its peak rate as ``base_lr``; the schedule scales that.
    ``train.param_groups`` give matching parameters their own lr and weight-decay scales, and
    a μP model's parameters get their role's learning-rate multiplier on top.
    """
    params = param_groups(model, cfg) if cfg.param_groups or hasattr(model, "mup_roles") \
        else list(model.parameters())
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                    nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                     weight_decay=cfg.weight_decay, fused=_fused(params))
    elif cfg.optimizer == "adamw":
        optimizer = _adamw(params, cfg)
    else:
        optimizer = _muon(model, cfg)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """torch parameter groups from ``train.param_groups`` (first matching glob wins; the
    rest form a last group at the study's settings), each split by μP learning-rate
    multiplier (whose weight decay is scaled by its inverse, as microsoft/mup does; see
    models.mup). Groups that match nothing are left out; frozen groups carry the step after
    which they stop training."""
    multipliers = lr_multipliers(model, cfg.optimizer) or {}
    declared = [(g.lr_scale, g.weight_decay_scale, g.frozen_after_epochs)
                for g in cfg.param_groups] + [(1.0, 1.0, None)]
    chosen: dict[tuple[int, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        i = next((i for i, g in enumerate(cfg.param_groups) if fnmatch(name, g.match)),
                 len(cfg.param_groups))
        chosen.setdefault((i, multipliers.get(name, 1.0)), []).append(p)
    return [{"params": ps, "lr": cfg.lr * declared[i][0] * multiplier,
             "weight_decay": cfg.weight_decay * declared[i][1] * decay_multiplier(multiplier),
             "frozen_after_epochs": declared[i][2]}
            for (i, multiplier), ps in sorted(chosen.items(), key=lambda kv: kv[0])]


def muon_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The hidden matrices Muon orthogonalises: every 2-D weight except embedding tables and
    the output layer (the last ``nn.Linear``), as in the Muon and modded-nanogpt recipes."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    excluded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
                for p in m.parameters()}
    if linears:
        excluded.add(id(linears[-1].weight))
    return [m.weight for m in linears if m.weight.ndim == 2 and id(m.weight) not in excluded]


class Combined:
    """Several optimizers stepped as one (Muon for matrices, AdamW for everything else)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()


def _fused(params: list[nn.Parameter] | list[dict]) -> bool | None:
    """Fused Adam/AdamW kernels where torch has them (CPU, CUDA): one kernel for the whole
    update instead of a dozen per parameter list (0.65 ms vs 3.5 ms per step for the 0.8M
    parameter GPT of the lm benchmark on 2 CPU cores)."""
    first = params[0]["params"][0] if params and isinstance(params[0], dict) else \
        (params[0] if params else None)
    return True if first is not None and first.device.type in ("cpu", "cuda") else None


def _adamw(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             weight_decay=cfg.weight_decay, fused=_fused(params))


def _muon(model: nn.Module, cfg: TrainConfig) -> Combined:
    matrices = muon_matrices(model)
    chosen = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    parts = [_adamw(rest, cfg)] if rest else []
    if matrices:
        # torch's default ("original") step-size rule: lr * sqrt(max(1, rows / cols)).
        parts.append(torch.optim.Muon(matrices, lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                                      weight_decay=cfg.weight_decay, nesterov=True))
    return Combined(*parts)


def set_lr(optimizer, factor: float, epochs_done: float = 0.0) -> float:
    """Scale every group's peak rate by ``factor`` (the schedule, without LambdaLR's per-step
    overhead), and stop groups frozen after fewer than ``epochs_done`` epochs; returns
    ``factor``."""
    for group in optimizer.param_groups:
        frozen = group.get("frozen_after_epochs")
        group["lr"] = 0.0 if frozen is not None and epochs_done >= frozen else \
            group["base_lr"] * factor
    return factor


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr for the update after ``step`` updates (0-based).

    Linear warmup over ``warmup_steps`` (or ``warmup_fraction`` of the budget), then
    constant, cosine or linear decay to ``final_lr_ratio`` at the last step; ``airbench``
    interpolates (0, initial_lr_ratio), (warm-up end, 1), (total_steps, final_lr_ratio);
    ``wsd`` holds the peak until its decay (see :func:`wsd_factor`).
    """
    warmup = cfg.warmup_steps if cfg.warmup_fraction is None else \
        int(cfg.warmup_fraction * total_steps)
    floor = cfg.final_lr_ratio
    if cfg.schedule == "airbench":
        return float(np.interp(step, [0, warmup, total_steps],
                               [cfg.initial_lr_ratio, 1.0, floor]))
    if cfg.schedule == "wsd":
        return wsd_factor(step, total_steps, warmup, cfg)
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / decay_steps)
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return 1 - (1 - floor) * progress
    return 1.0


def wsd_factor(step: int, total_steps: int, warmup: int, cfg: TrainConfig) -> float:
    """Warm-up, stable, decay: the peak until the last d = decay_fraction·total_steps updates
    (rounded half up, at least 1); the k-th of those (k = 1..d) has progress k/d, so the
    last lands on ``final_lr_ratio`` (linear: 1 - k/d; ``1-sqrt``: 1 - sqrt(k/d)). Where
    warm-up and decay overlap the lower ramp wins.

    Constants from Hägele et al. (2024, "Scaling Laws and Compute-Optimal Training Beyond
    Fixed Training Durations"): a cooldown over the last 20% matches cosine, and 1-sqrt
    beats linear (epfml/schedules-and-scaling's ``wsd_schedule``: ``linear``, ``sqrt``).
    MiniCPM (Hu et al. 2024), which named WSD, decays over about the last 10%. Each run
    ends annealed, so its final loss is a point Approach 1 can use (analysis.envelope).
    """
    decay = max(1, int(cfg.decay_fraction * total_steps + 0.5))
    progress = min(1.0, max(0.0, (step - (total_steps - decay) + 1) / decay))
    shape = math.sqrt(progress) if cfg.decay_shape == "1-sqrt" else progress
    down = 1 - (1 - cfg.final_lr_ratio) * shape
    return min(down, (step + 1) / warmup) if step < warmup else down
