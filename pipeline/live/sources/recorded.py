"""A recording played back as a live source: one recorded sensor, paced to its recorded times.

For checking that the live runtimes decide as a replay does, and for trying a live configuration
without the sensors. Message k is released at ``start_monotonic_ns + (t_k - origin_ns)`` (``t_k``:
its recorded ``timestamp_ns``) and stamped with the capture time that instant has on this source's
clock, as a sensor with hardware timestamps would stamp it; so whatever the clock offset and
however late the thread wakes, the driver sees the recorded spacing between messages of all
sources (within its offset estimate's error). ``start_monotonic_ns`` is ``time.monotonic_ns()``
of this host, shared by every source of one playback (a Ray actor on the same host sees the
same monotonic clock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from exitflow.pipeline.live.core.clocks import SourceClock
from exitflow.pipeline.live.recording.reader import read_recording
from exitflow.pipeline.live.sources.base import EndOfStream, Source
from exitflow.pipeline.messages import SensorMessage


class RecordedSource(Source):
    """Replays one source of a recording in real time; see the module docstring.

    Args:
        path: The recording (MCAP).
        source: Recorded source name to play (``/sensor/<source>``).
        start_monotonic_ns: When ``origin_ns`` of the recording is due (this host's monotonic clock).
        origin_ns: Recorded time played at ``start_monotonic_ns`` (the same for every source).
        end_ns: Recorded time to stop at (None: the end).
        begin_ns: Recorded time to start from (default ``origin_ns``); earlier messages are due
            before ``start_monotonic_ns`` and come out at once, stamped with their due times (a
            pre-roll, e.g. the audio a first frame's window needs).
        name: Name of the live source (default: ``source``).
        clock: The clock it stamps with.
    """

    def __init__(self, path: str | Path, source: str, start_monotonic_ns: int, origin_ns: int,
                 end_ns: int | None = None, name: str | None = None, clock: SourceClock | None = None,
                 begin_ns: int | None = None):
        events = read_recording(path, topics=[f"/sensor/{source}"])
        messages = [e.message for e in events if e.message is not None and e.message.source == source]
        if not messages:
            raise ValueError(f"{path} holds no messages of source {source!r}")
        super().__init__(name or source, messages[0].modality, clock=clock)
        begin = origin_ns if begin_ns is None else begin_ns
        self._messages = [m for m in messages if m.timestamp_ns >= begin and (end_ns is None or m.timestamp_ns < end_ns)]
        self.start_monotonic_ns, self.origin_ns = int(start_monotonic_ns), int(origin_ns)
        self._next = 0

    def _open(self) -> None:
        pass

    def _read_raw(self) -> SensorMessage | None:
        if self._next >= len(self._messages):
            raise EndOfStream()
        recorded = self._messages[self._next]
        due_ns = self.start_monotonic_ns + (recorded.timestamp_ns - self.origin_ns)
        wait_ns = due_ns - time.monotonic_ns()
        if wait_ns > 0:
            time.sleep(min(wait_ns / 1e9, 0.05))
            if time.monotonic_ns() < due_ns:
                return None
        self._next += 1
        msg = self.new_message(recorded.payload, source_time_ns=recorded.timestamp_ns,
                               sample_rate_hz=recorded.sample_rate_hz, meta=dict(recorded.meta))
        msg.timestamp_ns = msg.capture_wall_ns = self.clock.now_ns() - (time.monotonic_ns() - due_ns)
        return msg


@dataclass(frozen=True)
class RecordedSourceFactory:
    """Picklable factory of a :class:`RecordedSource` (a Ray source actor builds it itself)."""

    path: str
    source: str
    modality: str
    start_monotonic_ns: int
    origin_ns: int
    end_ns: int | None = None
    clock_offset_ns: int = 0
    begin_ns: int | None = None

    def __call__(self) -> RecordedSource:
        return RecordedSource(self.path, self.source, self.start_monotonic_ns, self.origin_ns, self.end_ns,
                              clock=SourceClock(self.clock_offset_ns), begin_ns=self.begin_ns)
