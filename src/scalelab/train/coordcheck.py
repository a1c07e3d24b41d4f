"""Coordinate check (Yang et al. 2022): is a parametrization width-stable?

Each width of the study is trained a few steps, under standard and under μP, at one constant
learning rate on one fixed batch, and how far every layer's output has moved from its value
at initialisation (mean |x_t − x_0| on that batch) is recorded at every step. μP's promise is
that every layer's update is of the same size at every width; under standard
parametrization with Adam the updates of the hidden layers and logits grow with width. (The
change, not the activation itself: μP's logits start near zero by design, shrinking as
1/√width, which says nothing about training.) The slope of log change against log width at
the last step says which: μP passes when no layer's slope exceeds :data:`FLAT` in size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ScalelabError
from ..plugin import instantiate
from ..registry import models, tasks
from ..spec import Study, TrainConfig
from .common import build, optimizer_step
from .lm import windows
from .optim import make_optimizer

#: A layer is flat when |d log size / d log width| at the last step is at most this.
FLAT = 0.2
PARAMETRIZATIONS = ("standard", "mup")


@dataclass
class CoordCheck:
    """Per parametrization: the (widths, layers, steps) mean |change of activation since
    initialisation| (averaged over seeds; steps 1, 2, ...) and each layer's slope of log
    change against log width at the last step."""

    model: str
    width_setting: str
    widths: list[int]
    layers: list[str]
    steps: int
    lr: float
    optimizer: str
    sizes: dict[str, np.ndarray] = field(default_factory=dict)
    slopes: dict[str, dict[str, float]] = field(default_factory=dict)
    tolerance: float = FLAT

    def flat(self, parametrization: str) -> bool:
        return all(abs(s) <= self.tolerance for s in self.slopes[parametrization].values())

    @property
    def passed(self) -> bool:
        """μP is width-stable (every layer flat)."""
        return self.flat("mup")

    @property
    def separates(self) -> bool:
        """Standard grows where μP stays flat (the check is informative at this lr)."""
        return self.passed and not self.flat("standard")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "width_setting": self.width_setting,
                "widths": self.widths, "layers": self.layers, "steps": self.steps,
                "lr": self.lr, "optimizer": self.optimizer, "flat_tolerance": self.tolerance,
                "slopes": self.slopes, "passed": self.passed, "separates": self.separates,
                "sizes": {p: s.tolist() for p, s in self.sizes.items()}}


def coordinate_check(study: Study, widths: list[int] | None = None, steps: int = 5,
                     seeds: int = 3, lr: float | None = None) -> CoordCheck:
    """Run the check on the study's first run, at each of ``widths`` (default: the widths of
    the study's grid) and ``lr`` (default: the study's ``train.lr``, not a grid value)."""
    if steps < 2:
        raise ScalelabError("coordcheck: --steps must be at least 2 (changes are measured "
                            "from the first step's activations)")
    config = study.runs[0].config
    lr = lr if lr is not None else study.spec.train.get("lr", config["train"]["lr"])
    family = models.get(config["model"]["name"])
    setting = family.width_setting
    if setting is None:
        raise ScalelabError(f"coordcheck: model {config['model']['name']} has no width to scale "
                            f"(μP is implemented for: {', '.join(mup_families())})")
    if widths is None:
        widths = sorted({int(v) for v in study.axes.get(f"model.{setting}", [])})
    if len(widths) < 3:
        raise ScalelabError(f"coordcheck: needs at least 3 widths (model.{setting} in the grid, "
                            f"or --widths); got {widths}")
    train = TrainConfig.model_validate({**config["train"], "schedule": "constant", "lr": lr})
    data = instantiate(tasks, config["task"]).load()
    batch = _fixed_batch(data, train.batch_size, config)
    check = CoordCheck(config["model"]["name"], setting, widths, [], steps, train.lr,
                       train.optimizer)
    # A standard run's resolved config leaves base_width out (it has no effect there).
    base = {k: v for k, v in study.spec.model.items() if k == "base_width"}
    for parametrization in PARAMETRIZATIONS:
        per_width = []
        for width in widths:
            model_cfg = {**config["model"], **base, setting: width,
                         "parametrization": parametrization}
            runs = [_probe({**config, "model": model_cfg, "seed": seed}, data, batch, train,
                           steps) for seed in range(seeds)]
            check.layers = list(runs[0])
            per_width.append(np.mean([[r[layer] for layer in check.layers] for r in runs], 0))
        sizes = np.array(per_width)  # (widths, layers, steps)
        check.sizes[parametrization] = sizes
        log_w = np.log(widths)
        check.slopes[parametrization] = {
            layer: float(np.polyfit(log_w, np.log(sizes[:, i, -1]), 1)[0])
            for i, layer in enumerate(check.layers)}
    return check


def mup_families() -> list[str]:
    return [n for n in models.names() if models.get(n).width_setting]


def _fixed_batch(data, batch_size: int, config: dict[str, Any]):
    """One training batch, the same at every step and width: examples, or token windows."""
    if hasattr(data, "x_train"):
        n = min(batch_size, len(data.y_train))
        return data.x_train[:n], data.y_train[:n]
    length = config["model"]["context_length"]
    generator = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(data.train) - length - 1, (batch_size,), generator=generator)
    return windows(data.train, starts, length)


def layer_labels(model: nn.Module) -> dict[nn.Module, str]:
    """Every weight layer (Linear, Embedding) with a label that is the same under both
    parametrizations: its module name (``layer k`` inside a Sequential), ``logits`` last."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Linear | nn.Embedding)]
    out = {}
    for k, (name, module) in enumerate(found, 1):
        out[module] = "logits" if k == len(found) else \
            f"layer {k}" if name.isdigit() else name
    return out


def _probe(config: dict[str, Any], data, batch, train: TrainConfig, steps: int
           ) -> dict[str, list[float]]:
    """Mean |output − output at step 0| of every weight layer at training steps 1, 2, ...,
    ``steps`` − 1, on one fixed batch."""
    model = build(config, data)
    optimizer = make_optimizer(model, train)
    layers = layer_labels(model)
    sizes: dict[str, list[float]] = {label: [] for label in layers.values()}
    first: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_module, _inputs, output):
            if name not in first:
                first[name] = output.detach().clone()
            else:
                sizes[name].append((output.detach() - first[name]).abs().mean().item())
        return hook

    handles = [m.register_forward_hook(record(label)) for m, label in layers.items()]
    x, y = batch
    try:
        for _ in range(steps):
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, -2), y.flatten())
            optimizer_step(optimizer, model, loss, train)
    finally:
        for h in handles:
            h.remove()
    return sizes
