"""The ``PowerMeter`` interface: named, overlapping measurement windows over a cumulative reading.

Every meter keeps a *cumulative* state (energy counters, an integral of sampled power, CPU
seconds, a virtual clock). ``begin_window(name)`` stores a snapshot of that state under ``name``;
``end_window(name)`` takes a second snapshot and turns the difference into a
:class:`~devices.measurement.Measurement`. Windows with different names can therefore overlap or
nest freely, and a window costs two snapshots and two dict operations.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from exitflow.devices.errors import DeviceError
from exitflow.devices.measurement import Measurement

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

    def __init__(self, clock: Callable[[], float] | None = None):
        self._clock: Callable[[], float] = clock or time.perf_counter
        self._windows: dict[str, Any] = {}
        self._closed = False

    # -- the public window API -------------------------------------------------------------
    def begin_window(self, name: str) -> None:
        """Open the window ``name``.

        Raises:
            DeviceError: If a window of that name is already open or the meter is closed.
        """
        if self._closed:
            raise DeviceError(f"{self.kind} meter is closed; create a new one with get_power_meter()")
        snapshot = self._snapshot()
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
        snapshot = self._snapshot()
        start = self._windows.pop(name, _MISSING)
        if start is _MISSING:
            open_names = ", ".join(repr(n) for n in tuple(self._windows)) or "none"
            raise DeviceError(
                f"end_window({name!r}): no open window of that name on the {self.kind} meter "
                f"(open windows: {open_names}); call begin_window({name!r}) first"
            )
        return self._measure(name, start, snapshot)

    @contextmanager
    def window(self, name: str) -> Iterator[WindowResult]:
        """``with meter.window("encode") as w: ...`` then read ``w.measurement``."""
        result = WindowResult()
        self.begin_window(name)
        try:
            yield result
        finally:
            result.measurement = self.end_window(name)

    @property
    def open_windows(self) -> tuple[str, ...]:
        """Names of the windows currently open."""
        return tuple(self._windows)

    def describe(self) -> str:
        """Human-readable text: what this meter measures and under which assumptions."""
        return f"{self.kind}: no description"

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
