"""The two ends of the live pipeline as the driver sees them: where messages come from, where results go.

A *source factory* is a zero-argument callable returning a source (``read() -> SensorMessage |
None``, ``health()``, ``clock``, ``close()``; :class:`~exitflow.pipeline.live.sources.base.Source`
is the project's); a ``stream.sources`` entry names the modality it delivers
(:func:`source_modality`), a factory says it in its ``modality`` attribute (:func:`modality_of`).
A *sink* (:class:`LiveSink`) receives raw messages, decisions, outage events and status: the MCAP
recording, the Foxglove server, or :class:`DecisionLog` (JSON lines). The driver needs only
these few lines, not the sources or the MCAP stack behind them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from exitflow.pipeline.config import SourceConfig
from exitflow.pipeline.live.core.failures import LiveRuntimeError
from exitflow.pipeline.messages import Decision, SensorMessage

SourceFactory = Callable[[], Any]  # () -> a source (sources.base.Source or one with its interface)


def source_modality(spec: SourceConfig) -> str:
    """The modality a ``stream.sources`` entry delivers: ``image``, ``audio`` or ``text``."""
    if spec.kind == "camera":
        return "image"
    return "text" if spec.kind.startswith("text") else "audio"


def modality_of(spec: SourceConfig | SourceFactory) -> str:
    """The modality a ``stream.sources`` entry or a source factory (its ``modality``) delivers.

    Raises:
        LiveRuntimeError: for a factory without a ``modality`` attribute.
    """
    if isinstance(spec, SourceConfig):
        return source_modality(spec)
    modality = getattr(spec, "modality", None)
    if modality is None:
        raise LiveRuntimeError("a source factory needs a 'modality' attribute ('image', 'audio' or 'text')")
    return str(modality)


def modalities_of(spec: SourceConfig | SourceFactory) -> tuple[str, ...]:
    """Every modality a source delivers: a factory's ``modalities`` (one source, several topics,
    e.g. a robot's camera, microphone and labels), else :func:`modality_of`'s one."""
    return tuple(getattr(spec, "modalities", None) or (modality_of(spec),))


class LiveSink(Protocol):
    """Where the runtime hands raw messages, decisions and outage events (a recording, a live server)."""

    def write_message(self, msg: SensorMessage) -> None: ...

    def write_decision(self, decision: Decision, log_time_ns: int) -> None: ...

    def write_event(self, event: Any) -> None: ...

    def write_status(self, snapshot: dict[str, Any], now_ns: int | None = None) -> None: ...

    def close(self) -> None: ...


class DecisionLog:
    """Decisions and outage events as JSON lines, written (and flushed) as they happen; thread-safe.

    Memory stays flat however long the run: nothing is kept after a line is written.

    Args:
        path: Output ``.jsonl`` file (parent folders are created; an existing file is replaced).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self.decisions_written = 0
        self.events_written = 0

    def _write(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)

    def write_decision(self, decision: Decision, log_time_ns: int | None = None) -> None:
        self._write(decision.to_json_dict())
        self.decisions_written += 1

    def write_event(self, event: Any) -> None:
        self._write(event.to_json_dict())
        self.events_written += 1

    def close(self) -> None:
        with self._lock:
            self._file.close()
