"""The machine a run trains on: which device a name means, the cores this process may use,
what the CPU is, and whether other training workers share this process's CPU or GPU.

The runners, the evaluators and training all ask here, so a device is resolved, counted and
described one way.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import ScalelabError


def resolve_device(device: str) -> torch.device:
    """``auto`` takes a CUDA GPU, then Apple's MPS, then the CPU; a named device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ScalelabError(f"--device: unknown device {device!r} (allowed: auto, cpu, cuda, cuda:N, mps)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScalelabError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    if dev.type == "mps" and not has_mps:
        raise ScalelabError("--device mps: Apple's MPS backend is not available; use --device cpu")
    return dev


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it times the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, stored with every result."""
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {
        "scalelab_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": name,
        "cpu": cpu_name(),
        # The kernels torch dispatches to (AVX2, AVX512 ...): results agree to the last digit
        # only between runs on the same capability, torch build and thread count.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "pid": os.getpid(),
    }


@dataclass
class Sharing:
    """Whether other training workers use this process's CPU or GPU at the same time (a
    hardware energy counter would then count their work too)."""

    cpu: bool = False
    gpu: bool = False


#: This process's sharing, declared by the runner that started it (see :func:`share`).
sharing = Sharing()


def share(cpu: bool, gpu: bool) -> None:
    """Declare, in a worker process, whether other training workers share its CPU (local
    worker pools, Ray's packed tasks) and its GPU (more workers than cards, a fraction of a
    card)."""
    sharing.cpu, sharing.gpu = cpu, gpu
