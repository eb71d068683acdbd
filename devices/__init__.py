"""Stage 1 of the data flow: power meters, measurement windows and device profiles.

``devices`` imports nothing else of exitflow.
"""

from devices.base import PowerMeter
from devices.errors import DeviceError
from devices.measurement import Measurement
from devices.profiles import DeviceProfile, ProfileError, available_profiles, load_profile
from devices.registry import METER_NAMES, MeterOptions, ProbeResult, get_power_meter, probe_meters

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
