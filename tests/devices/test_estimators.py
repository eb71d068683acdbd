from __future__ import annotations

import pytest

import exitflow.devices.psutil_meter as psutil_meter
from exitflow.devices import ProfileError, available_profiles, load_power_profile
from exitflow.devices.device_profiles import parse_profile
from exitflow.devices.mac_model import MacEnergyModel
from exitflow.devices.psutil_meter import PsutilMeter
from tests.devices.fakes import FakeClock

EXPECTED_PROFILES = {"x86-server", "raspberry-pi-5", "jetson-orin-nano", "jetson-agx-orin", "h100"}


def test_all_shipped_profiles_load_with_sources():
    assert EXPECTED_PROFILES <= set(available_profiles())
    for name in EXPECTED_PROFILES:
        p = load_power_profile(name)
        assert p.name == name and p.sources
        assert p.pj_per_mac, name
        for fig in list(p.figures.values()) + list(p.pj_per_mac.values()):
            assert fig.sources and all(s in p.sources for s in fig.sources)
            assert fig.value > 0


def _minimal():
    return {
        "name": "t", "description": "d", "kind": "cpu",
        "idle_power_w": {"value": 1, "source": "s"},
        "sources": [{"id": "s", "title": "a doc"}],
    }  # fmt: skip


def test_profile_unknown_keys_and_bad_sources_are_errors():
    parse_profile(_minimal())
    data = _minimal() | {"idle_watts": 3}
    with pytest.raises(ProfileError, match="unknown key.*idle_watts"):
        parse_profile(data)
    data = _minimal() | {"tdp_w": {"value": 5, "source": "nope", "estmate": True}}
    with pytest.raises(ProfileError) as info:
        parse_profile(data)
    assert "'nope' is not an id" in str(info.value) and "estmate" in str(info.value)
    with pytest.raises(ProfileError, match="no device profile"):
        load_power_profile("no-such-device")


def test_psutil_estimate_formula(monkeypatch):
    cpu = {"s": 10.0}
    monkeypatch.setattr(psutil_meter.time, "process_time", lambda: cpu["s"])
    clock = FakeClock()
    meter = PsutilMeter("raspberry-pi-5", idle_share=0.5, clock=clock)
    meter.begin_window("w")
    cpu["s"] += 1.5
    clock.tick(1.0)
    m = meter.end_window("w")
    # 1.0 W/core x 1.5 core-s + 0.5 x 2.7 W x 1 s = 1.5 + 1.35 J
    assert m.energy_mj == pytest.approx(2850.0)
    assert m.rails == pytest.approx({"cpu_active": 1500.0, "idle_share": 1350.0})
    assert m.estimated is True and m.source == "psutil:estimate(raspberry-pi-5)"
    text = meter.describe()
    assert "ESTIMATE" in text and "idle_share = 0.5" in text and "estimate" in text


def test_psutil_caps_busy_time_at_core_count(monkeypatch):
    cpu = {"s": 0.0}
    monkeypatch.setattr(psutil_meter.time, "process_time", lambda: cpu["s"])
    clock = FakeClock()
    meter = PsutilMeter("raspberry-pi-5", idle_share=0.0, clock=clock)
    meter.begin_window("w")
    cpu["s"] += 100.0
    clock.tick(1.0)
    assert meter.end_window("w").energy_mj == pytest.approx(4 * 1000.0)


def test_psutil_real_process_time_is_positive():
    with PsutilMeter(scope="system") as meter, meter.window("w") as w:
        sum(range(200_000))
    assert w.measurement.energy_mj > 0


def test_psutil_needs_cpu_figures():
    with pytest.raises(ProfileError, match="active_power_per_core_w"):
        PsutilMeter("h100")


def test_mac_model():
    model = MacEnergyModel("h100", precision="fp16")
    m = model.estimate(10**12)  # 1e12 MACs x 1.41 pJ = 1.41 J
    assert m.energy_mj == pytest.approx(1410.0)
    assert m.source == "mac_model:h100" and m.estimated is True
    clock = FakeClock()
    model = MacEnergyModel("x86-server", include_static=True, clock=clock)
    model.begin_window("w")
    model.record_macs(10**9)
    clock.tick(0.5)
    m = model.end_window("w")
    assert m.energy_mj == pytest.approx(92.0 + 70_000 * 0.5)
    assert m.dynamic_energy_mj == pytest.approx(92.0) and m.idle_energy_mj == pytest.approx(35_000.0)
    assert MacEnergyModel("x86-server").estimate(10**9).idle_energy_mj == 0.0  # no static power: no idle part
    with pytest.raises(ProfileError, match="no pj_per_mac"):
        MacEnergyModel("x86-server", precision="fp8")


def test_system_busy_time_matches_psutil():
    import psutil

    with PsutilMeter(scope="system") as meter:
        t = psutil.cpu_times()
        expected = t.user + t.nice + t.system + t.irq + t.softirq
        assert meter._system_busy_s() == pytest.approx(expected, abs=0.5)
