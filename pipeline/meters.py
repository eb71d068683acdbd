"""The power meter the config asks for (``power`` section), opened with its options."""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from contextlib import contextmanager

from exitflow.devices import DeviceError, MeterOptions, PowerMeter
from exitflow.devices.registry import get_power_meter
from exitflow.devices.trace import TraceRecorder
from exitflow.pipeline.config import Config, output_path, resolve_path
from exitflow.pipeline.errors import ExitflowError


def meter_options(cfg: Config, calibrate: bool = True) -> MeterOptions:
    """The ``power`` section as meter options (``calibrate=False`` skips the idle calibration at open)."""
    power = cfg.power
    trace = str(resolve_path(cfg, power.replay_trace)) if power.replay_trace else None
    return MeterOptions(
        profile=power.device_profile, replay_trace=trace, sample_hz=power.sample_hz,
        idle_floor_mw=power.idle_floor_mw, idle_calibration_s=power.idle_calibration_s if calibrate else 0.0,
    )


def open_meter(cfg: Config, calibrate: bool = True) -> PowerMeter:
    """``get_power_meter(cfg.power.meter)``; an unavailable meter is an ExitflowError saying why."""
    try:
        return get_power_meter(cfg.power.meter, meter_options(cfg, calibrate))
    except DeviceError as e:
        raise ExitflowError(f"power meter {cfg.power.meter!r}: {e}") from e


@contextmanager
def metered(cfg: Config) -> Iterator[PowerMeter]:
    """The configured meter for a whole command (``bench``, ``profile``, ``demo``), closed at the end;
    with ``power.trace`` set, a per-rail power trace (CSV) is recorded for as long as it is open."""
    with open_meter(cfg) as meter:
        if not cfg.power.trace:
            yield meter
            return
        path = output_path(cfg, cfg.power.trace)
        try:
            recorder = TraceRecorder(meter, path, cfg.power.trace_hz)
        except (DeviceError, ValueError) as e:
            raise ExitflowError(f"power.trace {path}: {e}") from e
        with recorder:
            yield meter
        summary = recorder.summary()
        print(f"power trace: {summary.rows} rows, {summary.energy_mj:.1f} mJ over {summary.duration_s:.1f} s -> {path}")


def with_trace(cfg: Config, meter: PowerMeter) -> PowerMeter:
    """``meter``, recording a power trace to ``power.trace`` (CSV, line by line) for the rest of the
    process when that is set: how a live run's engine (a Ray actor of its own) traces its power."""
    if not cfg.power.trace:
        return meter
    path = output_path(cfg, cfg.power.trace)
    try:
        recorder = TraceRecorder(meter, path, cfg.power.trace_hz).start()
    except (DeviceError, ValueError) as e:
        raise ExitflowError(f"power.trace {path}: {e}") from e
    atexit.register(recorder.stop)
    return meter
