from __future__ import annotations

import pytest

from exitflow.devices import DeviceError
from exitflow.devices.null import NullMeter
from exitflow.devices.replay import PowerTrace, ReplayMeter
from tests.devices.fakes import FakeClock


def _meter():
    return ReplayMeter(PowerTrace([0.0, 10.0], [1000.0, 1000.0]))


def test_begin_twice_is_an_error():
    meter = _meter()
    meter.begin_window("a")
    with pytest.raises(DeviceError, match="already open"):
        meter.begin_window("a")


def test_end_unknown_is_an_error():
    meter = _meter()
    meter.begin_window("a")
    with pytest.raises(DeviceError, match=r"no open window.*'a'"):
        meter.end_window("b")


def test_names_reusable_after_end_and_overlap_fine():
    meter = _meter()
    meter.begin_window("a")
    meter.begin_window("b")
    meter.advance(1.0)
    assert set(meter.open_windows) == {"a", "b"}
    assert meter.end_window("a").energy_mj == pytest.approx(1000.0)
    meter.begin_window("a")
    meter.advance(1.0)
    assert meter.end_window("b").energy_mj == pytest.approx(2000.0)
    assert meter.end_window("a").energy_mj == pytest.approx(1000.0)
    assert meter.open_windows == ()


def test_context_manager_and_close():
    with _meter() as meter:
        with meter.window("w") as w:
            meter.advance(0.5)
        assert w.measurement.energy_mj == pytest.approx(500.0)
        assert w.measurement.name == "w"
    with pytest.raises(DeviceError, match="closed"):
        meter.begin_window("x")


def test_null_meter_reports_none():
    clock = FakeClock()
    meter = NullMeter(clock=clock)
    meter.begin_window("w")
    clock.tick(0.25)
    m = meter.end_window("w")
    assert m.energy_mj is None and m.avg_power_mw is None
    assert m.source == "none" and m.duration_s == 0.25
    assert m.to_dict()["energy_mj"] is None


def test_begin_twice_at_the_same_virtual_time_is_an_error():
    meter = _meter()
    meter.advance(1.0)
    meter.begin_window("a")
    with pytest.raises(DeviceError, match="already open"):
        meter.begin_window("a")
