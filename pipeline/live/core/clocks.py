"""One time base across hosts: source clocks, offset estimates from round trips, correction.

Sources stamp every message with their host's wall clock (:class:`SourceClock`: epoch ns,
advanced by ``time.monotonic_ns()`` so an NTP step cannot make stamps run backwards). The
driver does not trust two hosts' clocks to agree: for every source it measures the offset of
the source's clock to its own monotonic clock from round trips (:class:`OffsetEstimator`, the
NTP filter: of the last few probes, the one with the shortest round trip wins) and rewrites
each message's ``timestamp_ns`` into its own clock before the synchronizer sees it
(:class:`ClockBook`). A robot whose clock is an hour off therefore still pairs its frames with
the right audio and text, and the skew is shown (live view, status, metrics) and logged once
when it is beyond the sync slop: the hosts' NTP/PTP is broken, the pipeline is not.

With a round trip of ``rtt`` the offset is known to within ``rtt / 2`` (loopback: well under a
millisecond; a LAN: a few ms). Plain classes, no Ray: the runtimes feed the probes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class SourceClock:
    """The clock a source stamps messages with: the host's wall clock in epoch ns.

    Anchored once to ``time.time_ns()`` and advanced by ``time.monotonic_ns()``, so stamps never
    go backwards. ``offset_ns`` shifts it, to simulate a host whose clock is off (tests, the
    fleet benchmark).

    Args:
        offset_ns: Added to every reading (0 on a real host).
    """

    def __init__(self, offset_ns: int = 0):
        self.offset_ns = int(offset_ns)
        self._wall0_ns = time.time_ns()
        self._mono0_ns = time.monotonic_ns()

    def now_ns(self) -> int:
        return self._wall0_ns + (time.monotonic_ns() - self._mono0_ns) + self.offset_ns


def driver_wall_offset_ns() -> int:
    """This host's wall clock minus its monotonic clock (what a source on this host, with a
    correct clock, would show as its offset)."""
    return time.time_ns() - time.monotonic_ns()


@dataclass(frozen=True)
class ClockProbe:
    """One round trip: the driver's monotonic clock before (``sent_ns``) and after
    (``received_ns``) asking, and the source clock's answer (``source_ns``)."""

    sent_ns: int
    source_ns: int
    received_ns: int

    @property
    def rtt_ns(self) -> int:
        return self.received_ns - self.sent_ns

    @property
    def offset_ns(self) -> int:
        """Source clock minus driver clock, assuming the answer was read half-way."""
        return self.source_ns - (self.sent_ns + self.received_ns) // 2


class OffsetEstimator:
    """The offset of one source's clock to the driver's clock from recent round trips.

    Args:
        keep: Probes remembered; the one with the shortest round trip among them gives the offset.
    """

    def __init__(self, keep: int = 8):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._probes: deque[ClockProbe] = deque(maxlen=keep)

    def add(self, probe: ClockProbe) -> None:
        if probe.rtt_ns < 0:
            raise ValueError(f"a round trip cannot end before it started: {probe}")
        self._probes.append(probe)

    @property
    def best(self) -> ClockProbe | None:
        return min(self._probes, key=lambda p: p.rtt_ns) if self._probes else None

    @property
    def offset_ns(self) -> int | None:
        best = self.best
        return None if best is None else best.offset_ns


class ClockBook:
    """Per-source clock offsets; rewrites message stamps into the driver's monotonic clock.

    Args:
        slop_ns: The sync slop: a source whose clock differs from the driver's wall clock by
            more is reported (logged once, ``skewed`` in :meth:`to_dict`).
        keep: Probes remembered per source.
    """

    def __init__(self, slop_ns: int, keep: int = 8):
        self.slop_ns = int(slop_ns)
        self._keep = keep
        self._estimators: dict[str, OffsetEstimator] = {}
        self._warned: set[str] = set()
        self._driver_wall_ns = driver_wall_offset_ns()

    def add_probe(self, source: str, probe: ClockProbe) -> None:
        self._estimators.setdefault(source, OffsetEstimator(self._keep)).add(probe)
        skew_ns = self.skew_ns(source)
        if skew_ns is not None and abs(skew_ns) > self.slop_ns and source not in self._warned:
            self._warned.add(source)
            log.warning(
                "clock of source %s is %+.3f s off the driver's wall clock (beyond the %.0f ms slop); "
                "its stamps are corrected by the measured offset, but check NTP/PTP on that host",
                source, skew_ns / 1e9, self.slop_ns / 1e6,
            )

    def reset(self, source: str) -> None:
        """Forget ``source``'s probes (a restarted source may run on another host's clock)."""
        self._estimators.pop(source, None)
        self._warned.discard(source)

    def offset_ns(self, source: str) -> int | None:
        """Source clock minus the driver's monotonic clock, or None before the first probe."""
        est = self._estimators.get(source)
        return None if est is None else est.offset_ns

    def skew_ns(self, source: str) -> int | None:
        """Source clock minus the driver's wall clock (0 for hosts whose clocks agree)."""
        offset = self.offset_ns(source)
        return None if offset is None else offset - self._driver_wall_ns

    def to_driver_ns(self, source: str, source_ns: int) -> int:
        """A stamp of ``source``'s clock in the driver's monotonic clock.

        Before any probe of that source the driver's own wall offset is assumed (hosts in sync).
        """
        offset = self.offset_ns(source)
        return int(source_ns) - (self._driver_wall_ns if offset is None else offset)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Source -> ``skew_ms`` (vs the driver's wall clock), ``rtt_ms`` of the best probe,
        ``skewed`` (beyond the slop)."""
        out: dict[str, dict[str, Any]] = {}
        for source, est in self._estimators.items():
            best = est.best
            skew = self.skew_ns(source)
            if best is None or skew is None:
                continue
            out[source] = {
                "skew_ms": round(skew / 1e6, 3),
                "rtt_ms": round(best.rtt_ns / 1e6, 3),
                "skewed": abs(skew) > self.slop_ns,
            }
        return out
