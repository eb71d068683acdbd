"""Text sources: stdin, a plain text file, a TCP socket (one message per line), JSONL with timestamps.

Text can arrive far faster than the engine runs; every text source enforces ``max_rate_hz``
with a token bucket and drops the excess (counted as ``flood``), and cuts lines longer than
``max_chars`` (counted as ``truncated``). A JSONL file holds one object per line,
``{"t_s": 1.25, "text": "bin blue"}`` (``t_s`` seconds from the start, or ``timestamp_ns``),
and is replayed at those times; a malformed line is counted as ``bad_json`` (a time outside
``[0, 2**63)`` ns as ``bad_time``) and skipped.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import deque
from typing import IO, Any

from exitflow.pipeline.live.sources.base import (
    Backoff,
    EndOfStream,
    Pacer,
    Source,
    SourceDisconnected,
    check_peer,
)
from exitflow.pipeline.messages import SensorMessage


class TokenBucket:
    """Allows ``rate_hz`` events per second on average with bursts up to ``burst``."""

    def __init__(self, rate_hz: float | None, burst: int = 5):
        self.rate_hz = rate_hz
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        if self.rate_hz is None:
            return True
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_hz)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class TextSource(Source):
    """Shared flood control and message building for text sources.

    Args:
        name: Source name.
        max_rate_hz: Most lines per second passed on; None for no limit.
        max_chars: Longer lines are cut to this length.
        backoff: Reconnect policy.
    """

    modality = "text"

    def __init__(
        self,
        name: str,
        max_rate_hz: float | None = 20.0,
        max_chars: int = 512,
        backoff: Backoff | None = None,
    ):
        super().__init__(name, "text", backoff)
        self.max_chars = max_chars
        self._bucket = TokenBucket(max_rate_hz)

    def text_message(self, line: str, source_time_ns: int | None = None) -> SensorMessage | None:
        """A message for ``line`` or None when it is empty or over the rate limit."""
        line = line.strip()
        if not line:
            return None
        if not self._bucket.allow():
            self.count_drop("flood")
            return None
        if len(line) > self.max_chars:
            line = line[: self.max_chars]
            self.count_drop("truncated")
        return self.new_message(line, source_time_ns=source_time_ns)


class StdinTextSource(TextSource):
    """Lines typed on (or piped into) standard input, read by a background thread."""

    def __init__(self, name: str = "text0", stream: IO[str] | None = None, **kwargs: Any):
        super().__init__(name, **kwargs)
        self._stream = stream
        self._lines: deque[str] = deque(maxlen=1000)
        self._eof = False
        self._thread: threading.Thread | None = None

    def _open(self) -> None:
        if self._thread is None:
            stream = self._stream or sys.stdin
            self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
            self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            if len(self._lines) == self._lines.maxlen:
                self.count_drop("flood")
            self._lines.append(line)
        self._eof = True

    def _read_raw(self) -> SensorMessage | None:
        if self._lines:
            return self.text_message(self._lines.popleft())
        if self._eof:
            raise EndOfStream()
        time.sleep(0.01)
        return None


class TextFileSource(TextSource):
    """A text file, one message per line; JSONL (``jsonl=True``) is replayed at its timestamps.

    Args:
        path: The file.
        jsonl: Lines are JSON objects with ``text`` and ``t_s`` or ``timestamp_ns``.
        loop: Start over at the end instead of finishing.
        line_rate_hz: For plain text: lines per second (None: as fast as allowed).
        realtime: For JSONL: wait until each line's time; False releases them at once.
        **kwargs: See :class:`TextSource`.
    """

    def __init__(
        self,
        path: str,
        name: str = "text0",
        jsonl: bool = False,
        line_rate_hz: float | None = 2.0,
        realtime: bool = True,
        loop: bool = False,
        **kwargs: Any,
    ):
        super().__init__(name, **kwargs)
        self.path, self.jsonl, self.line_rate_hz, self.realtime = path, jsonl, line_rate_hz, realtime
        self.loop = loop
        self._file: IO[bytes] | None = None
        self._pacer = Pacer()
        self._index = 0
        self._split: deque[str] = deque()  # the rest of a line a lone "\r" split

    def _open(self) -> None:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in _close; bytes: decoded per line
        except OSError as e:
            raise SourceDisconnected(f"cannot open text file {self.path}: {e}") from e
        self._pacer.reset()
        self._index = 0
        self._split.clear()
        self._pending: tuple[str, int | None] | None = None

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _read_line(self) -> str | None:
        """The next line, decoded on its own: a line that is not UTF-8 is counted (``bad_utf8``) and
        skipped, never the lines around it. Lines end at LF, CRLF or a lone CR (as in text mode).

        Raises:
            EOFError: at the end of the file.
        """
        if self._split:
            return self._split.popleft()
        if self._file is None:
            raise SourceDisconnected("file is closed")
        raw = self._file.readline()
        if not raw:
            raise EOFError
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.count_drop("bad_utf8")
            return None
        first, *rest = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._split.extend(part for part in rest if part)
        return first

    def _next_line(self) -> tuple[str, int | None] | None:
        try:
            line = self._read_line()
        except EOFError:
            if not self.loop:
                raise EndOfStream() from None
            if self._file is None:
                raise SourceDisconnected("file is closed") from None
            self._file.seek(0)
            self._pacer.reset()
            self._index = 0
            return None
        if line is None:
            self._index += 0 if self.jsonl else 1  # the bad line keeps its place in the pacing
            return None
        if not self.jsonl:
            t_ns = int(self._index / self.line_rate_hz * 1e9) if self.line_rate_hz else None
            self._index += 1
            return line, t_ns
        try:
            obj = json.loads(line)
            text = str(obj["text"])
            t_ns = int(obj["timestamp_ns"]) if "timestamp_ns" in obj else int(float(obj["t_s"]) * 1e9)
        except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: t_s of inf
            self.count_drop("bad_json")
            return None
        if not 0 <= t_ns < 2**63:
            self.count_drop("bad_time")
            return None
        return text, t_ns

    def _read_raw(self) -> SensorMessage | None:
        if self._pending is None:
            self._pending = self._next_line()
            if self._pending is None:
                return None
        text, t_ns = self._pending
        pace = self.realtime if self.jsonl else self.line_rate_hz is not None
        if pace and t_ns is not None and not self._pacer.wait(t_ns):
            return None
        self._pending = None
        return self.text_message(text, source_time_ns=t_ns)


class TextSocketSource(TextSource):
    """Lines from a TCP server (``host:port``), e.g. an operator console; reconnects when dropped."""

    def __init__(
        self,
        host: str,
        port: int,
        name: str = "text0",
        timeout_s: float = 0.05,
        allowed_peers: tuple[str, ...] | list[str] = (),
        **kwargs: Any,
    ):
        super().__init__(name, **kwargs)
        self.host, self.port, self.timeout_s = host, int(port), timeout_s
        self.allowed_peers = frozenset(allowed_peers)
        self._sock: socket.socket | None = None
        self._buf = b""

    def _open(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=1.0)
        check_peer(sock, self.allowed_peers, self.name)
        self._sock = sock
        self._sock.settimeout(self.timeout_s)
        self._buf = b""

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read_raw(self) -> SensorMessage | None:
        if self._sock is None:
            raise SourceDisconnected("socket is closed")
        if b"\n" not in self._buf:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise SourceDisconnected("peer closed the text stream")
            self._buf += data
            if len(self._buf) > 1 << 20 and b"\n" not in self._buf:
                self._buf = b""
                self.count_drop("line_too_long")
                return None
        if b"\n" not in self._buf:
            return None
        line, self._buf = self._buf.split(b"\n", 1)
        return self.text_message(line.decode("utf-8", errors="replace"))
