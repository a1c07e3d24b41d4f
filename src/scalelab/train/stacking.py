"""Which runs can train together as one stacked model, and what a run costs in memory.

A capability, declared rather than checked by name: a model family says ``stackable`` (no
cross-sample state) and which sizes are ``paddable``; a method says whether it is
``stackable`` (the plain loss at the study's budget). Memory is estimated from the config on
PyTorch's meta device: no weights are allocated and no data is loaded in the planning
process, so even an absurd width is priced before anything is built.
"""

from __future__ import annotations

from typing import Any

import torch

from ..design import meta_model
from ..plugin import instantiate
from ..records import run_id
from ..registry import methods, models, tasks

#: Settings that may differ between runs trained together.
PER_RUN_TRAIN = ("lr", "weight_decay", "beta1", "beta2", "momentum")


def group_key(config: dict[str, Any], pad: bool = False) -> str | None:
    """Runs with equal keys can be trained together; ``None``: this run cannot be stacked.

    With ``pad``, the family's ``paddable`` sizes may differ within a group (they are
    zero-padded to the largest).
    """
    family = models.get(config["model"]["name"])
    if not family.stackable or not instantiate(methods, config["method"]).stackable or \
            not tasks.get(config["task"]["name"]).in_memory:
        return None
    train = config["train"]
    if train["optimizer"] == "muon" or train["precision"] != "fp32" or train["compile"] or \
            train.get("param_groups") or train.get("channels_last"):
        return None  # the stacked trainer implements fp32 SGD/Adam/AdamW on one tensor only
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


def parameter_count(config: dict[str, Any]) -> int:
    return sum(p.numel() for p in meta_model(config)[0].parameters())


def estimate_bytes(config: dict[str, Any]) -> int:
    """Memory one run adds to a group: parameters, gradients and two optimizer moments, plus
    the activations of one training batch kept for the backward pass (float32)."""
    model, input_shape, _, num_train = meta_model(config)
    activations = 0

    def count(_module, _inputs, output):
        nonlocal activations
        activations += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros((1, *input_shape), device="meta"))
    for h in hooks:
        h.remove()
    parameters = sum(p.numel() for p in model.parameters())
    batch = min(config["train"]["batch_size"], num_train)
    return 4 * (4 * parameters + 2 * batch * activations)
