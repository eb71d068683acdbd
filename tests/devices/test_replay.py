from __future__ import annotations

import json

import pytest

from exitflow.devices import DeviceError
from exitflow.devices.replay import PowerTrace, ReplayMeter, load_trace


def _csv(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("t_s,power_mw,VDD_GPU\n10.0,1000,400\n11.0,3000,400\n12.0,1000,800\n")
    return path


def test_csv_trace_integral_is_exact(tmp_path):
    meter = ReplayMeter(_csv(tmp_path))
    m = meter.run_window("a", 1.0)  # trapezoid (1000 + 3000) / 2 * 1 s
    assert m.energy_mj == 2000.0
    assert m.rails == {"VDD_GPU": 400.0}
    assert m.duration_s == 1.0 and m.avg_power_mw == 2000.0
    assert m.source == "replay:trace.csv" and m.estimated is True
    m = meter.run_window("b", 0.5)  # 1.0 -> 1.5 s: power 3000 -> 2000 mW
    assert m.energy_mj == pytest.approx(1250.0)


def test_json_trace_matches_csv(tmp_path):
    rows = [
        {"t_s": 10.0, "power_mw": 1000, "rails": {"VDD_GPU": 400}},
        {"t_s": 11.0, "power_mw": 3000, "rails": {"VDD_GPU": 400}},
        {"t_s": 12.0, "power_mw": 1000, "VDD_GPU": 800},
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(rows))
    a, b = ReplayMeter(path), ReplayMeter(_csv(tmp_path))
    for d in (0.3, 0.7, 1.9, 0.05):
        ma, mb = a.run_window("w", d), b.run_window("w", d)
        assert ma.energy_mj == mb.energy_mj and ma.rails == mb.rails


def test_two_replays_are_identical(tmp_path):
    def run():
        meter = ReplayMeter(_csv(tmp_path))
        out = []
        meter.begin_window("outer")
        for i in range(50):
            out.append(meter.run_window("step", 0.013 * (i % 7 + 1)).energy_mj)
        out.append(meter.end_window("outer").energy_mj)
        return out

    assert run() == run()


def test_overlapping_windows_add_up(tmp_path):
    meter = ReplayMeter(_csv(tmp_path))
    meter.begin_window("outer")
    meter.begin_window("a")
    meter.advance(0.4)
    meter.begin_window("b")
    meter.advance(0.4)
    ma = meter.end_window("a")
    meter.advance(0.4)
    mb = meter.end_window("b")
    outer = meter.end_window("outer")
    assert outer.energy_mj == pytest.approx(ReplayMeter(_csv(tmp_path)).run_window("x", 1.2).energy_mj)
    assert ma.duration_s == pytest.approx(0.8) and mb.duration_s == pytest.approx(0.8)


def test_loop_hold_and_error(tmp_path):
    path = _csv(tmp_path)
    full = 2000.0 + 2000.0  # one period (2 s)
    assert ReplayMeter(path, on_end="loop").run_window("w", 4.0).energy_mj == pytest.approx(2 * full)
    assert ReplayMeter(path, on_end="hold").run_window("w", 3.0).energy_mj == pytest.approx(full + 1000.0)
    meter = ReplayMeter(path, on_end="error")
    meter.begin_window("w")
    meter.advance(2.5)
    with pytest.raises(DeviceError, match="past the end"):
        meter.end_window("w")


def test_bad_traces(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,power\n0,1\n")
    with pytest.raises(DeviceError, match="t_s,power_mw"):
        load_trace(bad)
    with pytest.raises(DeviceError, match="strictly increasing"):
        PowerTrace([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(DeviceError, match="negative"):
        PowerTrace([0.0, 1.0], [1.0, -1.0])
    with pytest.raises(ValueError, match="never goes back"):
        ReplayMeter(PowerTrace([0.0, 1.0], [1.0, 1.0])).advance(-1)


def test_csv_row_with_missing_value(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("t_s,power_mw,GPU\n0,1,1\n1,2\n")
    with pytest.raises(DeviceError, match="every row needs 3 values"):
        load_trace(path)
