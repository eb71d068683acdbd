"""Every source as the driver sees it, and the outage events it notes.

:class:`SourceBook` keeps one :class:`SourceHandle` per source: whether its worker (a thread or a
Ray actor) answers (``alive`` / ``restarting``), which incarnation answered last, how often it
failed, restarted or lost its stream, and its latest health report. Every outage event (a worker
down or back, a stream disconnected or reconnected, the engine down or back) is counted, kept
among the last :data:`MAX_RECENT_OUTAGES`, logged and written to the sinks (recording, decision
log) between the decisions; a sink that fails to take one is counted, never fatal.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from exitflow.pipeline.live.core.endpoints import DecisionLog, LiveSink
from exitflow.pipeline.live.core.failures import OutageEvent
from exitflow.pipeline.live.core.stats import LiveStats
from exitflow.pipeline.live.runtime.transport import SourceDown

log = logging.getLogger(__name__)

MAX_RECENT_OUTAGES = 50


@dataclass
class SourceHandle:
    """One source's worker as the driver sees it."""

    name: str
    state: str = "starting"
    health: dict[str, Any] = field(default_factory=dict)
    failures: int = 0
    restarts: int = 0
    incarnation: int | None = None
    outages: int = 0


class SourceBook:
    """The handles of ``names`` and the outage events of the run.

    Args:
        names: The sources' names.
        sinks: Where outage events are written (None entries are skipped).
        stats: Counts events a sink failed to take.
    """

    def __init__(self, names: Iterable[str], sinks: Iterable[LiveSink | DecisionLog | None], stats: LiveStats):
        self.handles: dict[str, SourceHandle] = {name: SourceHandle(name) for name in names}
        self.sinks = [s for s in sinks if s is not None]
        self.stats = stats
        self.outages: deque[OutageEvent] = deque(maxlen=MAX_RECENT_OUTAGES)  # the most recent ones
        self.outage_counts: Counter[str] = Counter()  # event kind -> n

    def state(self, name: str) -> dict[str, Any]:
        """``actor`` state, ``restarts``, ``failures`` and ``outages`` of source ``name``."""
        h = self.handles[name]
        return {"actor": h.state, "restarts": h.restarts, "failures": h.failures, "outages": h.outages}

    def event(self, h: SourceHandle | None, source: str, event: str, reason: str) -> None:
        """Note an outage event: counters, the live view and the sinks."""
        ev = OutageEvent(source, event, reason, time.monotonic_ns())
        self.log_outage(ev)
        if h is not None and event in ("actor_down", "disconnected"):
            h.outages += 1

    def log_outage(self, ev: OutageEvent) -> None:
        self.outages.append(ev)
        self.outage_counts[ev.event] += 1
        log.warning("source %s: %s (%s)", ev.source, ev.event, ev.reason)
        for sink in self.sinks:
            try:
                sink.write_event(ev)
            except Exception as e:  # noqa: BLE001 - a full disk must not end the run; counted
                self.stats.count_drop("log", f"event_write:{type(e).__name__}")

    def mark_down(self, h: SourceHandle, error: BaseException) -> None:
        """A call to ``h``'s worker failed: ``actor_down`` at the first failure of an outage."""
        h.failures += 1
        if h.state != "restarting":
            self.event(h, h.name, "actor_down", type(error.__cause__ or error).__name__)
        h.state = "restarting"

    def take_health(self, name: str, health: dict[str, Any] | BaseException) -> None:
        """A source's health report (with the outage events its worker noted), or why it has none."""
        h = self.handles[name]
        if isinstance(health, SourceDown):
            self.mark_down(h, health)
            return
        if isinstance(health, BaseException):
            self.stats.count_drop(name, f"health_failed:{type(health).__name__}")
            return
        for ev in health.pop("events", []):
            self.log_outage(ev)
            if ev.event == "disconnected":
                h.outages += 1
        h.health = health

    def snapshot(self, clocks: dict[str, Any]) -> dict[str, Any]:
        """Name -> health, worker state and counters (and its clock estimate from ``clocks``)."""
        return {
            name: {
                **h.health,
                "actor": h.state,
                "actor_failures": h.failures,
                "actor_restarts": h.restarts,
                "outages": h.outages,
                **({"clock": clocks[name]} if name in clocks else {}),
            }
            for name, h in self.handles.items()
        }
