"""Helpers shared by the benchmark scripts: the machine line and the JSON last line."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(a: Callable[[], object], b: Callable[[], object], repeats: int) -> list[float]:
    """Ratios time(a)/time(b), measured in alternation so drift hits both alike."""
    ratios = []
    for i in range(repeats):
        if i % 2:
            tb, ta = timed(b), timed(a)
        else:
            ta, tb = timed(a), timed(b)
        ratios.append(ta / tb)
        print(f"  repeat {i + 1}: a={ta:.3f}s b={tb:.3f}s ratio={ta / tb:.3f}", flush=True)
    return ratios


def report(metric: str, value: float, goal: str, **extra) -> None:
    """The JSON object every benchmark prints as its last line."""
    print(json.dumps({"metric": metric, "value": round(value, 4), "goal": goal, **extra,
                      "machine": machine()}))


median = statistics.median
