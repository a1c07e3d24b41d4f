"""Which runs train together: equal batch keys, within a memory limit per group."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models import count_parameters
from ..plugin import instantiate
from ..registry import models, tasks
from ..spec import RunSpec, run_id
from ..train.batched import group_key, padded_model_config


def plan_groups(runs: Sequence[RunSpec], mode: str = "auto", memory_mb: float = 1024,
                min_runs: int | None = None, pad: bool = False) -> list[list[RunSpec]]:
    """Runs partitioned into training groups (singletons when ``mode == "off"``).

    Groups smaller than ``min_runs`` (default: the model family's ``min_batch_group``) train
    one run at a time. ``pad`` lets runs of different widths share a group (see
    ``batch_pad`` in the README).
    """
    if mode == "off":
        return [[r] for r in runs]
    by_key: dict[str, list[RunSpec]] = {}
    singles: list[list[RunSpec]] = []
    for r in runs:
        key = group_key(r.config, pad)
        if key is None:
            singles.append([r])
        else:
            by_key.setdefault(key, []).append(r)
    groups = []
    for members in by_key.values():
        largest = {**members[0].config, "model": padded_model_config([m.config for m in members])}
        cap = max(1, int(memory_mb * 2**20 // estimate_bytes(largest)))
        for chunk in (members[i:i + cap] for i in range(0, len(members), cap)):
            smallest = min_runs or models.get(members[0].config["model"]["name"]).min_batch_group
            groups += [chunk] if len(chunk) >= smallest else [[r] for r in chunk]
    return groups + singles


def without_mates(runs: Sequence[RunSpec], pad: bool = False) -> frozenset[str]:
    """Ids of the runs no other run of ``runs`` (the whole study) could share a group with:
    they may train on the single-run loop without their numbers depending on scheduling."""
    keys = [group_key(r.config, pad) for r in runs]
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return frozenset(r.run_id for r, key in zip(runs, keys) if key is None or counts[key] == 1)


def group_id(group: Sequence[RunSpec]) -> str | None:
    return run_id({"members": sorted(r.run_id for r in group)}) if len(group) > 1 else None


def estimate_bytes(config: dict) -> int:
    """Memory one run adds to a group: parameters, gradients and two optimizer moments, plus
    the activations of one training batch kept for the backward pass (float32)."""
    data = instantiate(tasks, config["task"]).load()
    model = instantiate(models, config["model"]).build(data.input_shape, data.num_classes)
    activations = 0

    def count(_module, _inputs, output):
        nonlocal activations
        activations += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(data.x_train[:1])
    for h in hooks:
        h.remove()
    batch = min(config["train"]["batch_size"], len(data.y_train))
    return 4 * (4 * count_parameters(model) + 2 * batch * activations)
