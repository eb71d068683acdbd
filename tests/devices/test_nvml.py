from __future__ import annotations

import sys
import types

import pytest

import exitflow.devices.nvml as nvml_mod
from exitflow.devices import DeviceError
from exitflow.devices.nvml import NvmlMeter
from tests.devices.fakes import FakeClock


class FakeNVMLError(Exception):
    pass


def fake_pynvml(energy_mj=None, power_mw=None, counter_supported=True, init_fails=False, count=1):
    """A stand-in for the pynvml module: counters and power come from mutable lists."""
    energy_mj = energy_mj if energy_mj is not None else [0] * count
    power_mw = power_mw if power_mw is not None else [0] * count
    mod = types.SimpleNamespace(NVMLError=FakeNVMLError, calls=[])

    def init():
        if init_fails:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def energy(handle):
        if not counter_supported:
            raise FakeNVMLError("Not Supported")
        return energy_mj[handle]

    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: mod.calls.append("shutdown")
    mod.nvmlDeviceGetCount = lambda: count
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: b"Fake H100"
    mod.nvmlDeviceGetTotalEnergyConsumption = energy
    mod.nvmlDeviceGetPowerUsage = lambda h: power_mw[h]
    mod.energy_mj, mod.power_mw = energy_mj, power_mw
    return mod


def test_energy_counter_path(monkeypatch):
    fake = fake_pynvml(energy_mj=[1_000, 50], power_mw=[300_000, 100_000], count=2)
    monkeypatch.setattr(nvml_mod, "pynvml", fake)
    clock = FakeClock()
    meter = NvmlMeter(start_sampler=False, clock=clock)
    assert meter.counter_supported
    meter.begin_window("w")
    fake.energy_mj[0] += 30_000
    fake.energy_mj[1] += 10_000
    clock.tick(0.1)
    m = meter.end_window("w")
    meter.close()
    assert m.source == "nvml:energy_counter"
    assert m.energy_mj == 40_000.0
    assert m.rails == {"gpu0": 30_000.0, "gpu1": 10_000.0}
    assert m.avg_power_mw == pytest.approx(400_000.0)
    assert "shutdown" in fake.calls


def test_zero_counter_delta_falls_back_to_sampling(monkeypatch):
    fake = fake_pynvml(energy_mj=[5_000], power_mw=[200_000])
    monkeypatch.setattr(nvml_mod, "pynvml", fake)
    clock = FakeClock()
    meter = NvmlMeter(start_sampler=False, clock=clock)
    meter.begin_window("w")
    clock.tick(0.01)
    meter.sample()
    clock.tick(0.01)
    m = meter.end_window("w")
    meter.close()
    assert m.source == "nvml:power_sampling"
    assert m.energy_mj == pytest.approx(200_000 * 0.02)
    assert m.notes and "did not advance" in m.notes[0]


def test_unsupported_counter_uses_power_sampling(monkeypatch):
    fake = fake_pynvml(power_mw=[100_000], counter_supported=False)
    monkeypatch.setattr(nvml_mod, "pynvml", fake)
    clock = FakeClock()
    meter = NvmlMeter(start_sampler=False, clock=clock)
    assert not meter.counter_supported and "Not Supported" in meter.describe()
    meter.begin_window("w")
    for p in (100_000, 300_000):  # ramp: samples at 0.1 s (100 W) -> 0.2 s (300 W) -> end 0.3 s (300 W)
        clock.tick(0.1)
        fake.power_mw[0] = p
        meter.sample()
    clock.tick(0.1)
    m = meter.end_window("w")
    meter.close()
    # trapezoids: 0.1*(100+100)/2 + 0.1*(100+300)/2 + 0.1*(300+300)/2 W*s = 10 + 20 + 30 J
    assert m.source == "nvml:power_sampling"
    assert m.energy_mj == pytest.approx(60_000.0)
    assert m.rails == pytest.approx({"gpu0": 60_000.0})


def test_background_sampler_runs(monkeypatch):
    fake = fake_pynvml(power_mw=[50_000], counter_supported=False)
    monkeypatch.setattr(nvml_mod, "pynvml", fake)
    meter = NvmlMeter(sample_hz=200)
    meter.begin_window("w")
    import time

    time.sleep(0.1)
    m = meter.end_window("w")
    samples = meter._integrator.samples
    meter.close()
    assert samples > 3
    assert m.avg_power_mw == pytest.approx(50_000.0)


def test_init_failure_is_translated(monkeypatch):
    monkeypatch.setattr(nvml_mod, "pynvml", fake_pynvml(init_fails=True))
    with pytest.raises(DeviceError, match="nvidia-smi") as info:
        NvmlMeter(start_sampler=False)
    assert isinstance(info.value.__cause__, FakeNVMLError)


def test_missing_library(monkeypatch):
    monkeypatch.setattr(nvml_mod, "pynvml", None)
    with pytest.raises(DeviceError, match="nvidia-ml-py"):
        NvmlMeter(start_sampler=False)


def test_bad_index(monkeypatch):
    monkeypatch.setattr(nvml_mod, "pynvml", fake_pynvml())
    with pytest.raises(DeviceError, match="do not exist"):
        NvmlMeter(device_indices=[3], start_sampler=False)


def test_cuda_synchronised_at_edges_only_if_torch_loaded(monkeypatch):
    monkeypatch.setattr(nvml_mod, "pynvml", fake_pynvml(energy_mj=[0], power_mw=[1]))
    syncs = []
    cuda = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True, synchronize=lambda: syncs.append(1)
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    meter = NvmlMeter(start_sampler=False)
    meter.begin_window("w")
    meter.end_window("w")
    meter.close()
    assert len(syncs) == 2
    monkeypatch.delitem(sys.modules, "torch")
    nvml_mod.sync_cuda()  # no torch: a no-op, no import
    assert "torch" not in sys.modules
