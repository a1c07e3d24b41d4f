"""Train many small runs at once as one stacked model.

Runs whose configs differ only in per-run scalars (seed, lr, weight decay, betas, momentum)
share every shape and the data pipeline, so their parameters are stacked along a new
leading dimension (``torch.func.stack_module_state``) and one ``vmap``-ed forward trains
all of them: a tiny model no longer leaves the machine idle. Each run keeps its own data
order (its seed's generator), its own optimizer state and hyperparameters, its own early
stopping and divergence handling, and ends with the single-run trainer's own evaluation, so
a run behaves as if trained alone (up to floating-point summation order).
"""

from __future__ import annotations

import copy
import math
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..methods import Method
from ..models import count_parameters
from ..plugin import instantiate
from ..registry import methods, models, tasks
from ..spec import TrainConfig, run_id
from .optim import lr_factor
from .trainer import (
    COMPLETED,
    DIVERGED,
    FAILED,
    RunResult,
    budget,
    build,
    counted_compute,
    finalize,
    provenance,
    resolve_device,
    step_metrics,
)

#: Settings that may differ between runs trained together.
PER_RUN_TRAIN = ("lr", "weight_decay", "beta1", "beta2", "momentum")


def group_key(config: dict[str, Any], pad: bool = False) -> str | None:
    """Runs with equal keys can be trained together; ``None``: this run is not batchable.

    A model family opts in with ``batchable = True`` (no batch-norm style cross-sample state);
    a method is batchable when it trains with the plain loss. With ``pad``, the family's
    ``paddable`` sizes may differ within a group (they are zero-padded to the largest).
    """
    family = models.get(config["model"]["name"])
    method = instantiate(methods, config["method"])
    if not getattr(family, "batchable", False) or not method.stackable \
            or type(method).training_loss is not Method.training_loss:
        return None
    train = config["train"]
    if train["optimizer"] == "muon" or train["precision"] != "fp32" or train["compile"]:
        return None  # the stacked trainer implements fp32 SGD/Adam/AdamW only
    shared = {k: v for k, v in config.items() if k != "seed"}
    shared["train"] = {k: v for k, v in config["train"].items() if k not in PER_RUN_TRAIN}
    if pad:
        shared["model"] = {k: v for k, v in config["model"].items() if k not in family.paddable}
    return run_id(shared)


def padded_model_config(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The group's model config with every paddable size at its largest value."""
    model = dict(configs[0]["model"])
    for name in models.get(model["name"]).paddable:
        model[name] = max(c["model"][name] for c in configs)
    return model


def train_group(configs: list[dict[str, Any]], device: str = "cpu",
                checkpoints: list[Path | None] | None = None, group: str = "") -> list[RunResult]:
    """Train runs sharing a :func:`group_key` together; one result per config, in order."""
    dev = resolve_device(device)
    try:
        return _train_group(configs, dev, checkpoints or [None] * len(configs), group)
    except Exception:
        error = traceback.format_exc()
        return [RunResult(FAILED, error=error, provenance=provenance(dev), batch_group=group)
                for _ in configs]


def _per_run(values: list[float], dev: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=dev)


def _bcast(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return vector.view(-1, *([1] * (like.dim() - 1)))


def _train_group(configs, dev, checkpoints, group) -> list[RunResult]:
    started = time.perf_counter()
    runs = len(configs)
    cfgs = [TrainConfig.model_validate(c["train"]) for c in configs]
    cfg = cfgs[0]
    data = instantiate(tasks, configs[0]["task"]).load().to(dev)
    method = instantiate(methods, configs[0]["method"])
    modules = [build(c, data).to(dev) for c in configs]
    results = [RunResult(COMPLETED, provenance=provenance(dev)) for _ in configs]

    n = len(data.y_train)
    batch, total_steps = budget(cfg, n)
    x, y = data.x_train, data.y_train
    # Compute is counted on each run's own model, never on the padded one.
    counted: dict[str, tuple[int, float]] = {}
    for module, config in zip(modules, configs):
        key = run_id(config["model"])
        if key not in counted:
            counted[key] = counted_compute(method, module, x, y, batch)

    padded = instantiate(models, padded_model_config(configs)).build(
        data.input_shape, data.num_classes).to(dev)
    stacked, buffers = _stack_padded(padded, modules)
    # One (runs, all parameters) leaf: the optimizer update is a handful of whole-group ops
    # instead of a dozen per parameter tensor; the model sees views of it.
    flat = torch.cat([t.detach().flatten(1) for t in stacked.values()], 1).requires_grad_()
    layout = [(k, t.shape[1:], t[0].numel()) for k, t in stacked.items()]

    def views(source: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape, size in layout:
            out[name] = source[:, offset:offset + size].view(-1, *shape)
            offset += size
        return out

    tensors = [flat]
    own_shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in modules]
    skeleton = copy.deepcopy(padded).to("meta")
    forward = bmm_forward(skeleton)
    if forward is None:
        def forward_one(p, b, inputs):
            return functional_call(skeleton, (p, b), (inputs,))

        forward = vmap(forward_one)
    initial = [flat.detach().clone()]
    lr = _per_run([c.lr for c in cfgs], dev)
    wd = _per_run([c.weight_decay for c in cfgs], dev)
    beta1 = _per_run([c.beta1 for c in cfgs], dev)
    beta2 = _per_run([c.beta2 for c in cfgs], dev)
    momentum = _per_run([c.momentum for c in cfgs], dev)
    state = [torch.zeros_like(t) for t in tensors]   # exp_avg, or SGD momentum buffer
    state2 = [torch.zeros_like(t) for t in tensors]  # exp_avg_sq
    active = torch.ones(runs, dtype=torch.bool, device=dev)
    generators = [torch.Generator().manual_seed(c["seed"]) for c in configs]

    best_val = [math.inf] * runs
    best_step = [0] * runs
    best_state: list[dict | None] = [None] * runs
    bad_evals = [0] * runs
    last_step = [0] * runs
    stopped = [False] * runs
    running = torch.zeros(runs, device=dev)
    running_count = 0
    evaluated_samples = [0] * runs  # validation samples each run was evaluated on
    check_every = 1 if dev.type == "cpu" else cfg.eval_every
    orders, cursor = None, n
    train_started = time.perf_counter()
    for step in range(1, total_steps + 1):
        if cursor + batch > n:
            orders = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(dev)
            cursor = 0
        index = orders[:, cursor:cursor + batch]
        cursor += batch
        pieces = views(flat)
        logits = forward(pieces, buffers, x[index])
        losses = F.cross_entropy(logits.flatten(0, 1), y[index].flatten(),
                                 reduction="none").view(runs, batch).mean(1)
        # Gradients of the views, joined once (cheaper than each view's backward filling a
        # zero copy of the whole flat tensor).
        grads = [torch.cat([g.flatten(1) for g in torch.autograd.grad(
            losses.sum(), list(pieces.values()))], 1)]
        with torch.no_grad():
            if cfg.grad_clip is not None:
                norms = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads))
                scale = torch.clamp(cfg.grad_clip / (norms + 1e-6), max=1.0)
                grads = [g * _bcast(scale, g) for g in grads]
            step_lr = lr * lr_factor(step - 1, total_steps, cfg) * active
            _update(cfg.optimizer, tensors, grads, state, state2, step, step_lr, wd, beta1, beta2,
                    momentum, cfg.nesterov)
            running += losses.detach()
            running_count += 1
            if step % check_every == 0:
                for r in torch.nonzero(active & ~torch.isfinite(losses)).flatten().tolist():
                    _diverge(r, step, results, active, last_step, tensors, initial, state, state2)
                if not bool(active.any()):
                    break
            if step % cfg.eval_every and step != total_steps:
                continue
            train_loss = (running / running_count).tolist()
            running.zero_()
            running_count = 0
            params = views(flat.detach())
            val_loss, val_acc = _evaluate_stacked(forward, params, buffers, data.x_val,
                                                  data.y_val, cfg.eval_batch_size)
            lr_now = (lr * lr_factor(step - 1, total_steps, cfg)).tolist()
            for r in range(runs):
                if not active[r]:
                    continue
                evaluated_samples[r] += len(data.y_val)
                results[r].curves += [(step, "train_loss", train_loss[r]),
                                      (step, "val_loss", val_loss[r]),
                                      (step, "val_acc", val_acc[r]), (step, "lr", lr_now[r])]
                last_step[r] = step
                if not (math.isfinite(train_loss[r]) and math.isfinite(val_loss[r])):
                    _diverge(r, step, results, active, last_step, tensors, initial, state, state2)
                    continue
                min_delta = cfgs[r].early_stopping.min_delta if cfgs[r].early_stopping else 0.0
                if val_loss[r] < best_val[r] - min_delta:
                    best_val[r], best_step[r], bad_evals[r] = val_loss[r], step, 0
                    if cfg.restore_best and step != total_steps:
                        best_state[r] = {k: v[r][_leading(own_shapes[r][k])].detach().clone()
                                         for k, v in (*params.items(), *buffers.items())}
                else:
                    bad_evals[r] += 1
                    if cfg.early_stopping and bad_evals[r] >= cfg.early_stopping.patience:
                        stopped[r] = True
                        active[r] = False
            if not bool(active.any()):
                break
    train_time = time.perf_counter() - train_started

    params = views(flat.detach())
    for r in range(runs):
        steps = last_step[r] if (stopped[r] or results[r].status == DIVERGED) else step
        flops_per_step, forward_flops_per_sample = counted[run_id(configs[r]["model"])]
        m = results[r].metrics
        m.update(step_metrics(steps, batch, n, flops_per_step),
                 n_params=count_parameters(modules[r]), batch_size=batch,
                 flops_per_step=flops_per_step, wall_time=train_time / runs,
                 stopped_early=stopped[r], best_step=best_step[r], group_size=runs)
        results[r].batch_group = group
        model = modules[r]
        with torch.no_grad():
            for k, v in (*params.items(), *buffers.items()):
                _assign(model, k, v[r])
        finalize(results[r], model, data, cfgs[r], best_state[r], best_step[r], steps,
                 checkpoints[r], forward_flops_per_sample, evaluated_samples[r])
        m["total_time"] = (time.perf_counter() - started) / runs
    return results


def bmm_forward(skeleton: nn.Module):
    """A stacked forward for Sequential MLPs with batched matrix multiplies (no vmap or
    functional_call per step), or None for other models; inputs are (runs, batch, ...)."""
    elementwise = (nn.ReLU, nn.GELU, nn.Tanh)
    if not isinstance(skeleton, nn.Sequential) or not all(
            isinstance(m, (nn.Flatten, nn.Linear, *elementwise)) for m in skeleton):
        return None
    if any(isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) != (1, -1) for m in skeleton):
        return None

    def forward(params, buffers, x):
        h = x
        for name, module in skeleton.named_children():
            if isinstance(module, nn.Flatten):
                h = h.flatten(2)
            elif isinstance(module, nn.Linear):
                weight = params[f"{name}.weight"].transpose(1, 2)
                bias = params.get(f"{name}.bias")
                h = torch.bmm(h, weight) if bias is None else torch.baddbmm(
                    bias.unsqueeze(1), h, weight)
            else:
                h = module(h)
        return h

    return forward


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


def _diverge(r, step, results, active, last_step, tensors, initial, state, state2) -> None:
    """Stop run ``r`` at ``step``; reset its slice to finite values so group-mates never see NaN."""
    results[r].status = DIVERGED
    results[r].metrics["diverged_step"] = step
    active[r] = False
    last_step[r] = step
    for t, t0, s1, s2 in zip(tensors, initial, state, state2):
        t[r].copy_(t0[r])
        s1[r].zero_()
        s2[r].zero_()


@torch.no_grad()
def _evaluate_stacked(forward, params, buffers, x, y, batch_size) -> tuple[list[float], list[float]]:
    runs = next(iter(params.values())).shape[0]
    loss_sum = torch.zeros(runs, device=x.device)
    correct = torch.zeros(runs, device=x.device)
    for start in range(0, len(y), batch_size):
        xs, ys = x[start:start + batch_size], y[start:start + batch_size]
        logits = forward(params, buffers, xs.expand(runs, *xs.shape)).float()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), ys.repeat(runs), reduction="none") \
            .view(runs, -1).sum(1)
        correct += (logits.argmax(-1) == ys).sum(1)
    return (loss_sum / len(y)).tolist(), (correct / len(y)).tolist()


def _update(optimizer, tensors, grads, state, state2, step, lr, wd, beta1, beta2, momentum,
            nesterov) -> None:
    """One step of SGD/Adam/AdamW with per-run hyperparameters, as torch.optim computes it.

    Per-run scalars are combined once per step; each parameter then only needs views.
    """
    if optimizer == "sgd":
        for p, g, buf in zip(tensors, grads, state):
            d_p = g + _bcast(wd, p) * p
            mom = _bcast(momentum, p)
            if step == 1:
                buf.copy_(d_p)
            else:
                buf.mul_(mom).add_(d_p)
            direction = d_p + mom * buf if nesterov else torch.where(mom > 0, buf, d_p)
            p.sub_(_bcast(lr, p) * direction)
        return
    decay = 1 - lr * wd                      # AdamW's decoupled decay factor
    blend1, blend2 = 1 - beta1, 1 - beta2
    step_size = lr / (1 - beta1 ** step)
    correction2 = torch.sqrt(1 - beta2 ** step)
    for p, g, s1, s2 in zip(tensors, grads, state, state2):
        if optimizer == "adamw":
            p.mul_(_bcast(decay, p))
        else:
            g = g + _bcast(wd, p) * p
        s1.lerp_(g, _bcast(blend1, p))
        s2.mul_(_bcast(beta2, p)).addcmul_(g, g * _bcast(blend2, p))
        denom = (s2.sqrt() / _bcast(correction2, p)).add_(1e-8)
        p.sub_(_bcast(step_size, p) * s1 / denom)
