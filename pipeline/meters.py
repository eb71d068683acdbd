"""The power meter the config asks for (``power`` section), opened with its options."""

from __future__ import annotations

from exitflow.devices import DeviceError, MeterOptions, PowerMeter
from exitflow.devices.registry import get_power_meter
from exitflow.pipeline.config import Config, resolve_path
from exitflow.pipeline.errors import ExitflowError


def meter_options(cfg: Config) -> MeterOptions:
    power = cfg.power
    trace = str(resolve_path(cfg, power.replay_trace)) if power.replay_trace else None
    return MeterOptions(profile=power.device_profile, replay_trace=trace, sample_hz=power.sample_hz)


def open_meter(cfg: Config) -> PowerMeter:
    """``get_power_meter(cfg.power.meter)``; an unavailable meter is an ExitflowError saying why."""
    try:
        return get_power_meter(cfg.power.meter, meter_options(cfg))
    except DeviceError as e:
        raise ExitflowError(f"power meter {cfg.power.meter!r}: {e}") from e
