from __future__ import annotations

import time

import pytest

from exitflow.devices import DeviceError
from exitflow.devices.rapl import RaplMeter
from tests.devices.fakes import FakeClock, make_rapl_zone, set_counter

MAX_UJ = 262_143_328_850  # a real max_energy_range_uj value (2^32 units of 61 uJ)


def _tree(tmp_path, pkg_uj=1_000, dram_uj=50, max_range=MAX_UJ):
    pkg = make_rapl_zone(tmp_path, "0", "package-0", pkg_uj, max_range)
    core = make_rapl_zone(tmp_path, "0:0", "core", 10, max_range)
    dram = make_rapl_zone(tmp_path, "0:1", "dram", dram_uj, max_range)
    return pkg, core, dram


@pytest.mark.parametrize("wraps", [0, 1, 2, 3])
def test_rapl_exact_energy_with_wraps(tmp_path, wraps):
    max_range = 1_000_000  # small range so the test can wrap many times
    pkg = make_rapl_zone(tmp_path, "0", "package-0", 900_000, max_range)
    meter = RaplMeter(tmp_path, start_poller=False, clock=FakeClock())
    meter.begin_window("w")
    value, expected_uj = 900_000, 0
    # Each step advances 400_000 uJ; the counter wraps past max_range, at most once per poll.
    steps = {0: 0, 1: 1, 2: 4, 3: 7}[wraps]
    seen_wraps = 0
    for _ in range(steps):
        new = value + 400_000
        if new > max_range:
            new -= max_range + 1
            seen_wraps += 1
        set_counter(pkg, new)
        meter.poll()
        value = new
        expected_uj += 400_000
    set_counter(pkg, value + 123 if value + 123 <= max_range else value)
    expected_uj += 123 if value + 123 <= max_range else 0
    m = meter.end_window("w")
    meter.close()
    assert seen_wraps == wraps
    assert m.energy_mj == expected_uj / 1000.0
    assert m.rails["package-0"] == expected_uj / 1000.0
    assert m.source == "rapl" and m.estimated is False
    assert meter.zones[0].wraps == wraps


def test_rapl_wrap_convention_is_modulo_max_plus_one(tmp_path):
    pkg = make_rapl_zone(tmp_path, "0", "package-0", 99, 99)
    meter = RaplMeter(tmp_path, start_poller=False)
    meter.begin_window("w")
    set_counter(pkg, 0)  # 99 -> 0 is one step of 1 uJ
    m = meter.end_window("w")
    assert m.energy_mj == pytest.approx(0.001, abs=0)


def test_rapl_total_sums_package_and_dram_not_core(tmp_path):
    pkg, core, dram = _tree(tmp_path)
    clock = FakeClock()
    meter = RaplMeter(tmp_path, start_poller=False, clock=clock)
    with meter.window("w") as w:
        set_counter(pkg, 1_000 + 5_000_000)
        set_counter(core, 10 + 3_000_000)
        set_counter(dram, 50 + 700_000)
        clock.tick(2.0)
    meter.close()
    m = w.measurement
    assert m.rails == {"package-0": 5000.0, "package-0/core": 3000.0, "package-0/dram": 700.0}
    assert m.energy_mj == 5700.0
    assert m.duration_s == 2.0
    assert m.avg_power_mw == 2850.0


@pytest.mark.parametrize("content", [None, "garbage", "0"])
def test_rapl_unreadable_max_range_never_negative(tmp_path, content):
    pkg = make_rapl_zone(tmp_path, "0", "package-0", 900_000, content)
    meter = RaplMeter(tmp_path, start_poller=False)
    assert meter.zones[0].max_range_uj is None
    assert "max_energy_range_uj unreadable" in meter.describe()
    assert "chmod o+r" in meter.describe()
    meter.begin_window("w")
    set_counter(pkg, 950_000)
    meter.poll()
    set_counter(pkg, 200)  # wrapped with unknown range: only the 200 uJ since zero are certain
    m = meter.end_window("w")
    meter.close()
    assert m.energy_mj == pytest.approx(50.2)
    assert m.energy_mj >= 0
    assert m.estimated is True
    assert any("lower bound" in n for n in m.notes)


def test_rapl_unknown_range_without_wrap_is_exact(tmp_path):
    pkg = make_rapl_zone(tmp_path, "0", "package-0", 100, None)
    meter = RaplMeter(tmp_path, start_poller=False)
    meter.begin_window("w")
    set_counter(pkg, 4_100)
    m = meter.end_window("w")
    assert m.energy_mj == 4.0 and m.estimated is False


def test_rapl_permission_error_says_how_to_fix(tmp_path, monkeypatch):
    make_rapl_zone(tmp_path, "0", "package-0", 1, MAX_UJ)

    def denied(self, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("exitflow.devices.sysfs.SysfsFile.__init__", denied)
    with pytest.raises(DeviceError, match=r"chmod o\+r .*power.meter: psutil") as info:
        RaplMeter(tmp_path, start_poller=False)
    assert isinstance(info.value.__cause__, PermissionError)


def test_rapl_no_zones(tmp_path):
    with pytest.raises(DeviceError, match="no RAPL zones"):
        RaplMeter(tmp_path, start_poller=False)


def test_rapl_background_poller_catches_wraps(tmp_path):
    pkg = make_rapl_zone(tmp_path, "0", "package-0", 90, 99)
    meter = RaplMeter(tmp_path, poll_interval_s=0.005)
    meter.begin_window("w")
    for value in (40, 90, 40, 90):  # +50 each step; two wraps
        time.sleep(0.05)
        set_counter(pkg, value)
    time.sleep(0.05)
    m = meter.end_window("w")
    meter.close()
    assert m.energy_mj == pytest.approx(0.2, abs=0)  # 4 x 50 uJ
    assert meter.zones[0].wraps == 2
