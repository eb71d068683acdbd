from __future__ import annotations

import pytest

from exitflow.devices import DeviceError
from exitflow.devices.jetson import JetsonMeter, find_jetson_rails
from tests.devices.fakes import FakeClock, make_hwmon_sensor, make_iio_sensor


def _orin_tree(root):
    # channel: (label, curr mA, in mV, power uW)
    make_hwmon_sensor(root, "1-0040", {
        1: ("VDD_IN", 1000, 5000, None),        # 5000 mW
        2: ("VDD_CPU_GPU_CV", 400, 5000, None),  # 2000 mW
        3: ("VDD_SOC", None, None, 1_500_000),   # power file only: 1500 mW
        7: ("sum of shunt voltages", None, None, None),
    })  # fmt: skip


def _nano_tree(root):
    # channel: (rail, power mW, current mA, voltage mV)
    make_iio_sensor(root, "6-0040", {
        0: ("POM_5V_IN", 4000, None, None),
        1: ("POM_5V_GPU", 1000, None, None),
        2: ("POM_5V_CPU", None, 300, 5000),  # no power file: 1500 mW from I x V
    })  # fmt: skip


def test_new_layout_rails_and_power(tmp_path):
    _orin_tree(tmp_path)
    rails, layout = find_jetson_rails(tmp_path)
    assert layout == "hwmon"
    assert [r.name for r in rails] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    meter = JetsonMeter(tmp_path, start_sampler=False, clock=FakeClock())
    assert meter.read_power_mw() == {"VDD_IN": 5000.0, "VDD_CPU_GPU_CV": 2000.0, "VDD_SOC": 1500.0}
    assert meter.total_rail == "VDD_IN"
    meter.close()


def test_old_layout_rails_and_power(tmp_path):
    _nano_tree(tmp_path)
    meter = JetsonMeter(tmp_path, start_sampler=False, clock=FakeClock())
    assert meter.layout == "iio"
    assert meter.read_power_mw() == {"POM_5V_IN": 4000.0, "POM_5V_GPU": 1000.0, "POM_5V_CPU": 1500.0}
    assert meter.total_rail == "POM_5V_IN"
    meter.close()


@pytest.mark.parametrize(
    ("builder", "total_rail", "powers_mw"),
    [
        (_orin_tree, "VDD_IN", {"VDD_IN": 5000.0, "VDD_CPU_GPU_CV": 2000.0, "VDD_SOC": 1500.0}),
        (_nano_tree, "POM_5V_IN", {"POM_5V_IN": 4000.0, "POM_5V_GPU": 1000.0, "POM_5V_CPU": 1500.0}),
    ],
)
def test_window_energy_per_rail_and_total(tmp_path, builder, total_rail, powers_mw):
    builder(tmp_path)
    clock = FakeClock()
    meter = JetsonMeter(tmp_path, start_sampler=False, clock=clock)
    meter.begin_window("w")
    for _ in range(10):  # 10 samples at 50 Hz = 0.2 s of constant power
        clock.tick(0.02)
        meter.sample()
    m = meter.end_window("w")
    meter.close()
    assert m.duration_s == pytest.approx(0.2)
    assert m.rails == pytest.approx({k: v * 0.2 for k, v in powers_mw.items()})
    assert m.energy_mj == pytest.approx(powers_mw[total_rail] * 0.2)
    assert m.avg_power_mw == pytest.approx(powers_mw[total_rail])
    assert m.source == "jetson:ina3221" and m.estimated is False


def test_trapezoid_follows_a_power_ramp(tmp_path):
    folder = make_hwmon_sensor(tmp_path, "1-0040", {1: ("VDD_IN", 1000, 5000, None)})
    clock = FakeClock()
    meter = JetsonMeter(tmp_path, start_sampler=False, clock=clock)
    meter.begin_window("w")  # 5000 mW
    (folder / "curr1_input").write_text("3000\n")
    clock.tick(1.0)
    m = meter.end_window("w")  # 15000 mW at the end edge: average 10000 mW over 1 s
    meter.close()
    assert m.energy_mj == pytest.approx(10_000.0)


def test_no_total_rail_sums_rails(tmp_path):
    make_hwmon_sensor(tmp_path, "1-0040", {1: ("GPU", 100, 1000, None), 2: ("CPU", 200, 1000, None)})
    clock = FakeClock()
    meter = JetsonMeter(tmp_path, start_sampler=False, clock=clock)
    meter.begin_window("w")
    clock.tick(1.0)
    m = meter.end_window("w")
    meter.close()
    assert m.energy_mj == pytest.approx(300.0)
    assert "sum of rails" in m.source and m.notes


def test_sample_rate_below_20_hz_rejected(tmp_path):
    _orin_tree(tmp_path)
    with pytest.raises(ValueError, match=">= 20"):
        JetsonMeter(tmp_path, sample_hz=10, start_sampler=False)


def test_no_rails_is_a_device_error(tmp_path):
    with pytest.raises(DeviceError, match="no INA3221 power rails"):
        JetsonMeter(tmp_path, start_sampler=False)


def test_background_sampler_integrates(tmp_path):
    _orin_tree(tmp_path)
    meter = JetsonMeter(tmp_path, sample_hz=50)
    meter.begin_window("w")
    import time

    time.sleep(0.2)
    m = meter.end_window("w")
    samples = meter._integrator.samples
    meter.close()
    assert samples >= 3  # edges plus background samples at 50 Hz
    assert m.avg_power_mw == pytest.approx(5000.0)
