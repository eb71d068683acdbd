"""Is the pipeline overloaded, what can it decide per second, and what did it shed (plain, no clock read).

Load is shed in two places, both by policy and both counted with their reason:

- the driver's engine queue (``stream.engine_queue_policy: drop_oldest``): a robot whose samples
  arrive faster than the engine answers loses its *oldest* waiting sample (``engine_queue:drop_oldest``);
  with ``stream.max_in_flight`` calls per robot, no robot can crowd the others out of a shared service;
- the inference service's replicas (``service.shed_policy``): a sample that waited longer than
  ``service.shed_after_ms`` (``shed:deadline``), a robot above its fair share of an overloaded
  batch (``shed:fair_share``), a call Serve refused at the caller (``shed:service_busy``).

:class:`OverloadMonitor` keeps those counts, the capacity in samples/s (the service's own measure,
samples per second of engine-busy time, or, for an engine answering one sample at a time,
1000 / the mean engine ms) and says "overloaded" while anything was shed in the last
``window_s`` seconds. The driver feeds it; the live view, ``/status`` and the metrics print its
:meth:`OverloadMonitor.snapshot`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any


class OverloadMonitor:
    """Shed samples by reason, capacity in samples/s and the overload flag.

    Args:
        window_s: A shed sample keeps the flag up this long.
        alpha: Weight of a new engine time in the mean (one-at-a-time engines).
        on_shed: Also called ``(where, reason, n)`` for every shed sample (the driver's drop counters).
    """

    def __init__(self, window_s: float = 2.0, alpha: float = 0.05,
                 on_shed: Callable[[str, str, int], Any] | None = None):
        self.on_shed = on_shed
        self.window_s = window_s
        self.alpha = alpha
        self.shed: Counter[str] = Counter()
        self._queue_drops = 0
        self._last_shed_s: float | None = None
        self._service_capacity_sps: float | None = None
        self._service_overloaded = False
        self._engine_ms: float | None = None

    def count_shed(self, where: str, reason: str, now_s: float, n: int = 1) -> None:
        """``n`` samples shed at ``where`` (``service``, ``engine_queue``) for ``reason`` (``shed:deadline``...)."""
        if n > 0:
            self.shed[reason] += n
            self._last_shed_s = now_s
            if self.on_shed is not None:
                self.on_shed(where, reason, n)

    def queue_drops(self, dropped: dict[str, int], now_s: float) -> None:
        """The engine queue's drop counters (cumulative, by policy); the increase counts as shed."""
        total = sum(dropped.values())
        if total > self._queue_drops:
            for reason, n in dropped.items():
                self.shed[f"engine_queue:{reason}"] = n
            self._last_shed_s = now_s
        self._queue_drops = total

    def service_status(self, status: dict[str, Any]) -> None:
        """A replica's status: its measured ``capacity_sps`` and whether it shed lately."""
        if status.get("capacity_sps"):
            self._service_capacity_sps = float(status["capacity_sps"])
        self._service_overloaded = bool(status.get("overloaded"))

    def engine_ms(self, ms: float) -> None:
        """One sample's engine time (an engine that answers one sample at a time)."""
        if ms > 0:
            self._engine_ms = ms if self._engine_ms is None else (1 - self.alpha) * self._engine_ms + self.alpha * ms

    @property
    def capacity_sps(self) -> float | None:
        if self._service_capacity_sps is not None:
            return self._service_capacity_sps
        return None if self._engine_ms is None else 1000.0 / self._engine_ms

    def overloaded(self, now_s: float) -> bool:
        recent = self._last_shed_s is not None and now_s - self._last_shed_s < self.window_s
        return recent or self._service_overloaded

    def snapshot(self, now_s: float) -> dict[str, Any]:
        """``{"overloaded", "capacity_sps", "shed": {reason: n}, "shed_total"}``."""
        capacity = self.capacity_sps
        return {
            "overloaded": self.overloaded(now_s),
            "capacity_sps": None if capacity is None else round(capacity, 1),
            "shed": dict(self.shed),
            "shed_total": sum(self.shed.values()),
        }


def overload_text(overload: dict[str, Any] | None) -> str:
    """One line for the live view: ``OVERLOADED at 812 samples/s: shed 37 (deadline 30, ...)``."""
    if not overload:
        return ""
    capacity = overload.get("capacity_sps")
    cap = f"{capacity:.0f} samples/s" if capacity else "capacity unknown"
    shed = overload.get("shed") or {}
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(shed.items(), key=lambda kv: -kv[1]))
    head = f"OVERLOADED at {cap}" if overload.get("overloaded") else f"capacity {cap}"
    return f"{head}; shed {overload.get('shed_total', 0)}" + (f" ({reasons})" if reasons else "")
