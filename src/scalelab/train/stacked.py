"""Train many small runs at once as one stacked model.

Runs whose configs differ only in per-run scalars (seed, lr, weight decay, betas, momentum)
share every shape and the data pipeline, so their parameters are stacked along a new
leading dimension and one batched forward trains all of them: a tiny model no longer leaves
the machine idle. Each run keeps its own data order (its seed's generator), its own
optimizer state and hyperparameters, its own early stopping and divergence handling (the
loop's), and ends with the single-run evaluation, so a run behaves as if trained alone (up
to floating-point summation order). Which runs may share a group is ``train.stacking``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..models import count_parameters
from ..models.mup import decay_multiplier, lr_multipliers
from ..models.stacked import stacked_forward
from ..plugin import instantiate
from ..records import RunResult, run_id
from ..registry import methods, models
from ..spec import TrainConfig
from .common import budget, build, classifier_metrics, counted_compute, step_metrics
from .loop import Batch, Outcome, Strategy
from .optim import lr_factor
from .scoring import evaluate_stacked
from .stacking import padded_model_config


def _per_run(values: list[float], dev: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=dev)


def _bcast(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-run (runs,) vector shaped to broadcast over ``like``; a tensor already of
    ``like``'s rank (per-run, per-parameter values) as it is."""
    if vector.dim() == like.dim():
        return vector
    return vector.view(-1, *([1] * (like.dim() - 1)))


class Stacked(Strategy):
    """The group's parameters as one (runs, all parameters) tensor; each run draws its own
    batch, and one forward and backward serve all of them."""

    def __init__(self, configs: list[dict[str, Any]], data, dev: torch.device, criterion):
        self.runs = len(configs)
        self.cfgs = [TrainConfig.model_validate(c["train"]) for c in configs]
        self.cfg = cfg = self.cfgs[0]
        self.data = data = data.to(dev)
        self.dev, self.criterion = dev, criterion
        method = instantiate(methods, configs[0]["method"])
        self.modules = [build(c, data).to(dev) for c in configs]
        self.n = len(data.y_train)
        self.batch, self.total_steps = budget(cfg, self.n)
        self.cfgs = [c.at_batch(self.batch) for c in self.cfgs]
        self.cfg = cfg = self.cfgs[0]
        # Compute is counted on each run's own model, never on the padded one.
        self.counted: list[tuple[int, float]] = []
        by_model: dict[str, tuple[int, float]] = {}
        for module, config in zip(self.modules, configs):
            key = run_id(config["model"])
            if key not in by_model:
                by_model[key] = counted_compute(method, module, data.x_train, data.y_train,
                                                self.batch)
            self.counted.append(by_model[key])
        padded = instantiate(models, padded_model_config(configs)).build(
            data.input_shape, data.num_classes).to(dev)
        stacked, self.buffers = _stack_padded(padded, self.modules)
        # One leaf for all parameters: the optimizer update is a handful of whole-group ops
        # instead of a dozen per parameter tensor; the model sees views of it.
        self.flat = torch.cat([t.detach().flatten(1) for t in stacked.values()], 1)
        self.flat.requires_grad_()
        self.layout = [(k, t.shape[1:], t[0].numel()) for k, t in stacked.items()]
        # μP: each run's own per-parameter learning-rate multipliers, at its own width.
        scales = [lr_multipliers(m, cfg.optimizer) for m in self.modules]
        self.lr_scale = None if scales[0] is None else torch.stack([torch.cat(
            [torch.full((size,), s[name]) for name, _, size in self.layout]) for s in scales]
        ).to(dev)
        self.own_shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in self.modules]
        skeleton = copy.deepcopy(padded).to("meta")
        self.forward = stacked_forward(skeleton)
        self.initial = self.flat.detach().clone()
        self.hyper = {name: _per_run([getattr(c, name) for c in self.cfgs], dev)
                      for name in ("lr", "weight_decay", "beta1", "beta2", "momentum")}
        # μP: weight decay scaled by the inverse learning-rate multiplier, per run and
        # parameter, as the optimizer of a run alone (train.optim, models.mup).
        self.decay = self.hyper["weight_decay"] if self.lr_scale is None else \
            _bcast(self.hyper["weight_decay"], self.flat) * decay_multiplier(self.lr_scale)
        self.state = torch.zeros_like(self.flat)    # exp_avg, or SGD momentum buffer
        self.state2 = torch.zeros_like(self.flat)   # exp_avg_sq
        self.active = torch.ones(self.runs, dtype=torch.bool, device=dev)
        self.generators = [torch.Generator().manual_seed(c["seed"]) for c in configs]
        self.orders, self.cursor, self.epoch = None, self.n, 0
        # The runs still in the tensors, by row (drop() takes a run's row out), and the final
        # weights of the runs dropped.
        self.live = list(range(self.runs))
        self.lr_all = self.hyper["lr"].clone()  # every run's, dropped ones too (the lr curve)
        self.dropped: dict[int, dict[str, torch.Tensor]] = {}

    def views(self, source: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape, size in self.layout:
            out[name] = source[:, offset:offset + size].view(-1, *shape)
            offset += size
        return out

    def draw(self, step: int) -> Batch:
        if self.cursor + self.batch > self.n:
            self.orders = torch.stack([torch.randperm(self.n, generator=g)
                                       for g in self.generators]).to(self.dev)
            self.cursor, self.epoch = 0, self.epoch + 1
        index = self.orders[:, self.cursor:self.cursor + self.batch]
        self.cursor += self.batch
        return Batch(self.data.x_train[index], self.data.y_train[index], index, step - 1,
                     step == self.total_steps, self.epoch - 1 + (self.cursor - self.batch) / self.n)

    def step(self, batch: Batch, step: int):
        cfg, hyper = self.cfg, self.hyper
        pieces = self.views(self.flat)
        logits = self.forward(pieces, self.buffers, batch.x)
        losses = self.criterion(logits.flatten(0, 1), batch.y.flatten(),
                                reduction="none").view(len(self.live), self.batch).mean(1)
        # Gradients of the views, joined once (cheaper than each view's backward filling a
        # zero copy of the whole flat tensor).
        grad = torch.cat([g.flatten(1) for g in torch.autograd.grad(
            losses.sum(), list(pieces.values()))], 1)
        with torch.no_grad():
            if cfg.grad_clip is not None:
                norms = torch.sqrt(grad.pow(2).flatten(1).sum(1))
                grad = grad * _bcast(torch.clamp(cfg.grad_clip / (norms + 1e-6), max=1.0), grad)
            step_lr = hyper["lr"] * lr_factor(batch.progress, self.total_steps, cfg) * self.active
            if self.lr_scale is not None:
                step_lr = _bcast(step_lr, self.flat) * self.lr_scale
            _update(cfg.optimizer, self.flat, grad, self.state, self.state2, step, step_lr,
                    self.decay, hyper["beta1"], hyper["beta2"], hyper["momentum"],
                    cfg.nesterov)
        if len(self.live) == self.runs:
            return losses.detach(), {}
        every = torch.zeros(self.runs, dtype=losses.dtype, device=losses.device)
        every[self.live] = losses.detach()
        return every, {}

    def parameters(self) -> list[torch.Tensor]:
        return [self.flat]

    def lrs(self, batch: Batch) -> list[float]:
        return (self.lr_all * lr_factor(batch.progress, self.total_steps, self.cfg)).tolist()

    def evaluate(self):
        if not len(self.data.y_val):  # no validation split: the curves have train_loss only
            return [{} for _ in range(self.runs)], 0
        params = self.views(self.flat.detach())
        val_loss, val_acc = evaluate_stacked(
            lambda x: self.forward(params, self.buffers, x), len(self.live), self.data.x_val,
            self.data.y_val, self.cfg.eval_batch_size)
        values: list[dict[str, float]] = [{} for _ in range(self.runs)]
        for run, loss, acc in zip(self.live, val_loss, val_acc):
            values[run] = {"val_loss": loss, "val_acc": acc}
        return values, len(self.data.y_val)

    def _weights(self, run: int) -> dict[str, torch.Tensor]:
        """Run ``run``'s (padded) parameters and buffers: its row, or as it was dropped."""
        if run in self.dropped:
            return self.dropped[run]
        row = self.live.index(run)
        params = self.views(self.flat.detach())
        return {k: v[row] for k, v in (*params.items(), *self.buffers.items())}

    def snapshot(self, run: int) -> dict[str, torch.Tensor]:
        return {k: v[_leading(self.own_shapes[run][k])].detach().clone()
                for k, v in self._weights(run).items()}

    def stop(self, run: int, diverged: bool) -> None:
        row = self.live.index(run)
        self.active[row] = False
        if diverged:  # back to finite values, so group-mates never see NaN
            with torch.no_grad():
                self.flat[row].copy_(self.initial[row])
            self.state[row].zero_()
            self.state2[row].zero_()

    def drop(self, run: int) -> None:
        """Take a stopped run's row out of every per-run tensor (its weights kept for
        :meth:`finalize`): the group's later steps no longer compute it. Each remaining
        run's numbers are its own as before, up to the summation order of batched
        kernels over a different number of rows."""
        row = self.live.index(run)
        self.dropped[run] = {k: v.clone() for k, v in self._weights(run).items()}
        keep = torch.tensor([i for i in range(len(self.live)) if i != row], dtype=torch.long,
                            device=self.dev)
        self.flat = self.flat.detach()[keep].clone().requires_grad_()
        self.state, self.state2 = self.state[keep], self.state2[keep]
        self.initial, self.active = self.initial[keep], self.active[keep]
        self.hyper = {k: v[keep] for k, v in self.hyper.items()}
        self.decay = self.decay[keep]
        if self.lr_scale is not None:
            self.lr_scale = self.lr_scale[keep]
        self.buffers = {k: v[keep] for k, v in self.buffers.items()}
        if self.orders is not None:
            self.orders = self.orders[keep]
        del self.generators[row], self.live[row]

    def check_every(self) -> int:
        return 1 if self.dev.type == "cpu" else self.cfg.eval_every

    def account(self, result: RunResult, run: int, outcome: Outcome) -> None:
        steps = outcome.steps(run)
        flops_per_step = self.counted[run][0]
        result.metrics.update(step_metrics(steps, self.batch, self.n, flops_per_step),
                              n_params=count_parameters(self.modules[run]),
                              batch_size=self.batch, flops_per_step=flops_per_step,
                              wall_time=outcome.train_time / self.runs, group_size=self.runs)

    def finalize(self, result: RunResult, run: int, outcome: Outcome, checkpoint: bool) -> None:
        """The run's slice of the stacked weights copied into its own model, then scored as
        a run trained alone is."""
        with torch.no_grad():
            for k, v in self._weights(run).items():
                _assign(self.modules[run], k, v)
        classifier_metrics(result, self.modules[run], self.data, self.cfgs[run],
                           outcome.states[run], outcome.steps(run), checkpoint,
                           self.counted[run][1])


def _leading(shape: torch.Size) -> tuple[slice, ...]:
    return tuple(slice(0, d) for d in shape)


def _stack_padded(padded: nn.Module, modules: list[nn.Module]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each run's parameters and buffers stacked into zero tensors of the padded shapes."""
    stacked = []
    for named in (nn.Module.named_parameters, nn.Module.named_buffers):
        out = {}
        for name, ref in named(padded):
            out[name] = torch.zeros((len(modules), *ref.shape), dtype=ref.dtype, device=ref.device)
            for r, module in enumerate(modules):
                own = dict(named(module))[name]
                out[name][r][_leading(own.shape)] = own.detach()
        stacked.append(out)
    params, buffers = stacked
    return params, buffers


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Copy a run's slice of a (padded) stacked tensor into its own model's parameter."""
    module_name, _, attr = name.rpartition(".")
    target = getattr(model.get_submodule(module_name), attr)
    target.copy_(value[_leading(target.shape)])


def _update(optimizer, p, g, s1, s2, step, lr, wd, beta1, beta2, momentum, nesterov) -> None:
    """One step of SGD/Adam/AdamW on the (runs, parameters) tensor ``p`` with per-run
    hyperparameters, as torch.optim computes it (``s1``: SGD's momentum buffer or Adam's
    first moment, ``s2``: Adam's second moment). ``lr`` and ``wd`` are per run, or per run
    and parameter (μP)."""
    lr, wd, beta1, beta2, momentum = (_bcast(v, p) for v in (lr, wd, beta1, beta2, momentum))
    if optimizer == "sgd":
        d_p = g + wd * p
        if step == 1:
            s1.copy_(d_p)
        else:
            s1.mul_(momentum).add_(d_p)
        direction = d_p + momentum * s1 if nesterov else torch.where(momentum > 0, s1, d_p)
        p.sub_(lr * direction)
        return
    step_size = lr / (1 - beta1 ** step)
    correction2 = torch.sqrt(1 - beta2 ** step)
    if optimizer == "adamw":
        p.mul_(1 - lr * wd)  # decoupled decay
    else:
        g = g + wd * p
    s1.lerp_(g, 1 - beta1)
    s2.mul_(beta2).addcmul_(g, g * (1 - beta2))
    denom = (s2.sqrt() / correction2).add_(1e-8)
    p.sub_(step_size * s1 / denom)
