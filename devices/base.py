"""The ``PowerMeter`` interface: named, overlapping measurement windows over a cumulative reading.

Every meter keeps a *cumulative* state (energy counters, an integral of sampled power, CPU
seconds, a virtual clock). ``begin_window(name)`` stores a snapshot of that state under ``name``;
``end_window(name)`` takes a second snapshot and turns the difference into a
:class:`~devices.measurement.Measurement`. Windows with different names can therefore overlap or
nest freely, and a window costs two snapshots and two dict operations.

Idle floor: a meter may know the power its device draws when nothing runs (``idle_floor_mw``,
set by :meth:`PowerMeter.calibrate_idle`, :meth:`PowerMeter.set_idle_floor`, or by an estimating
meter from its model). Every window is then split into idle and dynamic (attributable) energy,
see :mod:`devices.measurement`.

Trace hook: a :class:`~devices.trace.TraceRecorder` attached to a meter cuts its trace at every
window edge, so a replay of the trace reproduces each window's energy (see docs/devices.md).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from exitflow.devices.errors import DeviceError
from exitflow.devices.measurement import Measurement, split_idle

_MISSING = object()


class WindowResult:
    """Holder filled by :meth:`PowerMeter.window` when the ``with`` block ends."""

    measurement: Measurement | None = None


class PowerMeter(ABC):
    """Measures energy over named windows; subclasses supply ``_snapshot`` and ``_measure``.

    Args:
        clock: Seconds as a float, monotonic; defaults to :func:`time.perf_counter`. Tests pass a
            fake clock to make sampled integrals exact.

    Use as a context manager (``with get_power_meter("auto") as meter:``) or call :meth:`close`.
    """

    #: Short name of the meter kind ("rapl", "nvml", ...), set by subclasses.
    kind: str = "meter"
    #: ``True`` for meters that model energy rather than read it (psutil, mac_model, replay).
    estimating: bool = False

    def __init__(self, clock: Callable[[], float] | None = None):
        self._clock: Callable[[], float] = clock or time.perf_counter
        self._windows: dict[str, Any] = {}
        self._closed = False
        #: Power the device draws with no work running, mW; ``None`` until known.
        self.idle_floor_mw: float | None = None
        #: Where :attr:`idle_floor_mw` came from.
        self.idle_floor_basis: str = ""
        #: While a trace recorder is attached: called as ``hook("begin" | "end", name)`` at every
        #: window edge *instead of* ``_snapshot()``; it cuts the trace and returns the snapshot it
        #: used, so the window and the trace share one reading (see devices.trace).
        self._edge_hook: Callable[[str, str], Any] | None = None

    # -- the public window API -------------------------------------------------------------
    def begin_window(self, name: str) -> None:
        """Open the window ``name``.

        Raises:
            DeviceError: If a window of that name is already open or the meter is closed.
        """
        if self._closed:
            raise DeviceError(f"{self.kind} meter is closed; create a new one with get_power_meter()")
        hook = self._edge_hook
        snapshot = self._snapshot() if hook is None else hook("begin", name)
        # Single dict operations are atomic under the GIL; windows are keyed by name, so two
        # threads only race here if they open the same name, which is already a caller error.
        if name in self._windows:
            raise DeviceError(
                f"window {name!r} is already open on the {self.kind} meter; call "
                f"end_window({name!r}) first or give the new window a different name"
            )
        self._windows[name] = snapshot

    def end_window(self, name: str) -> Measurement:
        """Close the window ``name`` and return what was spent since ``begin_window(name)``.

        Raises:
            DeviceError: If no window of that name is open.
        """
        hook = self._edge_hook
        snapshot = self._snapshot() if hook is None else hook("end", name)
        start = self._windows.pop(name, _MISSING)
        if start is _MISSING:
            open_names = ", ".join(repr(n) for n in tuple(self._windows)) or "none"
            raise DeviceError(
                f"end_window({name!r}): no open window of that name on the {self.kind} meter "
                f"(open windows: {open_names}); call begin_window({name!r}) first"
            )
        m = self._measure(name, start, snapshot)
        if self.idle_floor_mw is not None and m.idle_energy_mj is None and m.energy_mj is not None:
            m = split_idle(m, self.idle_floor_mw, self.idle_floor_basis)
        return m

    def rollover_window(self, name: str) -> Measurement:
        """End window ``name`` and reopen it at the same instant (one snapshot serves both).

        Consecutive rollovers therefore tile time without gaps: their energies add up exactly to
        one window over the whole span. Used by the trace recorder; no edge hook runs.

        Raises:
            DeviceError: If no window of that name is open.
        """
        return self._rollover(name)[1]

    def _rollover(self, name: str) -> tuple[Any, Measurement]:
        """:meth:`rollover_window` that also returns the snapshot it took (for the edge hook)."""
        snapshot = self._snapshot()
        start = self._windows.get(name, _MISSING)
        if start is _MISSING:
            raise DeviceError(
                f"rollover_window({name!r}): no open window of that name on the {self.kind} meter"
            )
        self._windows[name] = snapshot
        m = self._measure(name, start, snapshot)
        if self.idle_floor_mw is not None and m.idle_energy_mj is None and m.energy_mj is not None:
            m = split_idle(m, self.idle_floor_mw, self.idle_floor_basis)
        return snapshot, m

    # -- the idle floor ----------------------------------------------------------------------
    def set_idle_floor(self, power_mw: float, basis: str = "configured") -> None:
        """Use ``power_mw`` as the idle floor from now on (``basis`` says where it came from).

        Raises:
            ValueError: ``power_mw`` is negative or not finite.
        """
        if not (math.isfinite(power_mw) and power_mw >= 0):
            raise ValueError(f"idle floor must be a finite power >= 0 mW, got {power_mw!r}")
        self.idle_floor_mw = float(power_mw)
        self.idle_floor_basis = basis

    def calibrate_idle(self, duration_s: float = 1.0, wait: Callable[[float], None] | None = None) -> float:
        """Measure the idle floor: one window of ``duration_s`` while this process waits.

        Call it before the work starts, when nothing of the pipeline runs; whatever else the
        machine does meanwhile (other jobs, background daemons) becomes part of the floor, which is
        the point: it is not attributable to the work.

        Args:
            duration_s: Length of the idle window (> 0); 1-2 s is enough for counter meters,
                sampled meters want several sample periods.
            wait: How to wait (default :func:`time.sleep`; the replay meter advances its clock).

        Returns:
            The floor in mW (also stored in :attr:`idle_floor_mw`).

        Raises:
            ValueError: ``duration_s`` not > 0.
            DeviceError: The meter measures no energy (null meter) or reading failed.
        """
        if not duration_s > 0:
            raise ValueError(f"calibrate_idle needs duration_s > 0, got {duration_s!r}")
        key = "exitflow:idle-calibration"
        self.begin_window(key)
        (wait or self._idle_wait)(duration_s)
        m = self.end_window(key)
        if m.energy_mj is None:
            raise DeviceError(
                f"the {self.kind} meter measures no energy, so it has no idle floor to calibrate"
            )
        if m.duration_s <= 0:
            raise DeviceError(
                f"the idle calibration window of the {self.kind} meter lasted 0 s; its clock did not advance "
                "during wait() - pass a wait that moves the meter's clock"
            )
        floor_mw = m.energy_mj / m.duration_s  # mJ / s = mW
        self.set_idle_floor(floor_mw, f"measured: {m.duration_s:.2f} s idle window ({m.source})")
        return floor_mw

    def _idle_wait(self, seconds: float) -> None:
        time.sleep(seconds)

    @contextmanager
    def window(self, name: str) -> Iterator[WindowResult]:
        """``with meter.window("encode") as w: ...`` then read ``w.measurement``."""
        result = WindowResult()
        self.begin_window(name)
        try:
            yield result
        finally:
            result.measurement = self.end_window(name)

    def clock_s(self) -> float:
        """The meter's clock now, in seconds (wall-clock monotonic, or the replay meter's virtual clock)."""
        return self._clock()

    def set_edge_hook(self, hook: Callable[[str, str], Any] | None) -> None:
        """At every window edge call ``hook("begin" | "end", name)`` instead of taking a snapshot;
        the hook returns the snapshot the window uses (``None`` removes the hook).

        Used by :class:`~devices.trace.TraceRecorder` to cut its trace where windows start and end,
        with the very reading the window itself uses.
        """
        self._edge_hook = hook

    @property
    def open_windows(self) -> tuple[str, ...]:
        """Names of the windows currently open."""
        return tuple(self._windows)

    def describe(self) -> str:
        """Human-readable text: what this meter measures and under which assumptions."""
        return f"{self.kind}: no description"

    def describe_idle_floor(self) -> str:
        """One line on the idle floor: its value and basis, or how to get one."""
        if self.idle_floor_mw is None:
            return (
                "idle floor: unknown (windows carry no dynamic_energy_mj); call calibrate_idle() before the "
                "work or configure the floor"
            )
        return f"idle floor: {self.idle_floor_mw:.1f} mW ({self.idle_floor_basis})"

    def close(self) -> None:
        """Stop background threads and release handles; safe to call twice."""
        self._closed = True

    def __enter__(self) -> PowerMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what subclasses implement -------------------------------------------------------------
    @abstractmethod
    def _snapshot(self) -> Any:
        """Read the cumulative state now (must be cheap: it runs at both window edges)."""

    @abstractmethod
    def _measure(self, name: str, start: Any, end: Any) -> Measurement:
        """Turn two snapshots into a measurement."""
