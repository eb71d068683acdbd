"""Background sampling: a periodic daemon thread and a trapezoidal power integrator."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping


class PeriodicThread:
    """Calls ``fn()`` every ``interval_s`` seconds on a daemon thread until :meth:`stop`.

    An exception raised by ``fn`` stops the thread and is kept in :attr:`error` so the owning
    meter can report it at the next window edge instead of losing it on a background thread.

    Args:
        fn: The periodic action (a poll or a sample); what it returns is ignored.
        interval_s: Period in seconds (> 0).
        name: Thread name, shown in debuggers.
    """

    def __init__(self, fn: Callable[[], object], interval_s: float, name: str):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s!r}")
        self._fn = fn
        self._interval_s = float(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._fn()
            except BaseException as e:  # noqa: BLE001 - reported by the owner at the next edge
                self.error = e
                return

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to stop and wait up to ``timeout_s`` for it."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


class PowerIntegrator:
    """Cumulative energy per rail from power samples, by the trapezoidal rule.

    Between two samples ``(t0, p0)`` and ``(t1, p1)`` the power is taken as linear, so the
    energy added is ``(p0 + p1) / 2 * (t1 - t0)``; mW x s = mJ. Samples must arrive with
    non-decreasing time; an out-of-order sample is ignored (it can only come from a racing thread
    reading the clock before taking the lock, and dropping it loses no energy).

    Args:
        rails: Names of the rails that every sample carries.
    """

    def __init__(self, rails: Iterable[str]):
        self.rails = tuple(rails)
        self._energy_mj = dict.fromkeys(self.rails, 0.0)
        self._last_t_s: float | None = None
        self._last_power_mw: dict[str, float] = {}
        self.samples = 0

    def add(self, t_s: float, power_mw: Mapping[str, float]) -> None:
        """Add one sample taken at ``t_s`` seconds with ``power_mw[rail]`` milliwatts per rail."""
        if self._last_t_s is not None:
            dt_s = t_s - self._last_t_s
            if dt_s < 0:
                return
            last = self._last_power_mw
            for rail in self.rails:
                self._energy_mj[rail] += 0.5 * (last[rail] + power_mw[rail]) * dt_s
        self._last_t_s = t_s
        self._last_power_mw = {rail: float(power_mw[rail]) for rail in self.rails}
        self.samples += 1

    def energy_mj(self) -> dict[str, float]:
        """Cumulative energy per rail (mJ) up to the last sample."""
        return dict(self._energy_mj)
