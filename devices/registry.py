"""Choosing a meter: ``get_power_meter(name)`` and ``probe_meters()`` for ``exitflow devices``.

``"auto"`` tries Zeus (GPUs + CPU packages + DRAM in one window, when the optional ``zeus``
package is installed and finds something to measure), then exitflow's own readers - NVML, RAPL,
the Jetson INA3221 monitors - and falls back to the psutil estimate for the detected host CPU;
the first that opens wins. Explicit names: ``zeus``, ``nvml``, ``rapl``, ``jetson``, ``psutil``,
``replay`` (needs a trace), ``mac_model`` and ``null``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from exitflow.devices.base import PowerMeter
from exitflow.devices.cpu_power import describe_host
from exitflow.devices.errors import DeviceError
from exitflow.devices.jetson import DEFAULT_JETSON_ROOT, JetsonMeter
from exitflow.devices.mac_model import MacEnergyModel
from exitflow.devices.null import NullMeter
from exitflow.devices.nvml import NvmlMeter
from exitflow.devices.psutil_meter import PsutilMeter
from exitflow.devices.rapl import DEFAULT_RAPL_ROOT, RaplMeter
from exitflow.devices.replay import ReplayMeter
from exitflow.devices.zeus_meter import ZeusMeter

METER_NAMES = ("auto", "zeus", "nvml", "rapl", "jetson", "psutil", "replay", "mac_model", "null")
AUTO_ORDER = ("zeus", "nvml", "rapl", "jetson")


@dataclass(frozen=True)
class MeterOptions:
    """Settings shared by the meters (``pipeline`` fills them from ``cfg.power``)."""

    profile: str = "host"
    replay_trace: str | None = None
    sample_hz: float = 50.0
    rapl_root: str = DEFAULT_RAPL_ROOT
    jetson_root: str = DEFAULT_JETSON_ROOT
    #: Idle floor of measured meters in mW, when known (e.g. from an earlier calibration).
    idle_floor_mw: float | None = None
    #: Seconds of idle calibration at open for measured meters without ``idle_floor_mw``
    #: (0 = none: their windows then carry no dynamic energy). Estimating meters ignore both.
    idle_calibration_s: float = 0.0


@dataclass(frozen=True)
class ProbeResult:
    """Whether one meter can be used here, and why (one line)."""

    name: str
    available: bool
    estimated: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _open(name: str, opts: MeterOptions, start_threads: bool = True) -> PowerMeter:
    if name == "zeus":
        return ZeusMeter()
    if name == "nvml":
        return NvmlMeter(sample_hz=opts.sample_hz, start_sampler=start_threads)
    if name == "rapl":
        return RaplMeter(opts.rapl_root, start_poller=start_threads)
    if name == "jetson":
        return JetsonMeter(opts.jetson_root, sample_hz=max(opts.sample_hz, 20.0), start_sampler=start_threads)
    if name == "psutil":
        return PsutilMeter(opts.profile)
    if name == "replay":
        if not opts.replay_trace:
            raise DeviceError(
                "the replay meter needs a trace; set power.replay_trace to a CSV/JSON power trace"
            )
        return ReplayMeter(opts.replay_trace)
    if name == "mac_model":
        return MacEnergyModel(opts.profile)
    if name == "null":
        return NullMeter()
    raise ValueError(f"unknown power meter {name!r}; expected one of {', '.join(METER_NAMES)}")


def _with_idle_floor(meter: PowerMeter, opts: MeterOptions) -> PowerMeter:
    """Apply the configured idle floor or run the idle calibration (measured meters only)."""
    if meter.estimating or meter.kind == "null":
        return meter
    try:
        if opts.idle_floor_mw is not None:
            meter.set_idle_floor(opts.idle_floor_mw, "configured (power.idle_floor_mw)")
        elif opts.idle_calibration_s > 0:
            meter.calibrate_idle(opts.idle_calibration_s)
    except BaseException:
        meter.close()
        raise
    return meter


def get_power_meter(name: str = "auto", options: MeterOptions | None = None, **kwargs: Any) -> PowerMeter:
    """Open a power meter by name.

    Args:
        name: One of :data:`METER_NAMES`.
        options: Shared settings; ``kwargs`` override its fields (e.g. ``profile="raspberry-pi-5"``).

    Returns:
        An open meter; close it (or use ``with``) to stop its background thread.

    Raises:
        ValueError: Unknown name or option.
        DeviceError: The named meter is not available here (the message says how to fix it).
    """
    opts = options or MeterOptions()
    if kwargs:
        unknown = set(kwargs) - set(MeterOptions.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown meter option(s) {sorted(unknown)}; allowed: {sorted(MeterOptions.__dataclass_fields__)}"
            )
        opts = MeterOptions(**{**asdict(opts), **kwargs})
    if name != "auto":
        return _with_idle_floor(_open(name, opts), opts)
    for candidate in AUTO_ORDER:
        try:
            meter = _open(candidate, opts)
        except DeviceError:
            continue
        return _with_idle_floor(meter, opts)
    return _open("psutil", opts)


def _probe_one(name: str, opts: MeterOptions) -> ProbeResult:
    try:
        meter = _open(name, opts, start_threads=False)
    except (DeviceError, ValueError) as e:
        return ProbeResult(name, False, name in ("psutil", "mac_model"), str(e).splitlines()[0])
    try:
        estimated = name in ("psutil", "mac_model", "replay")
        return ProbeResult(name, True, estimated, meter.describe().splitlines()[0])
    finally:
        meter.close()


def probe_meters(options: MeterOptions | None = None) -> tuple[str, list[ProbeResult]]:
    """Probe every meter kind once.

    Returns:
        The name ``"auto"`` would pick and one :class:`ProbeResult` per meter kind.
    """
    opts = options or MeterOptions()
    results = [_probe_one(name, opts) for name in METER_NAMES if name != "auto"]
    found = {r.name for r in results if r.available}
    chosen = next((n for n in AUTO_ORDER if n in found), "psutil")
    return chosen, results


def devices_report(configured: str = "auto", options: MeterOptions | None = None) -> dict[str, Any]:
    """Everything ``exitflow devices --json`` prints, as a JSON-ready dict.

    Keys: ``configured``, ``auto_choice``, ``selected``, ``selected_available``,
    ``selected_description`` (``None`` when not available), ``meters`` (one
    :meth:`ProbeResult.to_dict` per meter kind, ``zeus`` included with its reason when
    unavailable), ``profile`` (the configured device profile) and ``host`` (:func:`describe_host`:
    the CPU model as detected, cores, VM, matched table row or fallback, figures, assumptions).

    Raises:
        ValueError: ``configured`` is not a meter name.
    """
    if configured not in METER_NAMES:
        raise ValueError(f"unknown power meter {configured!r}; expected one of {', '.join(METER_NAMES)}")
    opts = options or MeterOptions()
    auto_choice, results = probe_meters(opts)
    selected = auto_choice if configured == "auto" else configured
    available = any(r.name == selected and r.available for r in results)
    return {
        "configured": configured,
        "auto_choice": auto_choice,
        "selected": selected,
        "selected_available": available,
        "selected_description": describe_meter(selected, opts) if available else None,
        "meters": [r.to_dict() for r in results],
        "profile": opts.profile,
        "host": describe_host(),
    }


def describe_meter(name: str, options: MeterOptions | None = None) -> str:
    """The ``describe()`` text of meter ``name`` (opened and closed again)."""
    meter = _open(name, options or MeterOptions(), start_threads=False)
    try:
        return meter.describe()
    finally:
        meter.close()


__all__ = [
    "METER_NAMES",
    "MeterOptions",
    "ProbeResult",
    "describe_meter",
    "devices_report",
    "get_power_meter",
    "probe_meters",
]
