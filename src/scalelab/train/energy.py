"""Energy a run used, measured by the hardware's own counters, never derived from time or
FLOPs: NVIDIA's NVML total-energy counter for a run on a GPU (``pip install
'scalelab[energy]'``), Intel/AMD RAPL package counters (``/sys/class/powercap``) for a run on
the CPU when they are readable. Where neither can measure, or where the counter would also
count other runs training at the same time on the same CPU, a run records nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

POWERCAP = Path("/sys/class/powercap")
#: Set in worker processes that share the CPU with other training workers: a CPU package
#: counter would count their work too, so CPU runs there record no energy.
shared_cpu = False


def _rapl_domains() -> list[Path]:
    """Package-level RAPL domains (intel-rapl:0, :1, ...; not their sub-domains)."""
    if not POWERCAP.is_dir():
        return []
    return sorted(p for p in POWERCAP.glob("*-rapl:*") if p.name.count(":") == 1
                  and (p / "energy_uj").exists())


def _read_uj(domain: Path) -> int | None:
    try:
        return int((domain / "energy_uj").read_text())
    except (OSError, ValueError):  # unreadable without privileges on many systems
        return None


class EnergyMeter:
    """``with EnergyMeter(device) as meter: ...`` then ``meter.joules`` (None: not measured)
    and ``meter.source``."""

    def __init__(self, device: torch.device):
        self.device, self.joules, self.source = device, None, None
        self._start: list[int] | None = None

    def __enter__(self) -> EnergyMeter:
        if self.device.type == "cuda":
            self._handle = _nvml_handle(self.device)
            if self._handle is not None:
                self._start = [self._handle[0].nvmlDeviceGetTotalEnergyConsumption(
                    self._handle[1])]
                self.source = f"nvml:{self.device}"
        elif self.device.type == "cpu" and not shared_cpu:
            self._domains = _rapl_domains()
            readings = [_read_uj(d) for d in self._domains]
            if self._domains and all(r is not None for r in readings):
                self._start = readings
                self.source = "rapl:" + "+".join(d.name for d in self._domains)
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            nvml, handle = self._handle
            self.joules = (nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                           - self._start[0]) / 1000.0  # millijoules
            return
        total = 0
        for domain, start in zip(self._domains, self._start):
            end = _read_uj(domain)
            if end is None:
                self.source = None
                return
            if end < start:  # the counter wrapped around at max_energy_range_uj
                end += int((domain / "max_energy_range_uj").read_text())
            total += end - start
        self.joules = total / 1e6


def _nvml_handle(device: torch.device):
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no driver support (pre-Volta GPUs, MIG slices): nothing measured
        return None


def energy_metrics(meter: EnergyMeter, runs: int = 1) -> dict[str, float | str]:
    """``energy_j`` (a stacked group's share per run) and its source, when measured."""
    if meter.joules is None:
        return {}
    return {"energy_j": meter.joules / runs, "energy_source": meter.source}
