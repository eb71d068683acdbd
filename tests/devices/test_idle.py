"""Idle floor and the idle / dynamic (attributable) split of every window."""

from __future__ import annotations

import pytest

import exitflow.devices.nvml as nvml_mod
import exitflow.devices.psutil_meter as psutil_meter
from exitflow.devices import DeviceError, get_power_meter
from exitflow.devices.host import HostInfo
from exitflow.devices.measurement import make_measurement
from exitflow.devices.null import NullMeter
from exitflow.devices.psutil_meter import PsutilMeter
from exitflow.devices.replay import PowerTrace, ReplayMeter
from tests.devices.fakes import FakeClock, make_rapl_zone, set_counter

HOST = HostInfo("AMD EPYC", "AuthenticAMD", 25, 1, 2, 2, 1, 2.0, True, ("test",))


def test_split_adds_up_and_is_capped():
    m = make_measurement("w", 1000.0, 2.0, "x", False, idle_floor_mw=300.0, idle_basis="configured")
    assert (m.idle_energy_mj, m.dynamic_energy_mj) == pytest.approx((600.0, 400.0))
    assert m.attributable_energy_mj == m.dynamic_energy_mj and m.idle_basis == "configured"
    low = make_measurement("w", 100.0, 2.0, "x", False, idle_floor_mw=300.0)
    assert (
        low.idle_energy_mj == 100.0
        and low.dynamic_energy_mj == 0.0
        and "less than the idle floor" in low.notes[0]
    )
    unknown = make_measurement("w", 100.0, 2.0, "x", False)
    assert unknown.idle_energy_mj is None and unknown.dynamic_energy_mj is None
    d = m.to_dict()
    assert {
        "energy_mj",
        "source",
        "estimated",
        "rails",
        "idle_energy_mj",
        "dynamic_energy_mj",
        "idle_basis",
    } <= set(d)


def test_measured_meter_without_floor_has_no_split_then_calibrates(tmp_path):
    trace = PowerTrace([0.0, 1.0, 2.0, 3.0], [500.0, 500.0, 2500.0, 2500.0])
    meter = ReplayMeter(trace, on_end="hold")
    meter.estimating = False  # behave like a measured meter for this test
    assert meter.run_window("w", 0.5).dynamic_energy_mj is None
    assert "unknown" in meter.describe_idle_floor()
    floor = meter.calibrate_idle(1.0)  # virtual clock 0.5 .. 1.5 s: 500 mW, then 500 -> 1500 mW
    assert floor == pytest.approx((500 * 0.5 + 0.5 * (500 + 1500) * 0.5) / 1.0)
    assert meter.idle_floor_basis.startswith("measured")
    m = meter.run_window("w", 1.0)
    assert m.idle_energy_mj == pytest.approx(floor * 1.0)
    assert m.idle_energy_mj + m.dynamic_energy_mj == pytest.approx(m.energy_mj)


def test_psutil_split_is_the_model_terms(monkeypatch):
    cpu = {"s": 5.0}
    monkeypatch.setattr(psutil_meter.time, "process_time", lambda: cpu["s"])
    clock = FakeClock()
    meter = PsutilMeter("host", clock=clock, host=HOST, idle_share=0.5)
    meter.begin_window("w")
    cpu["s"] += 0.25
    clock.tick(1.0)
    m = meter.end_window("w")
    assert m.dynamic_energy_mj == pytest.approx(m.rails["cpu_active"]) == pytest.approx(3600 * 0.25)
    assert m.idle_energy_mj == pytest.approx(m.rails["idle_share"]) == pytest.approx(0.5 * 800)
    assert "model" in m.idle_basis


def test_null_meter_cannot_calibrate():
    clock = FakeClock()
    meter = NullMeter(clock=clock)
    with pytest.raises(DeviceError, match="no idle floor"):
        meter.calibrate_idle(0.01, wait=clock.tick)
    replay = ReplayMeter(PowerTrace([0.0, 1.0], [1.0, 1.0]))
    with pytest.raises(DeviceError, match="lasted 0 s"):
        replay.calibrate_idle(0.5, wait=lambda s: None)
    with pytest.raises(ValueError, match="duration_s > 0"):
        meter.calibrate_idle(0)


def test_set_idle_floor_validates():
    meter = NullMeter()
    with pytest.raises(ValueError, match="finite power >= 0"):
        meter.set_idle_floor(-1.0)
    with pytest.raises(ValueError, match="finite power >= 0"):
        meter.set_idle_floor(float("nan"))


def test_registry_applies_configured_floor_to_measured_meters(tmp_path, monkeypatch):
    monkeypatch.setattr(nvml_mod, "pynvml", None)
    zone = make_rapl_zone(tmp_path, "0", "package-0", 0, 10**9)
    with get_power_meter("rapl", rapl_root=str(tmp_path), idle_floor_mw=1000.0) as meter:
        meter.begin_window("w")
        set_counter(zone, 5_000_000)  # 5 J
        m = meter.end_window("w")
        assert m.energy_mj == pytest.approx(5000.0)
        assert m.idle_energy_mj == pytest.approx(1000.0 * m.duration_s)
        assert m.idle_basis.startswith("configured")
    # estimating meters keep their model floor whatever is configured
    with get_power_meter("psutil", idle_floor_mw=1.0) as meter:
        assert meter.idle_floor_basis.startswith("model")


def test_registry_calibrates_measured_meters_at_open(tmp_path, monkeypatch):
    monkeypatch.setattr(nvml_mod, "pynvml", None)
    make_rapl_zone(tmp_path, "0", "package-0", 0, 10**9)  # a counter that never moves: floor 0 mW
    with get_power_meter("rapl", rapl_root=str(tmp_path), idle_calibration_s=0.01) as meter:
        assert meter.idle_floor_mw == 0.0 and meter.idle_floor_basis.startswith("measured")
        assert "idle floor: 0.0 mW" in meter.describe_idle_floor()
