"""Intel/AMD RAPL energy counters through the Linux powercap sysfs tree.

Zones are the ``intel-rapl:*`` entries of ``/sys/class/powercap`` (``intel-rapl:0`` = package 0,
``intel-rapl:0:0`` = its core plane, ``intel-rapl:0:2`` = its DRAM, ...); each has a ``name`` and a
monotonically increasing ``energy_uj`` counter that wraps.

Wraparound convention: the counter takes the values ``0 .. max_energy_range_uj`` and steps from
``max_energy_range_uj`` back to 0, i.e. it counts modulo ``max_energy_range_uj + 1``. So between two
reads, ``delta = new - old`` and a negative delta means exactly one wrap:
``delta += max_energy_range_uj + 1``. (The kernel converts a 32-bit count of hardware energy units
into uJ, so the true modulus is ``max_energy_range_uj`` plus one energy unit, 15-61 uJ; the error is
at most one unit per wrap, i.e. below 1e-9 of the ~262 kJ between wraps.) A background poller reads
every counter every ``poll_interval_s`` (default 1 s, far below the minutes a wrap takes even at
several hundred watts) and accumulates the deltas, so a window may contain any number of wraps.
More than one wrap between two polls cannot be detected.

When ``max_energy_range_uj`` cannot be read, a negative delta cannot be corrected exactly: the
meter then counts only the energy since the counter passed zero (the new value), a lower bound,
marks the window ``estimated=True`` and adds a note. Energy is never negative.

Energy in the window total: every ``package-*`` zone plus every ``dram`` zone (DRAM is not part of
the package domain); ``core``/``uncore`` planes lie inside their package and appear only in
``rails``. Without package zones the total falls back to ``psys`` (whole SoC) if present.
"""

from __future__ import annotations

import glob
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from exitflow.devices.base import PowerMeter
from exitflow.devices.errors import DeviceError
from exitflow.devices.measurement import Measurement, make_measurement
from exitflow.devices.sampler import PeriodicThread
from exitflow.devices.sysfs import SysfsFile, read_text

DEFAULT_RAPL_ROOT = "/sys/class/powercap"
_PERMISSION_FIX = (
    "RAPL counters are readable by root only on most kernels; run as root, or grant read access with "
    "`sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`, or set power.meter: psutil"
)


@dataclass
class RaplZone:
    """One powercap zone and its accumulated energy (all integers in uJ, so sums are exact)."""

    key: str
    path: str
    counter: SysfsFile
    max_range_uj: int | None
    in_total: bool
    last_uj: int = 0
    total_uj: int = 0
    wraps: int = 0
    unknown_wraps: int = 0
    problems: list[str] = field(default_factory=list)


def _zone_sort_key(path: str) -> tuple[int, ...]:
    suffix = os.path.basename(path).split(":", 1)[1]
    return tuple(int(p) if p.isdigit() else 0 for p in suffix.split(":"))


class RaplMeter(PowerMeter):
    """Energy from RAPL ``energy_uj`` counters with exact wraparound handling.

    Args:
        root: The powercap folder (``/sys/class/powercap``; tests pass a fake tree).
        poll_interval_s: Period of the background poller in seconds.
        start_poller: Start the background poller thread. Tests pass ``False`` and call
            :meth:`poll` between fake counter updates to drive it deterministically.
        clock: Monotonic seconds (see :class:`~devices.base.PowerMeter`).

    Raises:
        DeviceError: No ``intel-rapl:*`` zone, or ``energy_uj`` not readable (with the fix).
    """

    kind = "rapl"

    def __init__(
        self,
        root: str | Path = DEFAULT_RAPL_ROOT,
        poll_interval_s: float = 1.0,
        start_poller: bool = True,
        clock=None,
    ):
        super().__init__(clock)
        self.root = str(root)
        self._lock = threading.Lock()
        self.zones = self._open_zones()
        self.total_rule = self._choose_total()
        for zone in self.zones:
            zone.last_uj = self._read_zone(zone)
        self._poller: PeriodicThread | None = None
        if start_poller:
            self._poller = PeriodicThread(self.poll, poll_interval_s, name="exitflow-rapl-poller")
            self._poller.start()

    # -- discovery ---------------------------------------------------------------------------
    def _open_zones(self) -> list[RaplZone]:
        paths = sorted(glob.glob(os.path.join(self.root, "intel-rapl:*")), key=_zone_sort_key)
        if not paths:
            raise DeviceError(
                f"no RAPL zones (intel-rapl:*) under {self.root}; this CPU or kernel exposes no RAPL "
                "(needs the intel_rapl_msr module on Intel/AMD x86 Linux); set power.meter: psutil"
            )
        names: dict[str, str] = {}
        zones: list[RaplZone] = []
        for path in paths:
            base = os.path.basename(path)
            try:
                name = read_text(os.path.join(path, "name"))
            except OSError:
                name = base
            names[base] = name
            parent = base.rsplit(":", 1)[0]
            key = f"{names[parent]}/{name}" if parent in names else name
            try:
                counter = SysfsFile(os.path.join(path, "energy_uj"))
            except PermissionError as e:
                raise DeviceError(
                    f"cannot read {path}/energy_uj (permission denied). {_PERMISSION_FIX}"
                ) from e
            except OSError as e:
                raise DeviceError(f"cannot open {path}/energy_uj: {e}. {_PERMISSION_FIX}") from e
            zone = RaplZone(key=key, path=path, counter=counter, max_range_uj=None, in_total=False)
            try:
                zone.max_range_uj = int(read_text(os.path.join(path, "max_energy_range_uj")))
                if zone.max_range_uj <= 0:
                    raise ValueError(f"max_energy_range_uj={zone.max_range_uj} is not positive")
            except (OSError, ValueError) as e:
                zone.max_range_uj = None
                zone.problems.append(
                    f"{key}: max_energy_range_uj unreadable ({e}); a counter wrap cannot be corrected "
                    f"exactly and yields a lower bound marked estimated. {_PERMISSION_FIX}"
                )
            zones.append(zone)
        return zones

    def _choose_total(self) -> str:
        packages = [z for z in self.zones if z.key.split("/")[-1].startswith("package")]
        drams = [z for z in self.zones if z.key.split("/")[-1] == "dram"]
        if packages:
            for z in packages + drams:
                z.in_total = True
            return "sum of package and dram zones"
        psys = [z for z in self.zones if z.key == "psys"]
        chosen = psys or [z for z in self.zones if "/" not in z.key]
        for z in chosen:
            z.in_total = True
        return "psys zone" if psys else "sum of top-level zones (no package zone found)"

    # -- reading -----------------------------------------------------------------------------
    def _read_zone(self, zone: RaplZone) -> int:
        try:
            return zone.counter.read_int()
        except PermissionError as e:
            raise DeviceError(
                f"cannot read {zone.path}/energy_uj (permission denied). {_PERMISSION_FIX}"
            ) from e
        except (OSError, ValueError) as e:
            raise DeviceError(
                f"reading {zone.path}/energy_uj failed: {e}; check that the intel_rapl driver is "
                "still loaded, or set power.meter: psutil"
            ) from e

    def poll(self) -> None:
        """Read every counter once and accumulate the deltas (one negative delta = one wrap)."""
        with self._lock:
            for zone in self.zones:
                try:
                    raw = zone.counter.read_int()
                except (OSError, ValueError):
                    raw = self._read_zone(zone)  # retry once; raises a DeviceError with the fix
                delta = raw - zone.last_uj
                if delta < 0:
                    if zone.max_range_uj is not None:
                        delta += zone.max_range_uj + 1
                        zone.wraps += 1
                    else:
                        delta = raw
                        zone.unknown_wraps += 1
                zone.total_uj += delta
                zone.last_uj = raw

    def _snapshot(self) -> tuple[float, tuple[int, ...], int]:
        if self._poller is not None and self._poller.error is not None:
            raise DeviceError(f"the RAPL poller stopped: {self._poller.error}") from self._poller.error
        self.poll()
        t_s = self._clock()
        return t_s, tuple(z.total_uj for z in self.zones), sum(z.unknown_wraps for z in self.zones)

    def _measure(self, name: str, start, end) -> Measurement:
        t0, uj0, unknown0 = start
        t1, uj1, unknown1 = end
        total_uj = 0
        rails = {}
        for zone, a, b in zip(self.zones, uj0, uj1, strict=True):
            rails[zone.key] = (b - a) / 1000.0
            if zone.in_total:
                total_uj += b - a
        notes: tuple[str, ...] = ()
        if unknown1 > unknown0:
            notes = (
                f"{unknown1 - unknown0} counter wrap(s) with unknown max_energy_range_uj: energy is a lower bound",
            )
        return make_measurement(
            name,
            total_uj / 1000.0,
            t1 - t0,
            source="rapl",
            estimated=unknown1 > unknown0,
            rails=rails,
            notes=notes,
        )

    def describe(self) -> str:
        lines = [
            f"rapl: RAPL energy counters under {self.root} ({len(self.zones)} zones); "
            f"window total = {self.total_rule}",
            "  zones: " + ", ".join(f"{z.key} (max {z.max_range_uj} uJ)" for z in self.zones),
            "  wraps handled as delta += max_energy_range_uj + 1 per negative delta; poller keeps every "
            "delta below one wrap",
        ]
        lines += [f"  warning: {p}" for z in self.zones for p in z.problems]
        return "\n".join(lines)

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
        for zone in self.zones:
            zone.counter.close()
        super().close()
