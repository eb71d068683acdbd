"""A CPU-time energy *estimate* for machines without a readable power counter.

Model (all figures from a device profile: ``"host"``, the default, is built for the CPU detected
on this machine by :mod:`devices.cpu_power`; a shipped name such as ``x86-server`` uses that
device's figures, see ``devices/profiles/``)::

    energy_mj = active_power_per_core_mw * busy_cpu_s + idle_share * idle_power_mw * duration_s

The first term is the window's dynamic (attributable) energy, the second its idle part: the
meter's idle floor is ``idle_share x idle_power_mw``. A shipped CPU profile that does not describe
this host's CPU is still used as asked, but ``describe()`` and every window's ``notes`` say so.

``busy_cpu_s`` is the CPU time spent in the window: of this process (``scope="process"``, user +
system time of all its threads, via ``time.process_time()``; or of process ``pid`` via psutil), or
of the whole machine (``scope="system"``: all non-idle, non-iowait time from ``psutil.cpu_times()``).
It is capped at ``cores x duration_s``. ``idle_share`` is the fraction of the device's idle power
charged to the window (1.0: the measured work owns the device, the usual case on an edge board;
use 1/N when N jobs share it, 0 to count only the extra power of the work). Frequency scaling,
memory and accelerator power are not modelled, so the result is always ``estimated=True``.
"""

from __future__ import annotations

import os
import time
from typing import Literal

import psutil

from exitflow.devices.base import PowerMeter
from exitflow.devices.cpu_power import profile_matches_host, resolve_profile
from exitflow.devices.device_profiles import DeviceProfile
from exitflow.devices.errors import DeviceError
from exitflow.devices.host import HostInfo, detect_host
from exitflow.devices.measurement import Measurement, make_measurement

_PROC_STAT = "/proc/stat"


class PsutilMeter(PowerMeter):
    """Energy estimated from CPU time and a device profile.

    Args:
        profile: ``"host"`` (figures for the detected CPU), a shipped profile name or path, or a
            profile object; needs ``idle_power_w`` and ``active_power_per_core_w``.
        scope: ``"process"`` or ``"system"`` CPU time.
        pid: With ``scope="process"``, another process to follow (default: this one).
        idle_share: Fraction of idle power charged to the window, in [0, 1].
        clock: Monotonic seconds.
        host: The host to estimate for / compare the profile with (default: detected).

    Raises:
        ValueError: Bad ``scope`` or ``idle_share``.
        DeviceError: The profile lacks a needed figure, or ``pid`` does not exist.
    """

    kind = "psutil"
    estimating = True

    def __init__(
        self,
        profile: str | DeviceProfile = "host",
        scope: Literal["process", "system"] = "process",
        pid: int | None = None,
        idle_share: float = 1.0,
        clock=None,
        host: HostInfo | None = None,
    ):
        super().__init__(clock)
        if scope not in ("process", "system"):
            raise ValueError(f"scope must be 'process' or 'system', got {scope!r}")
        if not 0.0 <= idle_share <= 1.0:
            raise ValueError(f"idle_share must be in [0, 1], got {idle_share!r}")
        self.host = host or detect_host()
        self.profile = resolve_profile(profile, self.host)
        purpose = "the psutil CPU-time estimator"
        self.idle_power_mw = 1000.0 * self.profile.require("idle_power_w", purpose)
        self.active_power_per_core_mw = 1000.0 * self.profile.require("active_power_per_core_w", purpose)
        self.cores = float(self.profile.value("cores") or psutil.cpu_count() or 1)
        self.notes: tuple[str, ...] = ()
        if self.profile.kind in ("cpu", "soc") and not profile_matches_host(self.profile, self.host):
            self.notes = (
                f"profile {self.profile.name!r} ({self.profile.description}) is not this host's CPU "
                f"({self.host.model_name or 'unknown'}, {self.host.usable_cpus:g} CPUs"
                f"{', VM' if self.host.vm else ''}); its figures are used as configured - set "
                "power.device_profile: host for an estimate of this host",
            )
        self.scope = scope
        self.idle_share = float(idle_share)
        self.pid = pid
        self._process = None
        if pid is not None:
            try:
                self._process = psutil.Process(pid)
            except psutil.Error as e:
                raise DeviceError(f"cannot follow process {pid}: {e}; pass an existing pid or None") from e
        self.source = f"psutil:estimate({self.profile.name})"
        self.set_idle_floor(
            self.idle_share * self.idle_power_mw,
            f"model: idle_share {self.idle_share:g} x idle_power_w of profile {self.profile.name!r} (estimate)",
        )
        self._proc_stat_fd: int | None = None
        if scope == "system" and os.path.exists(_PROC_STAT):
            self._proc_stat_fd = os.open(_PROC_STAT, os.O_RDONLY)
            self._ticks_per_s = float(os.sysconf("SC_CLK_TCK"))

    def _system_busy_s(self) -> float:
        """Busy (user + nice + system + irq + softirq) CPU seconds of the whole machine.

        On Linux the first line of ``/proc/stat`` is re-read through a kept file descriptor
        (about 3x faster than ``psutil.cpu_times()``); elsewhere psutil is used.
        """
        if self._proc_stat_fd is not None:
            fields = os.pread(self._proc_stat_fd, 256, 0).split(b"\n", 1)[0].split()
            user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
            return (user + nice + system + irq + softirq) / self._ticks_per_s
        t = psutil.cpu_times()
        return (
            t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        )

    def _cpu_s(self) -> float:
        if self.scope == "system":
            return self._system_busy_s()
        if self._process is None:
            return time.process_time()
        try:
            t = self._process.cpu_times()
        except psutil.Error as e:
            raise DeviceError(f"cannot read CPU times of process {self.pid}: {e}") from e
        return t.user + t.system

    def _snapshot(self) -> tuple[float, float]:
        return self._clock(), self._cpu_s()

    def _measure(self, name: str, start, end) -> Measurement:
        t0, c0 = start
        t1, c1 = end
        duration_s = max(0.0, t1 - t0)
        busy_s = min(max(0.0, c1 - c0), self.cores * duration_s)
        active_mj = self.active_power_per_core_mw * busy_s
        idle_mj = self.idle_share * self.idle_power_mw * duration_s
        rails = {"cpu_active": active_mj, "idle_share": idle_mj}
        return make_measurement(
            name,
            active_mj + idle_mj,
            duration_s,
            self.source,
            True,
            rails,
            self.notes,
            self.idle_floor_mw,
            self.idle_floor_basis,
        )

    def close(self) -> None:
        if self._proc_stat_fd is not None:
            os.close(self._proc_stat_fd)
            self._proc_stat_fd = None
        super().close()

    def describe(self) -> str:
        p = self.profile
        who = (
            "this process"
            if self.scope == "process" and self.pid is None
            else (f"process {self.pid}" if self.scope == "process" else "the whole system")
        )
        h = self.host
        lines = [
            f"psutil: ESTIMATE from CPU time of {who} and device profile {p.name!r} ({p.description})",
            f"  host detected: {h.model_name or 'unknown CPU'}; {h.usable_cpus:g} of {h.logical_cpus} CPUs usable; "
            f"{'VM (' + ', '.join(h.vm_evidence) + ')' if h.vm else 'not a VM'}",
            "  energy_mj = active_power_per_core_mw x busy_cpu_s + idle_share x idle_power_mw x duration_s",
            "  dynamic (attributable) = the first term; idle = the second",
            f"  active_power_per_core_mw = {self.active_power_per_core_mw:g}; idle_power_mw = {self.idle_power_mw:g}; "
            f"idle_share = {self.idle_share:g}; busy CPU capped at {self.cores:g} cores",
            f"  {p.cite('active_power_per_core_w')}",
            f"  {p.cite('idle_power_w')}",
            "  not modelled: frequency scaling, memory and accelerator power, other processes (process scope)",
        ]
        lines += [f"  warning: {n}" for n in self.notes]
        return "\n".join(lines)
