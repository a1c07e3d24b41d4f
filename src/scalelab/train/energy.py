"""Energy a run used, measured by the hardware's own counters, never derived from time or
FLOPs: NVIDIA's NVML total-energy counter for a run on a GPU (``pip install
'scalelab[energy]'``), Intel/AMD RAPL package counters (``/sys/class/powercap``) for a run on
the CPU when they are readable. Where neither can measure, or where the counter would also
count other runs training at the same time on the same CPU or GPU (``devices.sharing``), a
run records nothing (and the meter's ``source`` says why, when it is sharing).

NVML numbers GPUs its own way and ignores ``CUDA_VISIBLE_DEVICES``, so torch's ``cuda:0``
under Ray, Slurm or any remapping is not NVML's card 0: the card is opened by the UUID torch
reports for it (or, failing that, by its PCI bus id), never by torch's index.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import devices

POWERCAP = Path("/sys/class/powercap")

SHARED_CPU = "not measured: the CPU is shared with other training workers"
SHARED_GPU = "not measured: the GPU is shared with other training workers"
MIG = "not measured: a MIG slice (the counter is the whole GPU's, shared by every slice)"


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
    and ``meter.source`` (the counters read; or why nothing was, where the device is shared)."""

    def __init__(self, device: torch.device):
        self.device, self.joules, self.source = device, None, None
        self._start: list[int] | None = None

    def __enter__(self) -> EnergyMeter:
        if self.device.type == "cuda":
            if devices.sharing.gpu:
                self.source = SHARED_GPU
                return self
            self._handle = _nvml_handle(self.device)
            if isinstance(self._handle, str):  # a reason it cannot measure
                self.source, self._handle = self._handle, None
            if self._handle is not None:
                torch.cuda.synchronize(self.device)  # work queued before is not this window's
                self._start = [self._handle[0].nvmlDeviceGetTotalEnergyConsumption(
                    self._handle[1])]
                self.source = f"nvml:{self.device}"
        elif self.device.type == "cpu" and devices.sharing.cpu:
            self.source = SHARED_CPU
        elif self.device.type == "cpu":
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
            torch.cuda.synchronize(self.device)  # the window's work has finished
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
    """(pynvml, handle) of the physical card torch's ``device`` is, a reason it must not be
    measured, or None where NVML cannot tell."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = _card(pynvml, torch.cuda.get_device_properties(index))
    except Exception:  # no driver support: nothing measured
        return None
    if handle is None:
        return None
    try:
        if pynvml.nvmlDeviceGetMigMode(handle)[0] == getattr(pynvml, "NVML_DEVICE_MIG_ENABLE", 1):
            return MIG
    except Exception:  # no MIG on this card (NVMLError_NotSupported): a whole card
        pass
    return pynvml, handle


def _card(pynvml, props):
    """NVML's handle of the card with torch's properties ``props``: by UUID (torch prints it
    without NVML's ``GPU-`` prefix), else by PCI bus id (``domain:bus:device.0`` in hex, as
    NVML formats ``nvmlPciInfo_t.busId``); None when neither finds it. Strings go as bytes,
    which every nvidia-ml-py version accepts."""
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        if not uuid.startswith(("GPU-", "MIG-")):
            uuid = "GPU-" + uuid
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())
        except Exception:  # a MIG slice's uuid, an old driver: try the bus id
            pass
    ids = [getattr(props, f"pci_{k}_id", None) for k in ("domain", "bus", "device")]
    if None in ids:
        return None
    try:
        return pynvml.nvmlDeviceGetHandleByPciBusId("{:08X}:{:02X}:{:02X}.0".format(*ids)
                                                    .encode())
    except Exception:
        return None


def energy_metrics(meter: EnergyMeter, runs: int = 1) -> dict[str, float | str]:
    """``energy_j`` (a stacked group's share per run) and its source, when measured."""
    if meter.joules is None:
        return {}
    return {"energy_j": meter.joules / runs, "energy_source": meter.source}
