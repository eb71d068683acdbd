"""NVIDIA Jetson on-board INA3221 power monitors, integrated by a background sampler.

Two sysfs layouts exist (``root`` defaults to ``/sys/bus/i2c/drivers``):

* **new** (JetPack 5+, mainline ``ina3221`` hwmon driver):
  ``ina3221/<bus-addr>/hwmon/hwmon<K>/in<N>_label`` names channel N, ``curr<N>_input`` is its
  current in mA, ``in<N>_input`` its bus voltage in mV, and where present ``power<N>_input`` its
  power in uW (the hwmon unit). Power = mA x mV / 1000 (mW), or ``power<N>_input / 1000``.
* **old** (JetPack 4, L4T ``ina3221x`` IIO driver): ``ina3221x/<bus-addr>/iio:device<K>/``
  with ``rail_name_<N>``, ``in_power<N>_input`` (mW), ``in_current<N>_input`` (mA) and
  ``in_voltage<N>_input`` (mV).

The window total is the module input rail ``VDD_IN`` (Orin, TX1/TX2), ``POM_5V_IN`` (Nano) or
``5V_IN`` (Xavier NX); every rail's own energy is kept in ``Measurement.rails``. The sampler reads
all rails at ``sample_hz`` (>= 20 Hz) and integrates with the trapezoidal rule; each window edge
takes one extra sample so the integral ends exactly at the edge.
"""

from __future__ import annotations

import glob
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from exitflow.devices.base import PowerMeter
from exitflow.devices.errors import DeviceError
from exitflow.devices.measurement import Measurement, make_measurement
from exitflow.devices.sampler import PeriodicThread, PowerIntegrator
from exitflow.devices.sysfs import SysfsFile, read_text

DEFAULT_JETSON_ROOT = "/sys/bus/i2c/drivers"
TOTAL_RAIL_NAMES = ("VDD_IN", "POM_5V_IN", "5V_IN")
MIN_SAMPLE_HZ = 20.0
_SENSOR_GLOBS = ("ina3221/*/hwmon/hwmon*", "ina3221x/*/iio:device*", "ina3221x/*/iio_device")
_FIX = (
    "check that this is a Jetson with INA3221 monitors (JetPack 4-6) and that the files are readable "
    "(run as root if not), or set power.meter: psutil"
)


@dataclass
class JetsonRail:
    """How to read one rail's power in mW: a direct power file or current x voltage."""

    name: str
    power: SysfsFile | None = None
    power_scale: float = 1.0  # multiply the file value by this to get mW
    current_ma: SysfsFile | None = None
    voltage_mv: SysfsFile | None = None

    def read_power_mw(self) -> float:
        if self.current_ma is not None and self.voltage_mv is not None:
            return self.current_ma.read_int() * self.voltage_mv.read_int() / 1000.0
        if self.power is None:
            raise OSError(f"rail {self.name} has neither a power file nor current and voltage files")
        return self.power.read_int() * self.power_scale

    def close(self) -> None:
        for f in (self.power, self.current_ma, self.voltage_mv):
            if f is not None:
                f.close()


def _open_if(path: str) -> SysfsFile | None:
    return SysfsFile(path) if os.path.exists(path) else None


def _rails_new_layout(folder: str) -> list[JetsonRail]:
    rails = []
    for label_path in sorted(glob.glob(os.path.join(folder, "in*_label"))):
        match = re.fullmatch(r"in(\d+)_label", os.path.basename(label_path))
        if match is None:
            continue
        n = match.group(1)
        name = read_text(label_path)
        curr = _open_if(os.path.join(folder, f"curr{n}_input"))
        volt = _open_if(os.path.join(folder, f"in{n}_input"))
        power = _open_if(os.path.join(folder, f"power{n}_input"))
        if name.upper() == "NC" or (power is None and (curr is None or volt is None)):
            for f in (curr, volt, power):
                if f is not None:
                    f.close()
            continue  # unconnected channel or the "sum of shunt voltages" pseudo-channel
        if curr is not None and volt is not None and power is not None:
            power.close()
            power = None
        rails.append(JetsonRail(name, power=power, power_scale=1e-3, current_ma=curr, voltage_mv=volt))
    return rails


def _rails_old_layout(folder: str) -> list[JetsonRail]:
    rails = []
    for name_path in sorted(glob.glob(os.path.join(folder, "rail_name_*"))):
        n = name_path.rsplit("_", 1)[1]
        name = read_text(name_path)
        power = _open_if(os.path.join(folder, f"in_power{n}_input"))
        curr = volt = None
        if power is None:
            curr = _open_if(os.path.join(folder, f"in_current{n}_input"))
            volt = _open_if(os.path.join(folder, f"in_voltage{n}_input"))
            if curr is None or volt is None:
                continue
        rails.append(JetsonRail(name, power=power, power_scale=1.0, current_ma=curr, voltage_mv=volt))
    return rails


def find_jetson_rails(root: str | Path = DEFAULT_JETSON_ROOT) -> tuple[list[JetsonRail], str]:
    """Discover INA3221 rails under ``root`` in either layout.

    Returns:
        The rails (duplicate names get a ``#2`` suffix) and the layout found (``"hwmon"``/``"iio"``).

    Raises:
        DeviceError: Nothing found or not readable.
    """
    root = str(root)
    folders = [root] + [
        p for pattern in _SENSOR_GLOBS for p in sorted(glob.glob(os.path.join(root, pattern)))
    ]
    rails: list[JetsonRail] = []
    layouts = set()
    try:
        for folder in folders:
            new = _rails_new_layout(folder)
            old = _rails_old_layout(folder)
            layouts.update(["hwmon"] if new else [])
            layouts.update(["iio"] if old else [])
            rails += new + old
    except PermissionError as e:
        raise DeviceError(f"cannot read INA3221 files under {root}: {e}; {_FIX}") from e
    except OSError as e:
        raise DeviceError(f"cannot open INA3221 files under {root}: {e}; {_FIX}") from e
    if not rails:
        raise DeviceError(
            f"no INA3221 power rails under {root} (looked for in*_label and rail_name_*); {_FIX}"
        )
    seen: dict[str, int] = {}
    for rail in rails:
        seen[rail.name] = seen.get(rail.name, 0) + 1
        if seen[rail.name] > 1:
            rail.name = f"{rail.name}#{seen[rail.name]}"
    return rails, "+".join(sorted(layouts))


class JetsonMeter(PowerMeter):
    """Energy from Jetson INA3221 rails, integrated at ``sample_hz``.

    Args:
        root: Folder holding ``ina3221``/``ina3221x`` driver entries (or one sensor folder).
        sample_hz: Sampling rate of the background integrator, at least 20 Hz.
        start_sampler: Start the background thread; tests pass ``False`` and call :meth:`sample`.
        clock: Monotonic seconds.

    Raises:
        ValueError: ``sample_hz`` below 20.
        DeviceError: No rails found or unreadable.
    """

    kind = "jetson"

    def __init__(
        self,
        root: str | Path = DEFAULT_JETSON_ROOT,
        sample_hz: float = 50.0,
        start_sampler: bool = True,
        clock=None,
    ):
        if not sample_hz >= MIN_SAMPLE_HZ:
            raise ValueError(
                f"sample_hz must be >= {MIN_SAMPLE_HZ} for the Jetson meter, got {sample_hz}; "
                "raise power.sample_hz"
            )
        super().__init__(clock)
        self.root = str(root)
        self.sample_hz = float(sample_hz)
        self.rails, self.layout = find_jetson_rails(root)
        names = [r.name for r in self.rails]
        self.total_rail = next((n for n in TOTAL_RAIL_NAMES if n in names), None)
        self._lock = threading.Lock()
        self._integrator = PowerIntegrator(names)
        self.sample()
        self._sampler: PeriodicThread | None = None
        if start_sampler:
            self._sampler = PeriodicThread(self.sample, 1.0 / sample_hz, name="exitflow-jetson-sampler")
            self._sampler.start()

    def read_power_mw(self) -> dict[str, float]:
        """Instantaneous power of every rail in mW."""
        try:
            return {rail.name: rail.read_power_mw() for rail in self.rails}
        except (OSError, ValueError) as e:
            raise DeviceError(f"reading INA3221 rails under {self.root} failed: {e}; {_FIX}") from e

    def sample(self) -> None:
        """Take one sample of every rail and add it to the integral."""
        with self._lock:
            power_mw = self.read_power_mw()
            self._integrator.add(self._clock(), power_mw)

    def _snapshot(self) -> tuple[float, dict[str, float]]:
        if self._sampler is not None and self._sampler.error is not None:
            raise DeviceError(f"the Jetson sampler stopped: {self._sampler.error}") from self._sampler.error
        with self._lock:
            t_s = self._clock()
            self._integrator.add(t_s, self.read_power_mw())
            return t_s, self._integrator.energy_mj()

    def _measure(self, name: str, start, end) -> Measurement:
        t0, e0 = start
        t1, e1 = end
        rails = {rail: e1[rail] - e0[rail] for rail in e1}
        notes: tuple[str, ...] = ()
        if self.total_rail is not None:
            total = rails[self.total_rail]
            source = "jetson:ina3221"
        else:
            total = sum(rails.values())
            source = "jetson:ina3221(sum of rails)"
            notes = ("no VDD_IN/POM_5V_IN rail: total is the sum of all rails, which may overlap",)
        return make_measurement(name, total, t1 - t0, source, estimated=False, rails=rails, notes=notes)

    def describe(self) -> str:
        total = self.total_rail or "sum of all rails (no VDD_IN / POM_5V_IN / 5V_IN rail found)"
        return "\n".join(
            [
                f"jetson: INA3221 rails under {self.root} ({self.layout} layout), sampled at {self.sample_hz:g} Hz "
                "and integrated with the trapezoidal rule",
                f"  rails: {', '.join(r.name for r in self.rails)}; window total = {total}",
            ]
        )

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        for rail in self.rails:
            rail.close()
        super().close()
