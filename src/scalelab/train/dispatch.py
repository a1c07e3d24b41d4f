"""The top of training: one run alone (:func:`train_run`) or a stacked group
(:func:`train_group`), config in and :class:`RunResult` out, through one skeleton.

The strategy that trains a run alone is picked from one table, by what its task's data is;
every strategy is trained and reported the same way (:func:`_train`). Imports flow one way:
this module -> the strategies (``single``, ``streamed``, ``lm``, ``stacked``) -> ``common``
-> the loop and its leaves; nothing below imports upward.

A run reads nothing but its config, and returns everything it produced (checkpoint bytes
included); the runner stores it. Same config and seed on the CPU give bitwise-identical
results.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import torch

from ..devices import provenance, resolve_device
from ..errors import ScalelabError
from ..plugin import instantiate
from ..records import FAILED, RunResult
from ..registry import tasks
from ..spec import TrainConfig
from ..tasks import Task
from .common import OneModel
from .energy import EnergyMeter, energy_metrics
from .lm import TokenWindows
from .loop import Hooks, Strategy, train_loop
from .options import with_options
from .single import Examples
from .stacked import Stacked
from .streamed import Streamed

#: The strategy that trains one run alone, by its task's (``data_kind``, ``in_memory``).
STRATEGIES: dict[tuple[str, bool], type[OneModel]] = {
    ("classification", True): Examples,
    ("classification", False): Streamed,
    ("language", True): TokenWindows,
}


def train_run(config: dict[str, Any], device: str = "cpu", checkpoint: bool = False,
              hooks: Hooks | None = None) -> RunResult:
    """Train one run alone; exceptions become a ``failed`` result with the traceback.
    With ``checkpoint``, the result carries the final weights' bytes."""
    dev = resolve_device(device)
    try:
        started = time.perf_counter()
        task = instantiate(tasks, config["task"])
        kind = strategy_for(config["task"]["name"], task)
        data = task.load()
        hooks = with_options(hooks or Hooks(), TrainConfig.model_validate(config["train"]),
                             [config["seed"]], kind.train_size(data))
        [result] = _train(kind(config, data, dev, hooks.criterion), dev, hooks, checkpoint,
                          started)
        return result
    except Exception:
        return RunResult(FAILED, error=traceback.format_exc(), provenance=provenance(dev))


def train_group(configs: list[dict[str, Any]], device: str = "cpu", checkpoint: bool = False,
                group: str | None = None, hooks: Hooks | None = None) -> list[RunResult]:
    """Train runs sharing a :func:`~scalelab.train.stacking.group_key` together as one
    stacked model; one result per config, in order (a group of one trains here too)."""
    dev = resolve_device(device)
    try:
        started = time.perf_counter()
        data = instantiate(tasks, configs[0]["task"]).load()
        hooks = with_options(hooks or Hooks(), TrainConfig.model_validate(configs[0]["train"]),
                             [c["seed"] for c in configs], len(data.y_train))
        results = _train(Stacked(configs, data, dev, hooks.criterion), dev, hooks, checkpoint,
                         started)
    except Exception:
        error = traceback.format_exc()
        return [RunResult(FAILED, error=error, provenance=provenance(dev), batch_group=group)
                for _ in configs]
    for result in results:
        result.batch_group = group
    return results


def strategy_for(name: str, task: Task) -> type[OneModel]:
    """The strategy of :data:`STRATEGIES` that trains runs of ``task`` (named ``name``)."""
    key = (task.data_kind, task.in_memory)
    if key not in STRATEGIES:
        held = "in memory" if task.in_memory else "streamed"
        raise ScalelabError(f"task {name}: no training strategy for {task.data_kind} data "
                            f"{held}")
    return STRATEGIES[key]


def _train(strategy: Strategy, dev: torch.device, hooks: Hooks, checkpoint: bool,
           started: float) -> list[RunResult]:
    """The one skeleton: the loop under an energy meter, then each run's result: how its
    training went (status, curves, best step), what it cost, its final metrics."""
    with EnergyMeter(dev) as meter:
        outcome = train_loop(strategy, strategy.cfg, hooks)
    results = []
    for run, state in enumerate(outcome.states):
        result = RunResult(state.status, curves=state.curves, provenance=provenance(dev))
        result.metrics.update(state.metrics, stopped_early=state.stopped_early,
                              best_step=state.best_step)
        strategy.account(result, run, outcome)
        result.metrics.update(energy_metrics(meter, strategy.runs))
        strategy.finalize(result, run, outcome, checkpoint)
        result.metrics["total_time"] = (time.perf_counter() - started) / strategy.runs
        results.append(result)
    return results
