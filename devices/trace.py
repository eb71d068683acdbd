"""Power traces: record any meter's power per rail to a CSV that the ``replay`` meter plays back.

A :class:`TraceRecorder` keeps one window open on the meter and *rolls it over*
(:meth:`~devices.base.PowerMeter.rollover_window`: one snapshot ends the interval and starts the
next) at ``sample_hz`` on a background thread and - with ``align_to_windows`` (the default) - at
every ``begin_window`` / ``end_window`` edge of the meter. Each rollover gives one row: the time
at the end of the interval and the interval's *average* power, total and per rail
(``energy_mj / duration_s``). Intervals tile time without gaps, so the rows add up to exactly the
meter's own energy, and the CSV says ``interpolation=step``: replaying it (``ReplayMeter``)
reproduces the energy of any window whose edges were cut, i.e. every window the meter measured
while the recorder was attached, up to the microseconds between the cut and the window's own
snapshot. Windows that were not cut are reproduced to within one interval's share at each edge.

File layout (see :mod:`devices.replay`)::

    # exitflow power trace
    # interpolation=step
    # meter=rapl
    # source=rapl
    # sample_hz=50
    # idle_floor_mw=8123.4            (when the meter knows its idle floor)
    # idle_basis=measured: 2.00 s idle window (rapl)
    t_s,power_mw,package-0,package-0/dram
    0.0,9001.2,8000.1,1001.1          (first row: the first interval's power, at t = 0)
    0.02,9001.2,8000.1,1001.1
    ...

The first row repeats the first interval's power so that a linear reader sees a sane value; with
step interpolation it is never integrated. Every sample meter works: counters (RAPL, NVML energy
counter, zeus) and integrators (NVML sampling, Jetson) alike; estimates (psutil) are recorded as
what they are (``source`` names them).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from exitflow.devices.base import PowerMeter
from exitflow.devices.errors import DeviceError
from exitflow.devices.sampler import PeriodicThread

TRACE_WINDOW = "exitflow:trace"


@dataclass(frozen=True)
class TraceRow:
    """One interval of a trace: it ends at ``t_s`` (seconds since the recorder started)."""

    t_s: float
    duration_s: float
    power_mw: float
    rails_mw: dict[str, float]


@dataclass(frozen=True)
class TraceSummary:
    """What a recording produced."""

    path: str | None
    rows: int
    duration_s: float
    energy_mj: float
    rails: tuple[str, ...]
    sample_hz: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "duration_s": self.duration_s,
            "energy_mj": self.energy_mj,
            "avg_power_mw": self.energy_mj / self.duration_s if self.duration_s > 0 else None,
            "rails": list(self.rails),
            "sample_hz": self.sample_hz,
            "source": self.source,
        }


class TraceRecorder:
    """Records a meter's power per rail at ``sample_hz`` (see the module docstring).

    Args:
        meter: Any meter that measures energy (not the null meter).
        path: CSV file to write; ``None`` writes nothing (use ``on_row``).
        sample_hz: Rollovers per second of the background thread (> 0).
        align_to_windows: Also cut at every window edge of ``meter``.
        on_row: Called with every :class:`TraceRow` (e.g. to publish ``/power`` into an MCAP
            recording); runs on whichever thread cut the row, so keep it short.
        start_thread: Start the background thread; tests pass ``False`` and call :meth:`cut`.
        keep_edges: With ``align_to_windows``, keep every window edge as ``(t_s, "begin" | "end",
            name)`` in :attr:`edges` (trace time of the cut), so the same windows can be replayed
            exactly; memory grows with the number of windows.

    Use as a context manager or call :meth:`start` and :meth:`stop`.

    Raises:
        ValueError: ``sample_hz`` not > 0.
        DeviceError: The meter measures no energy, or the file cannot be written.
    """

    def __init__(
        self,
        meter: PowerMeter,
        path: str | os.PathLike | None = None,
        sample_hz: float = 10.0,
        align_to_windows: bool = True,
        on_row: Callable[[TraceRow], None] | None = None,
        start_thread: bool = True,
        keep_edges: bool = False,
    ):
        if not (sample_hz > 0 and math.isfinite(sample_hz)):
            raise ValueError(f"sample_hz must be a finite rate > 0 Hz, got {sample_hz!r}")
        self.meter = meter
        self.path = None if path is None else str(path)
        self.sample_hz = float(sample_hz)
        self.align_to_windows = align_to_windows
        self.on_row = on_row
        self._start_thread = start_thread
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._thread: PeriodicThread | None = None
        self._rails: tuple[str, ...] = ()
        self._t_s = 0.0
        self._last_clock_s = 0.0
        self._energy_mj = 0.0
        self._pending_mj = 0.0
        self._pending_rails_mj: dict[str, float] = {}
        self._rows = 0
        self._source = meter.kind
        self._running = False
        self.keep_edges = keep_edges
        #: ``(t_s, "begin" | "end", window name)`` per window edge, when ``keep_edges``.
        self.edges: list[tuple[float, str, str]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> TraceRecorder:
        """Open the trace window, write the header and start sampling."""
        if self._running:
            raise DeviceError("this trace recorder is already running; stop() it first")
        meter = self.meter
        meter.begin_window(TRACE_WINDOW)
        probe = meter.rollover_window(TRACE_WINDOW)  # zero-length: learns the source and rails
        if probe.energy_mj is None:
            meter.end_window(TRACE_WINDOW)
            raise DeviceError(
                f"the {meter.kind} meter measures no energy, so there is no power to trace; pick a meter "
                "that measures or estimates energy (power.meter: auto)"
            )
        self._source = probe.source
        self._rails = tuple(r.replace(",", ";") for r in probe.rails)
        self._last_clock_s = meter.clock_s()
        if self.path is not None:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                # line-buffered: a run that is killed keeps every row written so far
                self._file = open(self.path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in stop()
            except OSError as e:
                meter.end_window(TRACE_WINDOW)
                raise DeviceError(
                    f"cannot write the power trace {self.path}: {e}; pick a writable path"
                ) from e
            self._write_header()
        self._running = True
        if self.align_to_windows:
            meter.set_edge_hook(self._on_edge)
        if self._start_thread:
            self._thread = PeriodicThread(self.cut, 1.0 / self.sample_hz, name="exitflow-trace-recorder")
            self._thread.start()
        return self

    def stop(self) -> TraceSummary:
        """Cut a last row, detach from the meter, close the file; returns the summary."""
        if self._running:
            if self._thread is not None:
                self._thread.stop()
            if self.align_to_windows:
                self.meter.set_edge_hook(None)
            self.cut()
            with self._lock:
                self._running = False
                self.meter.end_window(TRACE_WINDOW)
                if self._file is not None:
                    self._file.close()
                    self._file = None
            if self._thread is not None and self._thread.error is not None:
                raise DeviceError(
                    f"the trace recorder stopped early: {self._thread.error}"
                ) from self._thread.error
        return self.summary()

    def __enter__(self) -> TraceRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sampling ----------------------------------------------------------------------------
    def elapsed_s(self) -> float:
        """Seconds on the meter's clock since the trace's time 0 (for replaying window times)."""
        return self._t_s + (self.meter.clock_s() - self._last_clock_s)

    def _on_edge(self, edge: str, name: str) -> Any:
        snapshot, row = self._cut()
        if self.on_row is not None and row is not None:
            self.on_row(row)
        if self.keep_edges:
            self.edges.append((self._t_s, edge, name))
        return snapshot

    def cut(self) -> TraceRow | None:
        """End the current interval now and write its row (``None`` if no time has passed)."""
        row = self._cut()[1]
        if self.on_row is not None and row is not None:
            self.on_row(row)
        return row

    def _cut(self) -> tuple[Any, TraceRow | None]:
        """Roll the trace window over; returns the snapshot taken and the row (if any)."""
        with self._lock:
            if not self._running:
                return self.meter._snapshot(), None
            snapshot, m = self.meter._rollover(TRACE_WINDOW)
            self._last_clock_s = self.meter.clock_s()
            if m.energy_mj is None:
                return snapshot, None
            for rail, e in m.rails.items():
                self._pending_rails_mj[rail] = self._pending_rails_mj.get(rail, 0.0) + e
            self._pending_mj += m.energy_mj
            if m.duration_s <= 0:  # no time passed: keep the energy (if any) for the next row
                return snapshot, None
            duration_s = m.duration_s
            rails_mw = {r.replace(",", ";"): e / duration_s for r, e in self._pending_rails_mj.items()}
            row = TraceRow(self._t_s + duration_s, duration_s, self._pending_mj / duration_s, rails_mw)
            if self._rows == 0:
                self._write_row(TraceRow(0.0, 0.0, row.power_mw, rails_mw))
            self._t_s = row.t_s
            self._energy_mj += self._pending_mj
            self._pending_mj = 0.0
            self._pending_rails_mj = {}
            self._rows += 1
            self._write_row(row)
            return snapshot, row

    def summary(self) -> TraceSummary:
        return TraceSummary(
            self.path, self._rows, self._t_s, self._energy_mj, self._rails, self.sample_hz, self._source
        )

    # -- file --------------------------------------------------------------------------------
    def _write_header(self) -> None:
        f = self._file
        if f is None:
            return
        meter = self.meter
        lines = [
            "# exitflow power trace",
            "# interpolation=step",
            f"# meter={meter.kind}",
            f"# source={self._source}",
            f"# sample_hz={self.sample_hz:g}",
            f"# started_unix_s={time.time():.3f}",
        ]
        if meter.idle_floor_mw is not None:
            lines += [f"# idle_floor_mw={meter.idle_floor_mw!r}", f"# idle_basis={meter.idle_floor_basis}"]
        f.write("\n".join(lines) + "\n")
        f.write(",".join(("t_s", "power_mw", *self._rails)) + "\n")

    def _write_row(self, row: TraceRow) -> None:
        if self._file is None:
            return
        values = [row.t_s, row.power_mw, *(row.rails_mw.get(r, 0.0) for r in self._rails)]
        self._file.write(",".join(repr(float(v)) for v in values) + "\n")


def record_trace(
    meter: PowerMeter,
    path: str | os.PathLike,
    duration_s: float,
    sample_hz: float = 10.0,
    wait: Callable[[float], None] = time.sleep,
) -> TraceSummary:
    """Record ``duration_s`` seconds of ``meter``'s power to ``path`` (``exitflow devices --trace``).

    Raises:
        ValueError: ``duration_s`` not > 0 or a bad rate.
        DeviceError: The meter measures nothing or the file cannot be written.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0 seconds, got {duration_s!r}")
    with TraceRecorder(meter, path, sample_hz) as recorder:
        wait(duration_s)
    return recorder.summary()


__all__ = ["TRACE_WINDOW", "TraceRecorder", "TraceRow", "TraceSummary", "record_trace"]
