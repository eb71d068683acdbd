"""The zeus meter against a fake ZeusMonitor (mocked where it is imported: devices.zeus_meter)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pytest

import exitflow.devices.zeus_meter as zeus_meter
from exitflow.devices import DeviceError
from exitflow.devices.replay import ReplayMeter, load_trace
from exitflow.devices.trace import TraceRecorder
from exitflow.devices.zeus_meter import ZeusMeter


@dataclass
class FakeZeusMeasurement:
    """Zeus's Measurement: time in s, energies in J (SoC in mJ)."""

    time: float
    gpu_energy: dict[int, float]
    cpu_energy: dict[int, float] | None = None
    dram_energy: dict[int, float] | None = None
    soc_energy: object | None = None


@dataclass
class FakeJetson:
    cpu_energy_mj: float | None = None
    gpu_energy_mj: float | None = None
    total_energy_mj: float | None = None


class FakeGPUs:
    def get_name(self, index: int) -> str:
        return f"Fake H200 #{index}"


@dataclass
class FakeZeusMonitor:
    """Cumulative counters; windows subtract snapshots, as ZeusMonitor does."""

    gpu_indices: list[int] | None = None
    cpu_indices: list[int] | None = None
    approx_instant_energy: bool = False
    sync_execution_with: str = "torch"
    soc_is_present: bool = False
    t_s: float = 0.0
    gpu_j: dict[int, float] = field(default_factory=dict)
    cpu_j: dict[int, float] = field(default_factory=dict)
    dram_j: dict[int, float] = field(default_factory=dict)
    soc_mj: float = 0.0
    calls: list[tuple[str, str, bool]] = field(default_factory=list)
    windows: dict[str, tuple] = field(default_factory=dict)
    gpus: FakeGPUs = field(default_factory=FakeGPUs)

    def __post_init__(self):
        self.gpu_indices = [0, 1] if self.gpu_indices is None else self.gpu_indices
        self.cpu_indices = [0] if self.cpu_indices is None else self.cpu_indices
        self.gpu_j = {i: 100.0 for i in self.gpu_indices}
        self.cpu_j = {i: 50.0 for i in self.cpu_indices}
        self.dram_j = {i: 5.0 for i in self.cpu_indices}

    def spend(
        self, dt_s: float, gpu_j: float = 0.0, cpu_j: float = 0.0, dram_j: float = 0.0, soc_mj: float = 0.0
    ):
        self.t_s += dt_s
        for i in self.gpu_j:
            self.gpu_j[i] += gpu_j * (i + 1)
        for i in self.cpu_j:
            self.cpu_j[i] += cpu_j
            self.dram_j[i] += dram_j
        self.soc_mj += soc_mj

    def begin_window(self, key: str, sync_execution: bool = True, restart: bool = False) -> None:
        if key in self.windows:
            raise ValueError(f"Measurement window '{key}' already exists")
        self.calls.append(("begin", key, sync_execution))
        self.windows[key] = (self.t_s, dict(self.gpu_j), dict(self.cpu_j), dict(self.dram_j), self.soc_mj)

    def end_window(self, key: str, sync_execution: bool = True, cancel: bool = False) -> FakeZeusMeasurement:
        t0, g0, c0, d0, s0 = self.windows.pop(key)
        self.calls.append(("end", key, sync_execution))
        soc = FakeJetson(gpu_energy_mj=0.4 * (self.soc_mj - s0), total_energy_mj=self.soc_mj - s0)
        return FakeZeusMeasurement(
            time=self.t_s - t0,
            gpu_energy={i: self.gpu_j[i] - g0[i] for i in self.gpu_j},
            cpu_energy={i: self.cpu_j[i] - c0[i] for i in self.cpu_j} or None,
            dram_energy={i: self.dram_j[i] - d0[i] for i in self.dram_j} or None,
            soc_energy=soc if self.soc_is_present else None,
        )


@pytest.fixture
def fake_zeus(monkeypatch):
    made: list[FakeZeusMonitor] = []

    def factory(**kwargs):
        monitor = FakeZeusMonitor(**kwargs)
        made.append(monitor)
        return monitor

    monkeypatch.setattr(zeus_meter, "ZeusMonitor", factory)
    return made


def test_window_arithmetic_gpu_cpu_dram(fake_zeus):
    meter = ZeusMeter()
    zm = fake_zeus[0]
    assert zm.approx_instant_energy is True and zm.sync_execution_with == "torch"
    meter.begin_window("sample")
    zm.spend(0.5, gpu_j=2.0, cpu_j=3.0, dram_j=0.25)
    m = meter.end_window("sample")
    # GPU0 +2 J, GPU1 +4 J, package +3 J, DRAM +0.25 J
    assert m.rails == pytest.approx({"gpu0": 2000.0, "gpu1": 4000.0, "cpu0": 3000.0, "dram0": 250.0})
    assert m.energy_mj == pytest.approx(9250.0) and m.duration_s == pytest.approx(0.5)
    assert m.avg_power_mw == pytest.approx(18500.0)
    assert m.source == "zeus:gpu+cpu+dram" and m.estimated is False and m.notes == ()
    assert m.dynamic_energy_mj is None  # no idle floor yet
    assert ("begin", "exitflow/sample", True) in zm.calls and ("end", "exitflow/sample", True) in zm.calls
    assert "gpu0 (Fake H200 #0)" in meter.describe()


def test_overlapping_windows_and_errors(fake_zeus):
    meter = ZeusMeter(sync_execution=False)
    zm = fake_zeus[0]
    meter.begin_window("outer")
    zm.spend(0.2, gpu_j=1.0)
    meter.begin_window("inner")
    zm.spend(0.3, gpu_j=1.0, cpu_j=1.0)
    inner = meter.end_window("inner")
    zm.spend(0.1, cpu_j=1.0)
    outer = meter.end_window("outer")
    assert inner.energy_mj == pytest.approx(1000 + 2000 + 1000)
    assert outer.energy_mj == pytest.approx(2 * (1000 + 2000) + 2 * 1000)
    assert all(c[2] is False for c in zm.calls)
    with pytest.raises(DeviceError, match="no open window"):
        meter.end_window("inner")
    meter.begin_window("a")
    with pytest.raises(DeviceError, match="already open"):
        meter.begin_window("a")


def test_short_window_note_and_idle_split(fake_zeus):
    meter = ZeusMeter()
    zm = fake_zeus[0]
    meter.set_idle_floor(1000.0, "configured")
    meter.begin_window("w")
    zm.spend(0.05, gpu_j=0.1)
    m = meter.end_window("w")
    assert any("shorter than 0.1 s" in n and "instant power" in n for n in m.notes)
    assert m.idle_energy_mj == pytest.approx(50.0) and m.dynamic_energy_mj == pytest.approx(300.0 - 50.0)


def test_gpu_only_notes_what_is_not_measured(fake_zeus, monkeypatch):
    monkeypatch.setattr(zeus_meter, "rapl_problem", lambda root="": "RAPL is root-only here")
    meter = ZeusMeter(cpu_indices=[])
    meter.begin_window("w")
    fake_zeus[0].spend(1.0, gpu_j=1.0, cpu_j=5.0)
    m = meter.end_window("w")
    assert m.source == "zeus:gpu" and m.energy_mj == pytest.approx(3000.0)
    assert "CPU/DRAM" in m.notes[0] and "root-only" in m.notes[0]


def test_soc_total_is_used_not_summed(fake_zeus, monkeypatch):
    def jetson(**kwargs):
        monitor = FakeZeusMonitor(gpu_indices=[], cpu_indices=[], soc_is_present=True)
        fake_zeus.append(monitor)
        return monitor

    monkeypatch.setattr(zeus_meter, "ZeusMonitor", jetson)
    meter = ZeusMeter()
    meter.begin_window("w")
    fake_zeus[0].spend(1.0, soc_mj=7000.0)
    m = meter.end_window("w")
    assert m.source == "zeus:soc" and m.energy_mj == pytest.approx(7000.0)
    assert m.rails["soc/gpu_energy"] == pytest.approx(2800.0) and "soc/cpu_energy" not in m.rails


def test_nothing_to_measure_says_why(monkeypatch):
    monkeypatch.setattr(
        zeus_meter, "ZeusMonitor", lambda **kw: FakeZeusMonitor(gpu_indices=[], cpu_indices=[])
    )
    with pytest.raises(
        DeviceError, match=r"nothing to measure.*GPU: none found.*CPU/DRAM.*power.meter: auto"
    ):
        ZeusMeter()


def test_monitor_errors_are_translated(monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("Root privilege is required to read RAPL metrics")

    monkeypatch.setattr(zeus_meter, "ZeusMonitor", broken)
    with pytest.raises(DeviceError, match="Zeus could not start.*Root privilege") as info:
        ZeusMeter()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_not_installed(monkeypatch):
    monkeypatch.setattr(zeus_meter, "ZeusMonitor", None)
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    with pytest.raises(DeviceError, match=r"zeus is not installed.*exitflow\[zeus\]"):
        ZeusMeter()


def test_zeus_trace_round_trip(fake_zeus, tmp_path):
    meter = ZeusMeter()
    zm = fake_zeus[0]
    recorded = {}
    with TraceRecorder(meter, tmp_path / "z.csv", start_thread=False, keep_edges=True) as recorder:
        for i, load in enumerate((1.0, 3.0, 0.5)):
            zm.spend(0.1, gpu_j=0.1)
            meter.begin_window(f"w{i}")
            zm.spend(0.2, gpu_j=load, cpu_j=load / 2, dram_j=0.1)
            recorder.cut()
            zm.spend(0.3, gpu_j=load / 3)
            recorded[f"w{i}"] = meter.end_window(f"w{i}")
    trace_calls = [c for c in zm.calls if c[1] == "exitflow/exitflow:trace"]
    assert all(c[2] is False for c in trace_calls[1:-1])  # rollovers never synchronise CUDA
    replay = ReplayMeter(load_trace(tmp_path / "z.csv"), on_end="error")
    for t_s, edge, name in recorder.edges:
        replay.advance(max(0.0, t_s - replay.now_s))
        if edge == "begin":
            replay.begin_window(name)
        else:
            r = replay.end_window(name)
            assert r.energy_mj == pytest.approx(recorded[name].energy_mj, rel=1e-2)
            assert r.rails["gpu1"] == pytest.approx(recorded[name].rails["gpu1"], rel=1e-2)
