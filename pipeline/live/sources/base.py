"""The common core of every live source: reconnect with exponential backoff, health and fps.

A concrete source implements three hooks: ``_open()`` (connect; raise on failure),
``_read_raw()`` (one message, or None when nothing is ready; raise :class:`SourceDisconnected`
or ``OSError`` when the stream broke) and ``_close()``. :meth:`Source.read` wraps them: it
never raises for a broken stream, it returns None, marks the source ``reconnecting`` and
tries again after ``initial_s * factor**k`` seconds (capped at ``max_s``); after
``max_attempts`` failed attempts in a row the source is ``failed``. Bad data (garbage frames,
floods) is dropped and counted by reason via :meth:`Source.count_drop`, never fatal.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.live.core.backoff import Backoff
from exitflow.pipeline.live.core.clocks import SourceClock
from exitflow.pipeline.messages import SensorMessage

log = logging.getLogger(__name__)

HealthState = Literal["connecting", "connected", "reconnecting", "failed", "finished"]


class SourceError(ExitflowError):
    """A source is misconfigured or its optional dependency is missing; the message says how to fix."""


class SourceDisconnected(ConnectionError):
    """Raised inside a source's ``_read_raw`` when the stream ended or broke (triggers a reconnect)."""


class EndOfStream(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside ``_read_raw`` by a finite source (file) that has nothing more to give."""


@dataclass
class SourceHealth:
    """What the live view shows for one source."""

    name: str
    modality: str
    state: HealthState
    fps: float
    messages: int
    reconnects: int
    last_error: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, dropped=dict(self.dropped))


class FpsMeter:
    """Messages per second over a sliding window of the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 2.0):
        self.window_ns = int(window_s * 1e9)
        self._stamps: deque[int] = deque()

    def tick(self, now_ns: int) -> None:
        self._stamps.append(now_ns)
        self._trim(now_ns)

    def _trim(self, now_ns: int) -> None:
        while self._stamps and now_ns - self._stamps[0] > self.window_ns:
            self._stamps.popleft()

    def fps(self, now_ns: int | None = None) -> float:
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        self._trim(now_ns)
        if len(self._stamps) < 2:
            return 0.0
        span_ns = max(now_ns - self._stamps[0], self._stamps[-1] - self._stamps[0])
        return (len(self._stamps) - 1) / (span_ns / 1e9) if span_ns > 0 else 0.0


class Source:
    """Base of camera, microphone and text sources; see the module docstring.

    Args:
        name: Source name (unique in a pipeline), e.g. ``"camera0"``.
        modality: ``"image"``, ``"audio"`` or ``"text"``.
        backoff: Reconnect policy (default: 0.2 s doubling to 5 s, forever).
        clock: Stamps messages (default: this host's wall clock; see
            :mod:`exitflow.pipeline.live.core.clocks`).
    """

    modality = "image"

    def __init__(
        self, name: str, modality: str | None = None, backoff: Backoff | None = None, clock: SourceClock | None = None
    ):
        self.name = name
        self.clock = clock or SourceClock()
        if modality is not None:
            self.modality = modality
        self.backoff = backoff or Backoff()
        self.state: HealthState = "connecting"
        self.last_error: str | None = None
        self.reconnects = 0
        self.messages = 0
        self.dropped: dict[str, int] = {}
        self._seq = 0
        self._fps = FpsMeter()
        self._next_attempt_s = 0.0
        self._ever_connected = False

    # -- hooks -------------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _read_raw(self) -> SensorMessage | None:
        raise NotImplementedError

    def _close(self) -> None:
        """Release the connection; must not raise."""

    # -- public API --------------------------------------------------------------------------
    def read(self) -> SensorMessage | None:
        """One message, or None when nothing is ready, the stream is down or the source is done."""
        if self.state in ("failed", "finished"):
            return None
        if self.state in ("connecting", "reconnecting") and not self._try_connect():
            return None
        try:
            msg = self._read_raw()
        except EndOfStream:
            log.info("source %s: end of stream", self.name)
            self._safe_close()
            self.state = "finished"
            return None
        except (OSError, SourceDisconnected) as e:
            self._on_failure(f"read failed: {e}")
            return None
        if msg is not None:
            msg.seq = self._seq
            self._seq += 1
            self.messages += 1
            self._fps.tick(time.monotonic_ns())  # stamps may come from another clock
        return msg

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` messages dropped for ``reason`` (garbage frame, flood, bad rate...)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def new_message(self, payload: Any, source_time_ns: int | None = None, **kwargs: Any) -> SensorMessage:
        """A message stamped with the capture time on :attr:`clock` (``seq`` is set by :meth:`read`)."""
        now_ns = self.clock.now_ns()
        return SensorMessage(
            modality=self.modality,
            source=self.name,
            timestamp_ns=now_ns,
            capture_wall_ns=now_ns,
            payload=payload,
            source_time_ns=source_time_ns,
            **kwargs,
        )

    def health(self) -> SourceHealth:
        return SourceHealth(
            name=self.name,
            modality=self.modality,
            state=self.state,
            fps=round(self._fps.fps(), 2),
            messages=self.messages,
            reconnects=self.reconnects,
            last_error=self.last_error,
            dropped=dict(self.dropped),
        )

    def close(self) -> None:
        self._safe_close()
        if self.state != "failed":
            self.state = "finished"

    # -- internals ---------------------------------------------------------------------------
    def _try_connect(self) -> bool:
        if time.monotonic() < self._next_attempt_s:
            return False
        try:
            self._open()
        except SourceError as e:
            self.last_error = str(e)
            self.state = "failed"
            log.error("source %s: %s", self.name, e)
            return False
        except Exception as e:  # noqa: BLE001 - any connect failure means "try again later"
            self._on_failure(f"connect failed: {e}")
            return False
        if self._ever_connected:
            self.reconnects += 1
            log.info("source %s: reconnected", self.name)
        self._ever_connected = True
        self.state = "connected"
        self.backoff.reset()
        return True

    def _on_failure(self, error: str) -> None:
        self.last_error = error
        self._safe_close()
        if self.backoff.exhausted:
            self.state = "failed"
            log.error("source %s: giving up after %d attempts: %s", self.name, self.backoff.attempts, error)
            return
        delay_s = self.backoff.next_delay_s()
        self._next_attempt_s = time.monotonic() + delay_s
        self.state = "reconnecting"
        level = (
            logging.WARNING
            if self.backoff.attempts in (1, 10) or self.backoff.attempts % 100 == 0
            else logging.DEBUG
        )
        log.log(
            level,
            "source %s: %s; retrying in %.2f s (attempt %d)",
            self.name,
            error,
            delay_s,
            self.backoff.attempts,
        )

    def _safe_close(self) -> None:
        try:
            self._close()
        except Exception as e:  # noqa: BLE001 - closing a broken stream must not raise
            log.debug("source %s: close failed: %s", self.name, e)


def check_peer(sock: socket.socket, allowed_peers: frozenset[str], name: str) -> None:
    """Close ``sock`` and fail the source when its peer is not in ``allowed_peers`` (empty: any).

    Raises:
        SourceError: naming the peer and the setting to change.
    """
    if not allowed_peers:
        return
    peer = sock.getpeername()[0]
    if peer not in allowed_peers:
        sock.close()
        raise SourceError(
            f"source '{name}': peer {peer} is not in allowed_peers {sorted(allowed_peers)}; add it there"
        )


class Pacer:
    """Paces a file source to real time: waits until ``t0 + media_time / rate`` before release."""

    def __init__(self, rate: float = 1.0):
        if rate <= 0:
            raise ValueError(f"pacing rate must be > 0, got {rate}")
        self.rate = rate
        self._t0_ns: int | None = None

    def reset(self) -> None:
        self._t0_ns = None

    def wait(self, media_time_ns: int, max_wait_s: float = 0.05) -> bool:
        """True when ``media_time_ns`` is due now; otherwise sleeps at most ``max_wait_s`` and returns False."""
        now = time.monotonic_ns()
        if self._t0_ns is None:
            self._t0_ns = now - int(media_time_ns / self.rate)
        due = self._t0_ns + int(media_time_ns / self.rate)
        if now >= due:
            return True
        time.sleep(min(max_wait_s, (due - now) / 1e9))
        return time.monotonic_ns() >= due
