"""Read an exitflow recording back: every message decoded, in ``log_time`` order, damage skipped.

:class:`Recording` opens either format (``exitflow.mcap.v2`` with Foxglove schemas, and the
first ``exitflow.sensor.v1``, decoded by :mod:`.v1`) and streams :class:`RecordedEvent` objects
through :class:`~.mcap_reader.McapFile`: one chunk in memory at a time, damaged chunks skipped and
counted in :attr:`Recording.report`, and a file that ends early (no footer, no summary) read up to
its last whole chunk and reported as incomplete.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exitflow.pipeline.errors import DataError
from exitflow.pipeline.live.recording.mcap_reader import McapFile, ReadReport
from exitflow.pipeline.live.recording.mcap_schemas import (
    DECISION_TOPIC,
    FORMAT,
    MODALITY_OF_SCHEMA,
    SENSOR_TOPIC_PREFIX,
    decode_sensor,
)
from exitflow.pipeline.live.recording.v1 import SENSOR_ENCODING, decode_sensor_message
from exitflow.pipeline.messages import SensorMessage

log = logging.getLogger(__name__)

__all__ = ["RecordedEvent", "Recording", "read_recording", "recorded_modalities", "sensor_topics"]


@dataclass
class RecordedEvent:
    """One message read back, at ``log_time_ns`` (epoch ns; monotonic in a v1 recording).

    Exactly one of ``message`` (a sensor message, its ``timestamp_ns`` monotonic as when it was
    recorded), ``decision`` (``/decisions``) and ``record`` (``/events``, ``/status``) is set.
    """

    topic: str
    log_time_ns: int
    message: SensorMessage | None = None
    decision: dict[str, Any] | None = None
    record: dict[str, Any] | None = None


class Recording:
    """A recording opened for streaming reads (either format); see :func:`read_recording`.

    Args:
        path: The ``.mcap`` file.

    Raises:
        DataError: the file is missing, not MCAP, or of a format this version does not read.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = McapFile(self.path)
        self.metadata = self.file.metadata()
        info = self.metadata.get("exitflow", {})
        self.format = info.get("format", "exitflow.sensor.v1" if not info else "unknown")
        if self.format not in (FORMAT, "exitflow.sensor.v1"):
            self.file.close()
            raise DataError(f"{path} is an exitflow recording of format {self.format!r}; this version reads "
                            f"{FORMAT} and exitflow.sensor.v1 (upgrade exitflow to read it)")
        try:
            self.epoch_offset_ns = int(self.metadata.get("exitflow.clock", {}).get("epoch_offset_ns", "0"))
        except ValueError:
            self.epoch_offset_ns = 0

    @property
    def report(self) -> ReadReport:
        """What the reads so far skipped (damaged chunks, undecodable records)."""
        return self.file.report

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start_time_ns(self) -> int | None:
        """``log_time`` of the first message (from the summary, or the first readable chunk)."""
        return self.file.start_time_ns()

    def events(
        self,
        topics: list[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        errors: dict[str, int] | None = None,
    ) -> Iterator[RecordedEvent]:
        """Every message in ``log_time`` order, decoded, one chunk in memory at a time.

        A message that does not decode is skipped with a warning and counted in ``errors``
        (``"bad_sensor_record:<ExceptionType>"``, ``"bad_decision_record:..."``) and in
        :attr:`report`; a damaged chunk is skipped and counted in :attr:`report`.
        """
        for raw in self.file.iter_messages(topics, start_ns, end_ns):
            kind = "bad_decision_record" if raw.topic == DECISION_TOPIC else (
                "bad_sensor_record" if raw.topic.startswith(SENSOR_TOPIC_PREFIX) else "bad_record")
            try:
                event = self._decode(raw)
            except Exception as e:  # noqa: BLE001 - one damaged record is skipped, counted
                key = f"{kind}:{type(e).__name__}"
                if errors is not None:
                    errors[key] = errors.get(key, 0) + 1
                self.report.skip(key)
                log.warning("recording %s: skipped a record on %s (%s: %s)", self.path, raw.topic,
                            type(e).__name__, e)
                continue
            if event is not None:
                yield event

    def _decode(self, raw: Any) -> RecordedEvent | None:
        if raw.message_encoding == SENSOR_ENCODING:
            return RecordedEvent(raw.topic, raw.log_time_ns, message=decode_sensor_message(raw.data))
        if raw.schema_name in MODALITY_OF_SCHEMA:
            source = raw.topic[len(SENSOR_TOPIC_PREFIX):] if raw.topic.startswith(SENSOR_TOPIC_PREFIX) else raw.topic
            msg = decode_sensor(raw.schema_name, raw.data, source, raw.log_time_ns - self.epoch_offset_ns,
                                raw.sequence)
            return RecordedEvent(raw.topic, raw.log_time_ns, message=msg)
        if raw.message_encoding == "json":
            body = json.loads(raw.data)
            if not isinstance(body, dict):
                raise TypeError(f"a {raw.topic} record is a JSON object, got {type(body).__name__}")
            if raw.topic == DECISION_TOPIC:
                body.pop("monotonic_ns", None)
                return RecordedEvent(raw.topic, raw.log_time_ns, decision=body)
            return RecordedEvent(raw.topic, raw.log_time_ns, record=body)
        return None  # a channel exitflow does not know (added by another tool): left alone


def read_recording(
    path: str | Path,
    errors: dict[str, int] | None = None,
    topics: list[str] | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    records: bool = False,
) -> Iterator[RecordedEvent]:
    """Sensor messages and decisions of a recording in ``log_time`` order; damage is skipped
    (see :class:`Recording`). ``records`` also yields ``/events`` and ``/status``
    (:attr:`RecordedEvent.record`), as does naming those topics in ``topics``.

    Raises:
        DataError: when the file is missing, is not MCAP at all, or of an unknown format.
    """
    with Recording(path) as rec:
        for event in rec.events(topics, start_ns, end_ns, errors):
            if event.record is None or records or topics is not None:
                yield event
        report = rec.report
        if report.chunks_damaged or report.truncated or report.incomplete:
            lost = report.messages_lost
            log.warning("recording %s: %s%d damaged chunk(s) skipped%s; %s", path,
                        "incomplete (no footer or summary), " if report.incomplete else "",
                        len(report.chunks_damaged), "" if lost is None else f" ({lost} messages lost)",
                        report.kept_text())


def sensor_topics(rec: Recording) -> list[str] | None:
    """The sensor topics of an indexed recording (None: read every topic, e.g. a cut file)."""
    channels = rec.file.channels()
    if channels is None:
        return None
    return sorted(t for t, _, _ in channels if t.startswith(SENSOR_TOPIC_PREFIX))


def recorded_modalities(path: str | Path, topics: list[str] | None = None) -> list[str]:
    """The sorted modalities of the sensor messages in a recording (from its summary when it has one).

    Raises:
        DataError: when it holds no sensor messages (on ``topics``).
    """
    with Recording(path) as rec:
        channels = rec.file.channels()
        if channels is not None and rec.format != "exitflow.sensor.v1":
            found = {MODALITY_OF_SCHEMA[s] for t, s, _ in channels
                     if s in MODALITY_OF_SCHEMA and (topics is None or t in topics)}
        else:
            found = {e.message.modality for e in rec.events(topics) if e.message is not None}
        report = rec.report
    if not found:
        damage = ""
        if report.damaged:
            damage = (f": {len(report.chunks_damaged)} damaged chunk(s) skipped"
                      + ("; the file is cut short" if report.truncated or report.incomplete else "")
                      + ", nothing readable is left")
        raise DataError(f"{path} holds no {'readable ' if damage else ''}sensor messages"
                        f"{' on ' + ','.join(topics) if topics else ''}{damage}")
    return sorted(found)
