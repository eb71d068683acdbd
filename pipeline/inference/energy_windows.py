"""Per-sample energy from meter windows that span many samples: the meter is read outside the hot path.

A meter read costs microseconds (two ``process_time`` calls and a measurement for the psutil
estimate, a sysfs read for RAPL) — a tenth of a compiled sample's time. :class:`WindowedEnergy`
keeps one window open across samples; once it is ``window_ms`` old it rolls over (one reading ends
it and opens the next, so windows tile time without gaps) and its mean power, total and
attributable, prices the samples that follow: a sample's energy is that power times its own wall
time. The first window is 20 ms long (a meter's reading over one sample is too coarse to give a
power); decisions made before it closes carry no energy, as a meter with no reading gives none.

The figures are attributed, not measured per sample: ``estimated`` is True and the source says
``<meter>/window``. ``engine.meter_window_ms: 0`` gives the reference engine's window per sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from exitflow.pipeline.messages import Decision

T = TypeVar("T")

FIRST_WINDOW_S = 0.02  # the first window: long enough for a meter's resolution, short enough to price early


class WindowedEnergy:
    """Mean power over tiled meter windows, attributed to samples by their wall time.

    Args:
        meter: A power meter (``begin_window`` / ``end_window``; ``rollover_window`` when it has one).
        window_ms: How old a window gets before it rolls over (> 0).
    """

    def __init__(self, meter: Any, window_ms: float):
        if not window_ms > 0:
            raise ValueError(f"window_ms must be > 0, got {window_ms}")
        self.meter, self.window_s = meter, window_ms / 1000.0
        self.first_s = min(self.window_s, FIRST_WINDOW_S)
        self.name = f"engine-power-{id(self):x}"  # one window per attribution, however many share the meter
        self._open_since: float | None = None
        self._power_mw: float | None = None
        self._dynamic_mw: float | None = None
        self._idle_mw: float | None = None
        self._source, self._estimated = "", True

    def begin(self) -> None:
        """Open the first window (cheap no-op once one is open)."""
        if self._open_since is None:
            self.meter.begin_window(self.name)
            self._open_since = time.perf_counter()

    def attribute(self, decision: Decision, seconds: float) -> None:
        """Roll the window over when due, then price ``decision`` (no energy before the first window closes)."""
        now = time.perf_counter()
        if self._open_since is None:
            self.begin()
        elif now - self._open_since >= (self.window_s if self._power_mw is not None else self.first_s):
            self._roll(now)
        if self._power_mw is None:
            return
        decision.energy_mj = self._power_mw * seconds  # mW x s = mJ
        decision.dynamic_energy_mj = None if self._dynamic_mw is None else self._dynamic_mw * seconds
        decision.idle_energy_mj = None if self._idle_mw is None else self._idle_mw * seconds
        decision.energy_source = self._source
        decision.estimated = True

    def _roll(self, now: float) -> None:
        rollover = getattr(self.meter, "rollover_window", None)
        if rollover is not None:
            m = rollover(self.name)
        else:
            m = self.meter.end_window(self.name)
            self.meter.begin_window(self.name)
        self._open_since = now
        duration = float(getattr(m, "duration_s", 0.0) or 0.0)
        if duration <= 0 or m.energy_mj is None:
            return
        self._power_mw = m.energy_mj / duration
        dyn, idle = getattr(m, "dynamic_energy_mj", None), getattr(m, "idle_energy_mj", None)
        self._dynamic_mw = None if dyn is None else dyn / duration
        self._idle_mw = None if idle is None else idle / duration
        self._source = f"{m.source}/window"

    def close(self) -> None:
        """End the open window (the meter is free for others)."""
        if self._open_since is not None:
            self.meter.end_window(self.name)
            self._open_since = None


def measure_extra(engine: Any, name: str, work: Callable[[], T]) -> tuple[T, float, float | None, float | None]:
    """Run ``work`` beside ``engine``'s samples (a shadow full path, the last rung) and measure it the way the
    engine measures its own: priced by the mean power of the engine's long meter window times ``work``'s wall
    time when the engine attributes energy that way (the fast engine's ``engine.meter_window_ms``), else in a
    meter window of its own (none: no energy).

    Returns:
        ``(work's result, seconds, energy mJ or None, attributable mJ or None)``.
    """
    windowed = getattr(engine, "windowed", None)
    meter = getattr(engine, "meter", None) if windowed is None else None
    if meter is not None:
        meter.begin_window(name)
    start = time.perf_counter()
    try:
        result = work()
    finally:
        elapsed_s = time.perf_counter() - start
        measured = meter.end_window(name) if meter is not None else None
    if windowed is not None:
        measured = Decision(sample_id=-1, prediction=-1, system=name)
        windowed.attribute(measured, elapsed_s)
    return result, elapsed_s, getattr(measured, "energy_mj", None), getattr(measured, "dynamic_energy_mj", None)
