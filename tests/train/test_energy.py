"""Energy on GPUs: the meter reads the card the run trains on (NVML numbers cards its own way,
ignoring CUDA_VISIBLE_DEVICES), inside a window bounded by device synchronisations, and
records nothing where other training workers share the card. NVML and torch.cuda are faked,
so these run on any machine."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from scalelab import devices
from scalelab.train import energy

#: Four physical cards as NVML enumerates them (its index ignores CUDA_VISIBLE_DEVICES).
UUIDS = ["8c1e4b7a-0000-4000-8000-00000000000" + str(k) for k in range(4)]
PCI = [(0, 0x17 + k, 0) for k in range(4)]  # (domain, bus, device) of card k


class FakeUUID:
    """torch's CUuuid prints as the bare hex groups, without NVML's ``GPU-`` prefix."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


def fake_nvml(events: list) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    nvml.energy_mj = [1_000_000 * (k + 1) for k in range(4)]  # each card's counter
    nvml.NVMLError = type("NVMLError", (Exception,), {})
    nvml.NVML_DEVICE_MIG_ENABLE = 1
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda index: ("card", index)  # NVML's own numbering

    def by_uuid(uuid):
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for k, u in enumerate(UUIDS):
            if text == "GPU-" + u:
                return ("card", k)
        raise nvml.NVMLError(f"no GPU with uuid {text}")

    def by_pci(bus_id):
        text = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
        domain, bus, rest = text.split(":")
        key = (int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16))
        if key not in PCI:
            raise nvml.NVMLError(f"no GPU at {text}")
        return ("card", PCI.index(key))

    def read(handle):
        events.append(("read", handle[1]))
        return nvml.energy_mj[handle[1]]

    nvml.nvmlDeviceGetHandleByUUID = by_uuid
    nvml.nvmlDeviceGetHandleByPciBusId = by_pci
    nvml.nvmlDeviceGetHandleByPciBusId_v2 = by_pci
    nvml.nvmlDeviceGetTotalEnergyConsumption = read
    nvml.nvmlDeviceGetMigMode = lambda handle: (0, 0)
    return nvml


@pytest.fixture
def gpus(monkeypatch):
    """One visible GPU, torch's cuda:0, which is physical card 3 (CUDA_VISIBLE_DEVICES=3, as
    Ray and Slurm set it); returns the fake NVML module and the list of events."""
    events: list = []
    nvml = fake_nvml(events)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    visible = [3]
    nvml.torch_uuids = list(UUIDS)  # what torch reports for each physical card

    def properties(device=None):
        index = device.index if isinstance(device, torch.device) else device
        card = visible[0 if index is None else index]
        domain, bus, dev = PCI[card]
        return SimpleNamespace(name="Fake GPU", uuid=FakeUUID(nvml.torch_uuids[card]),
                               pci_domain_id=domain, pci_bus_id=bus, pci_device_id=dev,
                               total_memory=2**34)

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(visible))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize",
                        lambda device=None: events.append(("sync", str(device))))
    monkeypatch.setattr(devices, "sharing", devices.Sharing())
    return nvml, events


@pytest.mark.parametrize("device", ["cuda:0", "cuda"])
def test_the_meter_reads_the_physical_card_torch_trains_on(gpus, device):
    nvml, events = gpus
    with energy.EnergyMeter(torch.device(device)) as meter:
        nvml.energy_mj[3] += 5_000   # the run's card: 5 J
        nvml.energy_mj[0] += 70_000  # NVML's card 0, someone else's
    assert meter.joules == pytest.approx(5.0)
    assert energy.energy_metrics(meter) == {"energy_j": pytest.approx(5.0),
                                            "energy_source": meter.source}
    # the window opens and closes on a synchronised device: queued work is not mis-counted
    assert [e[0] for e in events] == ["sync", "read", "sync", "read"]
    assert {e[1] for e in events if e[0] == "read"} == {3}


def test_a_card_found_by_its_pci_bus_id_when_the_uuid_is_unknown(gpus, monkeypatch):
    nvml, _ = gpus
    nvml.torch_uuids = ["00000000-0000-0000-0000-00000000abcd"] * 4  # unknown to NVML
    with energy.EnergyMeter(torch.device("cuda:0")) as meter:
        nvml.energy_mj[3] += 2_000
        nvml.energy_mj[0] += 9_000
    assert meter.joules == pytest.approx(2.0)


def test_a_card_shared_with_other_training_workers_records_no_energy(gpus, monkeypatch):
    nvml, events = gpus
    monkeypatch.setattr(devices, "sharing", devices.Sharing(gpu=True))
    with energy.EnergyMeter(torch.device("cuda:0")) as meter:
        nvml.energy_mj[3] += 5_000
    assert meter.joules is None and energy.energy_metrics(meter) == {}
    assert "shared" in meter.source  # why nothing was measured
    assert not [e for e in events if e[0] == "read"]


def test_a_mig_slice_records_no_energy(gpus, monkeypatch):
    nvml, _ = gpus
    monkeypatch.setattr(nvml, "nvmlDeviceGetMigMode", lambda handle: (1, 1))
    nvml.torch_uuids = ["00000000-0000-0000-0000-00000000abcd"] * 4  # a MIG uuid: found by PCI
    with energy.EnergyMeter(torch.device("cuda:0")) as meter:
        nvml.energy_mj[3] += 5_000  # the whole card's counter: every slice's work
    assert meter.joules is None and energy.energy_metrics(meter) == {}


class RecordingPool:
    """Stands in for ProcessPoolExecutor: keeps the worker initializer and its arguments."""

    made: list = []

    def __init__(self, workers, mp_context=None, initializer=None, initargs=()):
        RecordingPool.made.append((workers, initializer, initargs))


@pytest.mark.parametrize("workers, shared", [(1, False), (3, False), (4, True)])
def test_more_local_workers_than_gpus_share_a_card_and_record_no_energy(gpus, monkeypatch,
                                                                        workers, shared):
    from scalelab.runner import local

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(local, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.setattr(local.threading, "Thread", lambda **kw: SimpleNamespace(start=lambda: 0))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    executor = local.LocalExecutor("cuda", workers, False)
    executor.workers = workers
    RecordingPool.made.clear()
    executor._pool(workers)
    [(_, initializer, initargs)] = RecordingPool.made
    initializer(*initargs)  # what each worker process runs first
    assert devices.sharing == devices.Sharing(cpu=workers > 1, gpu=shared)


@pytest.mark.parametrize("gpus_per_task, shared", [(0.5, True), (0.25, True), (1.0, False),
                                                   (2.0, False)])
def test_fractional_ray_gpus_share_a_card_and_record_no_energy(gpus, monkeypatch,
                                                               gpus_per_task, shared):
    from scalelab.runner import ray as ray_runner

    seen = {}
    monkeypatch.setattr(ray_runner, "train_group_of",
                        lambda group, device, checkpoint: seen.setdefault(
                            "shared", devices.sharing.gpu))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    ray_runner._train_on_worker(None, "cuda", False, 1, gpus_per_task)
    assert seen["shared"] is shared
