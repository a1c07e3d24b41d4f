"""The study's training options that act through the loop's hooks: label smoothing (the
criterion), on-device augmentation (the batch transform) and weight averaging (a post-step
hook). Built per run, or per stacked group with one random stream per run, so a run draws
the same augmentations alone or stacked."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..spec import Augment, Averaging, TrainConfig
from .loop import Batch, Hooks

#: Offset of the augmentation stream from the data-order stream of the same seed.
AUGMENT_STREAM = 104_729


def with_options(hooks: Hooks, cfg: TrainConfig, seeds: Sequence[int], n_train: int) -> Hooks:
    """``hooks`` plus what ``cfg`` asks for; a hook given by the caller takes precedence."""
    criterion = hooks.criterion
    if cfg.label_smoothing and criterion is F.cross_entropy:
        criterion = functools.partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)
    transform = hooks.batch_transform
    if transform is None and cfg.augment is not None and _augments(cfg.augment):
        transform = Augmentation(cfg.augment, seeds, n_train)
    post_step = list(hooks.post_step)
    if cfg.averaging is not None:
        post_step.append(WeightAveraging(cfg.averaging))
    return replace(hooks, criterion=criterion, batch_transform=transform, post_step=post_step)


def _augments(a: Augment) -> bool:
    return a.flip != "none" or a.translate > 0 or a.cutout > 0


class Augmentation:
    """Flip, translate (reflect-padded) and cutout of a batch on its device. Random numbers
    come from each run's own CPU generator, sized by the batch alone, so a run sees the same
    augmentations alone or in a stacked group (inputs (runs, batch, ...))."""

    def __init__(self, cfg: Augment, seeds: Sequence[int], n_train: int):
        self.cfg = cfg
        self.generators = [torch.Generator().manual_seed(s + AUGMENT_STREAM) for s in seeds]
        # alternating flip: each image's flip is fixed at the start, then all flip every
        # other epoch (airbench), so every image is seen both ways every two epochs.
        self.fixed = [torch.rand(n_train, generator=g) < 0.5 for g in self.generators] \
            if cfg.flip == "alternating" else None

    def __call__(self, batch: Batch, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.x
        if not x.is_floating_point():
            raise ValueError("train.augment: only for image or signal inputs, not token ids")
        stacked = batch.index is not None and batch.index.dim() == 2
        flat = x.flatten(0, 1) if stacked else x
        index = batch.index.reshape(len(self.generators), -1).cpu() if batch.index is not None \
            else None
        spatial = 2 if flat.dim() >= 4 else 1
        size = flat.shape[0] // len(self.generators)
        draws = [self._draws(g, r, size, flat.shape[-spatial:], index, batch.epoch)
                 for r, g in enumerate(self.generators)]
        out = flat
        if self.cfg.translate:
            shifts = torch.cat([d["shift"] for d in draws]).to(x.device)
            out = translate(out, shifts, self.cfg.translate)
        if self.cfg.flip != "none":
            mask = torch.cat([d["flip"] for d in draws]).to(x.device)
            out = torch.where(mask.view(-1, *[1] * (out.dim() - 1)), out.flip(-1), out)
        if self.cfg.cutout:
            corners = torch.cat([d["corner"] for d in draws]).to(x.device)
            out = cutout(out, corners, self.cfg.cutout)
        return (out.view_as(x) if stacked else out), batch.y

    def _draws(self, g: torch.Generator, run: int, size: int, dims, index, epoch) -> dict:
        c, out = self.cfg, {}
        if c.translate:
            out["shift"] = torch.randint(0, 2 * c.translate + 1, (size, len(dims)), generator=g)
        if c.flip == "random":
            out["flip"] = torch.rand(size, generator=g) < 0.5
        elif c.flip == "alternating":
            if index is None:
                raise ValueError("train.augment.flip alternating needs indexed training rows")
            out["flip"] = self.fixed[run][index[run]] ^ bool(int(epoch) % 2)
        if c.cutout:
            out["corner"] = torch.stack([torch.randint(0, d, (size,), generator=g)
                                         for d in dims], 1)
        return out


def translate(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Each sample cropped back to its size from its reflect-padded self at ``shifts``
    (offsets 0..2*pad per spatial dim, pad meaning no move)."""
    spatial = shifts.shape[1]
    padded = F.pad(x, [pad] * 2 * spatial, mode="reflect")
    for d in range(spatial):
        axis = x.dim() - spatial + d
        n = x.shape[axis]
        idx = shifts[:, d].view(-1, 1) + torch.arange(n, device=x.device)  # (B, n)
        shape = [len(x)] + [1] * (padded.dim() - 1)
        shape[axis] = n
        expand = list(padded.shape)
        expand[axis] = n
        padded = padded.gather(axis, idx.view(shape).expand(expand))
    return padded


def cutout(x: torch.Tensor, corners: torch.Tensor, side: int) -> torch.Tensor:
    """Zero a ``side``-wide square (an interval for signals) centred at each sample's
    ``corners`` position, clipped at the edges."""
    spatial = corners.shape[1]
    inside = torch.ones((len(x),) + (1,) * spatial, dtype=torch.bool, device=x.device)
    for d in range(spatial):
        n = x.shape[x.dim() - spatial + d]
        start = corners[:, d].view(-1, 1) - side // 2
        pos = torch.arange(n, device=x.device).view(1, n)
        shape = [len(x)] + [1] * spatial
        shape[1 + d] = n
        inside = inside & ((pos >= start) & (pos < start + side)).view(shape)
    keep = (~inside).unsqueeze(1) if x.dim() > spatial + 1 else ~inside
    return x * keep.to(x.dtype)


class WeightAveraging:
    """Lookahead (airbench) or EMA over the trained tensors (a model's float state, running
    statistics included, or a stacked group's one tensor)."""

    def __init__(self, cfg: Averaging):
        self.cfg = cfg

    def begin(self, tensors: list[torch.Tensor], total_steps: int) -> None:
        self.average = [t.detach().clone() for t in tensors]
        self.total = total_steps

    @torch.no_grad()
    def __call__(self, step: int, tensors: list[torch.Tensor]) -> None:
        c = self.cfg
        if step % c.every == 0:
            decay = c.decay * (step / self.total) ** c.warmup_power
            for avg, t in zip(self.average, tensors):
                avg.lerp_(t.detach(), 1 - decay)
                if c.kind == "lookahead":
                    t.copy_(avg)
        if step == self.total:  # the run ends on the averaged weights
            for avg, t in zip(self.average, tensors):
                t.copy_(avg)
