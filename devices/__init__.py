"""Stage 1 of the data flow: power meters, measurement windows and device profiles.

``devices`` imports nothing else of exitflow.

One interface, :class:`PowerMeter` (``begin_window(name)`` / ``end_window(name) -> Measurement``,
overlapping windows, ``close()`` / ``with``), implemented per source: ``nvml`` (NVIDIA GPUs),
``rapl`` (powercap counters), ``jetson`` (INA3221 rails), ``psutil_meter`` (CPU-time estimate),
``replay`` (recorded trace on a virtual clock), ``mac_model`` (MACs x pJ/MAC), ``null``.
``registry.get_power_meter("auto")`` picks one; ``device_profiles`` loads the sourced device figures
in ``devices/profiles/*.yaml``. See docs/devices.md.
"""

from exitflow.devices.base import PowerMeter
from exitflow.devices.device_profiles import DeviceProfile, ProfileError, available_profiles, load_profile
from exitflow.devices.errors import DeviceError
from exitflow.devices.measurement import Measurement
from exitflow.devices.registry import METER_NAMES, MeterOptions, ProbeResult, get_power_meter, probe_meters

__all__ = [
    "METER_NAMES",
    "DeviceError",
    "DeviceProfile",
    "Measurement",
    "MeterOptions",
    "PowerMeter",
    "ProbeResult",
    "ProfileError",
    "available_profiles",
    "get_power_meter",
    "load_profile",
    "probe_meters",
]
