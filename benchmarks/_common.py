"""Helpers shared by the benchmark scripts: the machine line and the JSON last line."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


ROOT = Path(__file__).resolve().parent.parent


def quickstart_store(source: Path, into: Path) -> str:
    """A quickstart store in ``into`` (a folder not there yet): a copy of ``source``'s (the
    bundled study as `scalelab run studies/quickstart.yaml` stores it), or, when there is none,
    the --quick variant trained there (about two minutes, said). Returns which."""
    if (source / "results.sqlite").exists():
        into.mkdir()
        shutil.copy2(source / "results.sqlite", into / "results.sqlite")
        return str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)
    print(f"{source}: no stored quickstart; training the --quick variant instead (about two "
          "minutes; smaller than the quickstart)", flush=True)
    subprocess.run([sys.executable, "-m", "scalelab", "run", str(ROOT / "studies" /
                    "quickstart.yaml"), "--quick", "--out", str(into), "--no-report"],
                   check=True)
    return "studies/quickstart.yaml --quick (trained here)"


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
