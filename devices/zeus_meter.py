"""GPU(s) + CPU package + DRAM (+ Jetson / Apple SoC) energy in one window, through Zeus.

`Zeus <https://ml.energy/zeus>`_ (PyPI ``zeus``, ``pip install 'exitflow[zeus]'``) reads every
energy source of the machine behind one ``begin_window`` / ``end_window`` pair:
``nvmlDeviceGetTotalEnergyConsumption`` per NVIDIA GPU (or AMD SMI), RAPL ``energy_uj`` per CPU
package with its DRAM sub-zone (wraparounds tracked by a polling process; unprivileged access
through the ``zeusd`` daemon), and the Jetson / Apple SoC rails. It synchronises CUDA at both
edges (``sync_execution_with="torch"``), so queued kernels are charged to the right window.
:class:`ZeusMeter` wraps ``zeus.monitor.ZeusMonitor`` behind :class:`~devices.base.PowerMeter`:

* ``rails`` (mJ): ``gpu<i>`` per GPU, ``cpu<i>`` per CPU package, ``dram<i>`` per package's DRAM,
  ``soc/<field>`` per SoC metric (Jetson: ``soc/cpu_energy``, ``soc/gpu_energy``,
  ``soc/total_energy``).
* ``energy_mj`` = sum of GPUs + CPU packages + DRAM (+ the SoC's ``total_energy_mj`` where it
  reports one, else the sum of its metrics, flagged). Zeus's ``cpu_energy`` is the RAPL package
  zone, which excludes DRAM, so nothing is counted twice.
* ``source`` = ``zeus:`` + the parts measured (``zeus:gpu+cpu+dram``); ``notes`` name every part
  Zeus could not measure here and why (e.g. RAPL not readable), and windows shorter than the NVML
  counter's update period, whose GPU energy Zeus approximates by instant power x time
  (``approx_instant_energy``).

Zeus units: ``Measurement.time`` s, ``gpu_energy`` / ``cpu_energy`` / ``dram_energy`` J (x 1000
here), SoC fields mJ. Zeus is imported on first use, not at module import: it pulls in pandas,
pydantic and httpx (about a second), and every ``exitflow`` command imports the meter registry.
Tests replace :data:`ZeusMonitor` in this module with a fake.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from exitflow.devices.base import PowerMeter
from exitflow.devices.errors import DeviceError
from exitflow.devices.measurement import Measurement, make_measurement, split_idle

#: ``zeus.monitor.ZeusMonitor``, bound on first use by :func:`load_zeus_monitor` (tests set it).
ZeusMonitor: Any = None

_INSTALL = "install it with `pip install 'exitflow[zeus]'` (PyPI package zeus), or set power.meter: auto"
#: Below this window length the NVML counter (updated every ~20-100 ms) may not have moved.
SHORT_WINDOW_S = 0.1


def load_zeus_monitor() -> Any:
    """The ``ZeusMonitor`` class (imported once).

    Raises:
        DeviceError: Zeus is not installed or fails to import, with how to fix it.
    """
    global ZeusMonitor
    if ZeusMonitor is None:
        try:
            from zeus.monitor import ZeusMonitor as monitor_cls  # noqa: PLC0415 - optional, heavy import
        except ImportError as e:
            raise DeviceError(f"zeus is not installed ({e}); {_INSTALL}") from e
        except Exception as e:  # noqa: BLE001 - any failure of a vendor import is a DeviceError
            raise DeviceError(
                f"zeus failed to import ({type(e).__name__}: {e}); reinstall it or {_INSTALL}"
            ) from e
        ZeusMonitor = monitor_cls
    return ZeusMonitor


def rapl_problem(root: str = "/sys/class/powercap") -> str:
    """Why RAPL is not readable here (one sentence), or ``""`` when it is."""
    zone = os.path.join(root, "intel-rapl:0", "energy_uj")
    if not os.path.exists(zone):
        return f"no RAPL zone under {root} (not Intel/AMD x86 Linux, or a VM that hides RAPL)"
    if not os.access(zone, os.R_OK):
        return (
            f"{zone} is readable by root only; run as root, `sudo chmod o+r "
            "/sys/class/powercap/intel-rapl:*/energy_uj`, or run Zeus's zeusd daemon"
        )
    return ""


class ZeusMeter(PowerMeter):
    """Energy of GPUs, CPU packages, DRAM and SoC rails in one window, measured by Zeus.

    Args:
        gpu_indices: GPUs to measure (CUDA indices after ``CUDA_VISIBLE_DEVICES``); ``None`` = all.
        cpu_indices: CPU packages to measure; ``None`` = all Zeus can read, ``[]`` = none.
        approx_instant_energy: Let Zeus approximate a GPU's energy in windows too short for the
            NVML counter by instant power x time (else such windows read 0 J).
        sync_execution: Synchronise CUDA at window edges (Zeus calls ``torch.cuda.synchronize``).
        clock: Monotonic seconds (used only by the trace recorder; durations come from Zeus).

    Raises:
        DeviceError: Zeus missing or failing, or nothing to measure on this machine (the message
            says which part is missing and how to fix it).
    """

    kind = "zeus"

    def __init__(
        self,
        gpu_indices: Sequence[int] | None = None,
        cpu_indices: Sequence[int] | None = None,
        approx_instant_energy: bool = True,
        sync_execution: bool = True,
        clock=None,
    ):
        super().__init__(clock)
        monitor_cls = load_zeus_monitor()
        try:
            self.monitor = monitor_cls(
                gpu_indices=None if gpu_indices is None else list(gpu_indices),
                cpu_indices=None if cpu_indices is None else list(cpu_indices),
                approx_instant_energy=approx_instant_energy,
                sync_execution_with="torch",
            )
        except Exception as e:  # noqa: BLE001 - Zeus raises RuntimeError, ZeusBaseError, NVML errors ...
            raise DeviceError(f"Zeus could not start ({type(e).__name__}: {e}); {_INSTALL}") from e
        self.sync_execution = sync_execution
        self.approx_instant_energy = approx_instant_energy
        self.gpu_indices = list(getattr(self.monitor, "gpu_indices", []) or [])
        self.cpu_indices = list(getattr(self.monitor, "cpu_indices", []) or [])
        self.soc_present = bool(getattr(self.monitor, "soc_is_present", False))
        missing = []
        if not self.gpu_indices:
            missing.append("GPU: none found (Zeus needs an NVIDIA GPU with NVML or an AMD GPU with AMD SMI)")
        if not self.cpu_indices:
            missing.append(f"CPU/DRAM: {rapl_problem() or 'RAPL not used (cpu_indices=[])'}")
        if not (self.gpu_indices or self.cpu_indices or self.soc_present):
            raise DeviceError(
                "Zeus found nothing to measure here: " + "; ".join(missing) + "; SoC: not a Jetson or Apple "
                "silicon. Fix one of these, or set power.meter: auto to fall back to the psutil estimate"
            )
        self.coverage_notes = tuple(f"not measured by zeus - {m}" for m in missing)
        parts = (
            ["gpu"] * bool(self.gpu_indices)
            + ["cpu", "dram"] * bool(self.cpu_indices)
            + ["soc"] * self.soc_present
        )
        self.source = "zeus:" + "+".join(parts)
        self.gpu_names = {i: self._gpu_name(i) for i in self.gpu_indices}

    def _gpu_name(self, index: int) -> str:
        try:
            return str(self.monitor.gpus.get_name(index))
        except Exception:  # noqa: BLE001 - a name is cosmetic
            return "GPU"

    # -- windows: Zeus keeps the state, so begin/end are delegated ----------------------------
    def begin_window(self, name: str) -> None:
        """Open ``name`` on the Zeus monitor (see :meth:`PowerMeter.begin_window`)."""
        if self._closed:
            raise DeviceError("zeus meter is closed; create a new one with get_power_meter()")
        if name in self._windows:
            raise DeviceError(
                f"window {name!r} is already open on the zeus meter; call end_window({name!r}) first "
                "or give the new window a different name"
            )
        if self._edge_hook is not None:
            self._edge_hook("begin", name)
        self._zeus_begin(name, self.sync_execution)
        self._windows[name] = self._clock()

    def end_window(self, name: str) -> Measurement:
        """Close ``name`` and translate Zeus's measurement (see :meth:`PowerMeter.end_window`)."""
        if name not in self._windows:
            open_names = ", ".join(repr(n) for n in tuple(self._windows)) or "none"
            raise DeviceError(
                f"end_window({name!r}): no open window of that name on the zeus meter "
                f"(open windows: {open_names}); call begin_window({name!r}) first"
            )
        if self._edge_hook is not None:
            self._edge_hook("end", name)
        zm = self._zeus_end(name, self.sync_execution)
        del self._windows[name]
        return self._with_floor(self.translate(name, zm))

    def _rollover(self, name: str) -> tuple[Any, Measurement]:
        """End and reopen ``name`` (two Zeus calls, microseconds apart; no CUDA sync)."""
        if name not in self._windows:
            raise DeviceError(f"rollover_window({name!r}): no open window of that name on the zeus meter")
        zm = self._zeus_end(name, False)
        self._zeus_begin(name, False)
        self._windows[name] = self._clock()
        return None, self._with_floor(self.translate(name, zm))

    def _with_floor(self, m: Measurement) -> Measurement:
        if self.idle_floor_mw is None:
            return m
        return split_idle(m, self.idle_floor_mw, self.idle_floor_basis)

    def _zeus_begin(self, name: str, sync: bool) -> None:
        try:
            self.monitor.begin_window(f"exitflow/{name}", sync_execution=sync)
        except Exception as e:  # noqa: BLE001
            raise DeviceError(f"Zeus begin_window({name!r}) failed ({type(e).__name__}: {e})") from e

    def _zeus_end(self, name: str, sync: bool) -> Any:
        try:
            return self.monitor.end_window(f"exitflow/{name}", sync_execution=sync)
        except Exception as e:  # noqa: BLE001
            raise DeviceError(f"Zeus end_window({name!r}) failed ({type(e).__name__}: {e})") from e

    def translate(self, name: str, zm: Any) -> Measurement:
        """A Zeus ``Measurement`` (J, s; SoC in mJ) as an exitflow :class:`Measurement` (mJ)."""
        rails: dict[str, float] = {}
        for prefix, joules in (("gpu", zm.gpu_energy), ("cpu", zm.cpu_energy), ("dram", zm.dram_energy)):
            for index, value in (joules or {}).items():
                rails[f"{prefix}{index}"] = 1000.0 * float(value)
        soc_keys: list[str] = []
        soc = getattr(zm, "soc_energy", None)
        if soc is not None and dataclasses.is_dataclass(soc):
            for f in dataclasses.fields(soc):
                value = getattr(soc, f.name)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    key = f"soc/{f.name.removesuffix('_mj')}"
                    rails[key] = float(value)
                    soc_keys.append(key)
        notes = list(self.coverage_notes)
        negative = [k for k, v in rails.items() if v < 0]
        if negative:
            notes.append(f"negative readings clamped to 0 on {', '.join(negative)} (counter reset?)")
            rails = {k: max(0.0, v) for k, v in rails.items()}
        total_mj = sum(v for k, v in rails.items() if k not in soc_keys)
        if "soc/total_energy" in rails:
            total_mj += rails["soc/total_energy"]
        elif soc_keys:
            total_mj += sum(rails[k] for k in soc_keys)
            notes.append("SoC reports no total; its metrics were summed and may overlap")
        duration_s = float(zm.time)
        if self.gpu_indices and duration_s < SHORT_WINDOW_S:
            how = (
                "; Zeus approximated GPU energy as instant power x time" if self.approx_instant_energy else ""
            )
            notes.append(
                f"window shorter than {SHORT_WINDOW_S:g} s: the NVML energy counter may not have advanced{how}"
            )
        return make_measurement(name, total_mj, duration_s, self.source, False, rails, tuple(notes))

    # -- the abstract hooks are unused: Zeus keeps the window state ------------------------------
    def _snapshot(self) -> float:
        return self._clock()

    def _measure(self, name: str, start: Any, end: Any) -> Measurement:
        raise DeviceError("ZeusMeter measures through Zeus windows; use begin_window/end_window")

    def describe(self) -> str:
        gpus = ", ".join(f"gpu{i} ({n})" for i, n in self.gpu_names.items()) or "none"
        cpus = ", ".join(f"package {i} + its DRAM" for i in self.cpu_indices) or "none"
        soc = "; SoC rails" if self.soc_present else ""
        sync = "CUDA synchronised at window edges" if self.sync_execution else "CUDA not synchronised"
        short = "approximated by instant power x time" if self.approx_instant_energy else "may read 0"
        lines = [
            f"zeus: {self.source.removeprefix('zeus:')} in one window (GPUs: {gpus}; CPU: {cpus}{soc})",
            "  GPU: NVML total energy counter (Volta+; older GPUs: Zeus power polling); CPU/DRAM: RAPL "
            f"with wraparound tracking; {sync}",
            f"  short windows (< {SHORT_WINDOW_S:g} s): GPU energy {short}",
        ]
        lines += [f"  {n}" for n in self.coverage_notes]
        lines.append(f"  {self.describe_idle_floor()}")
        return "\n".join(lines)


__all__ = ["SHORT_WINDOW_S", "ZeusMeter", "load_zeus_monitor", "rapl_problem"]
