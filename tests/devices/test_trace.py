"""Power traces: record with TraceRecorder, replay with ReplayMeter, same window energies."""

from __future__ import annotations

import time

import pytest

import exitflow.devices.psutil_meter as psutil_meter
from exitflow.devices import DeviceError
from exitflow.devices.host import HostInfo
from exitflow.devices.null import NullMeter
from exitflow.devices.psutil_meter import PsutilMeter
from exitflow.devices.rapl import RaplMeter
from exitflow.devices.replay import PowerTrace, ReplayMeter, load_trace
from exitflow.devices.trace import TraceRecorder, TraceRow, record_trace
from tests.devices.fakes import FakeClock, make_rapl_zone, set_counter

HOST = HostInfo("AMD EPYC", "AuthenticAMD", 25, 1, 2, 2, 1, 2.0, True, ("test",))


def _replay(path, edges):
    """Replay window edges ``(t_s, "begin" | "end", name)``; returns ``{name: Measurement}``."""
    meter = ReplayMeter(load_trace(path), on_end="error")
    out = {}
    for t_s, edge, name in edges:
        meter.advance(max(0.0, t_s - meter.now_s))
        if edge == "begin":
            meter.begin_window(name)
        else:
            out[name] = meter.end_window(name)
    return out


def test_fake_psutil_trace_replays_window_energies(tmp_path, monkeypatch):
    cpu = {"s": 0.0}
    monkeypatch.setattr(psutil_meter.time, "process_time", lambda: cpu["s"])
    clock = FakeClock()
    meter = PsutilMeter("host", clock=clock, host=HOST)
    path = tmp_path / "trace.csv"
    rows: list[TraceRow] = []
    recorder = TraceRecorder(
        meter, path, sample_hz=100, on_row=rows.append, start_thread=False, keep_edges=True
    ).start()
    recorded = {}
    for i, (busy_s, idle_s) in enumerate([(0.013, 0.004), (0.0, 0.02), (0.05, 0.001), (0.021, 0.017)]):
        clock.tick(idle_s)
        recorder.cut()  # a background sample between windows
        meter.begin_window(f"w{i}")
        for _ in range(3):  # samples inside the window, unevenly loaded
            clock.tick(busy_s / 2 + 0.002)
            cpu["s"] += busy_s / 3
            recorder.cut()
        recorded[f"w{i}"] = meter.end_window(f"w{i}")
    summary = recorder.stop()
    assert summary.rows == len(rows) and summary.rails == ("cpu_active", "idle_share")
    trace = load_trace(path)
    assert trace.interpolation == "step" and trace.idle_floor_mw == pytest.approx(800.0)
    replayed = _replay(path, recorder.edges)
    assert set(replayed) == set(recorded)
    for name, m in recorded.items():
        r = replayed[name]
        assert r.energy_mj == pytest.approx(m.energy_mj, rel=1e-2)
        assert r.dynamic_energy_mj == pytest.approx(m.dynamic_energy_mj, rel=1e-2, abs=1e-6)
        assert r.rails["cpu_active"] == pytest.approx(m.rails["cpu_active"], rel=1e-2, abs=1e-6)
    assert summary.energy_mj == pytest.approx(sum(r.power_mw * r.duration_s for r in rows))


def test_rapl_trace_overlapping_windows(tmp_path):
    clock = FakeClock()
    zone = make_rapl_zone(tmp_path / "rapl", "0", "package-0", 0, 10**12)
    meter = RaplMeter(tmp_path / "rapl", start_poller=False, clock=clock)
    energy = {"uj": 0}

    def spend(uj: int, dt_s: float) -> None:
        energy["uj"] += uj
        set_counter(zone, energy["uj"])
        clock.tick(dt_s)

    with TraceRecorder(meter, tmp_path / "rapl.csv", start_thread=False, keep_edges=True) as recorder:
        spend(1_000, 0.01)
        meter.begin_window("a")
        spend(40_000, 0.02)
        meter.begin_window("b")
        spend(7_000, 0.03)
        recorder.cut()
        spend(9_000, 0.01)
        ma = meter.end_window("a")
        spend(5_000, 0.05)
        mb = meter.end_window("b")
    replayed = _replay(tmp_path / "rapl.csv", recorder.edges)
    ra, rb = replayed["a"], replayed["b"]
    assert ra.energy_mj == pytest.approx(ma.energy_mj, rel=1e-9) == pytest.approx(56.0)
    assert rb.energy_mj == pytest.approx(mb.energy_mj, rel=1e-9) == pytest.approx(21.0)
    assert ra.rails["package-0"] == pytest.approx(56.0)
    meter.close()


def test_real_psutil_trace_with_background_thread(tmp_path):
    meter = PsutilMeter("host", host=HOST)
    path = tmp_path / "live.csv"
    recorded = {}
    with TraceRecorder(meter, path, sample_hz=200, keep_edges=True) as recorder:
        for i in range(6):
            meter.begin_window(f"w{i}")
            if i % 2:
                time.sleep(0.03)
            else:
                deadline = time.perf_counter() + 0.03
                while time.perf_counter() < deadline:
                    pass
            recorded[f"w{i}"] = meter.end_window(f"w{i}")
            time.sleep(0.01)
    replayed = _replay(path, recorder.edges)
    for name, m in recorded.items():
        assert replayed[name].energy_mj == pytest.approx(m.energy_mj, rel=1e-2)


def test_record_trace_from_a_replay_meter_round_trips(tmp_path):
    source = ReplayMeter(PowerTrace([0.0, 1.0, 2.0], [1000.0, 3000.0, 1000.0], {"gpu": [0.0, 500.0, 0.0]}))
    summary = record_trace(source, tmp_path / "r.csv", 2.0, wait=source.advance)
    assert summary.rows == 1 and summary.energy_mj == pytest.approx(4000.0)
    assert summary.to_dict()["avg_power_mw"] == pytest.approx(2000.0)
    m = ReplayMeter(tmp_path / "r.csv").run_window("w", 2.0)
    assert m.energy_mj == pytest.approx(4000.0) and m.rails["gpu"] == pytest.approx(500.0)


def test_recorder_errors(tmp_path):
    with pytest.raises(DeviceError, match="measures no energy"):
        TraceRecorder(NullMeter(), tmp_path / "n.csv", start_thread=False).start()
    with pytest.raises(ValueError, match="sample_hz"):
        TraceRecorder(NullMeter(), sample_hz=0)
    (tmp_path / "file").write_text("x")
    meter = ReplayMeter(PowerTrace([0.0, 1.0], [1.0, 1.0]))
    with pytest.raises(DeviceError, match="cannot write the power trace"):
        TraceRecorder(meter, tmp_path / "file" / "t.csv", start_thread=False).start()
    assert meter.open_windows == ()
    with pytest.raises(ValueError, match="duration_s"):
        record_trace(meter, tmp_path / "t.csv", 0)


def test_step_trace_metadata_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("# interpolation=cubic\nt_s,power_mw\n0,1\n1,1\n")
    with pytest.raises(DeviceError, match="linear or step"):
        load_trace(path)
    with pytest.raises(DeviceError, match="idle_floor_mw"):
        PowerTrace([0.0, 1.0], [1.0, 1.0], idle_floor_mw=-1.0)
