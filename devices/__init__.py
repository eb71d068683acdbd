"""Stage 1 of the data flow: power meters, measurement windows and device profiles.

``devices`` imports nothing else of exitflow.

One interface, :class:`PowerMeter` (``begin_window(name)`` / ``end_window(name) -> Measurement``,
overlapping windows, an idle floor that splits every window into idle and dynamic energy,
``close()`` / ``with``), implemented per source: ``zeus_meter`` (GPUs + CPU + DRAM via the
optional Zeus package), ``nvml`` (NVIDIA GPUs), ``rapl`` (powercap counters), ``jetson``
(INA3221 rails), ``psutil_meter`` (CPU-time estimate for the CPU ``host`` detects, figures from
``cpu_power``), ``replay`` (recorded trace on a virtual clock), ``mac_model`` (MACs x pJ/MAC),
``null``. ``trace`` records any meter's power to a CSV that ``replay`` plays back.
``registry.get_power_meter("auto")`` picks one; ``device_profiles`` loads the sourced device figures
in ``devices/profiles/*.yaml``. See docs/devices.md.
"""

from exitflow.devices.base import PowerMeter
from exitflow.devices.cpu_power import describe_host, estimate_cpu_power
from exitflow.devices.device_profiles import (
    DeviceProfile,
    ProfileError,
    available_profiles,
    load_power_profile,
)
from exitflow.devices.errors import DeviceError
from exitflow.devices.host import HostInfo, detect_host
from exitflow.devices.measurement import Measurement
from exitflow.devices.registry import (
    METER_NAMES,
    MeterOptions,
    ProbeResult,
    devices_report,
    get_power_meter,
    probe_meters,
)
from exitflow.devices.trace import TraceRecorder, TraceRow, TraceSummary, record_trace

__all__ = [
    "METER_NAMES",
    "DeviceError",
    "DeviceProfile",
    "HostInfo",
    "Measurement",
    "MeterOptions",
    "PowerMeter",
    "ProbeResult",
    "ProfileError",
    "TraceRecorder",
    "TraceRow",
    "TraceSummary",
    "available_profiles",
    "describe_host",
    "detect_host",
    "devices_report",
    "estimate_cpu_power",
    "get_power_meter",
    "load_power_profile",
    "probe_meters",
    "record_trace",
]
