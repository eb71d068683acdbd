"""Record raw sensor streams and decisions to MCAP, and read them back (even after a crash).

Layout: one channel per source, topic ``/sensor/<source>``, message encoding
``exitflow.sensor.v1`` (a little-endian uint32 header length, a JSON header with the
:class:`~pipeline.messages.SensorMessage` fields plus ``dtype``/``shape``, then the raw payload
bytes: ndarray data or UTF-8 text); decisions go to ``/decisions`` as JSON
(:meth:`Decision.to_json_dict`; a failed sample's decision carries ``error``) and source outages
to ``/events`` as JSON. ``log_time`` is the message's ``timestamp_ns``. :class:`DecisionLog`
streams the same decisions and outage events to a JSONL file, one line each, as they happen.

Crash safety: the file is opened unbuffered and the MCAP writer emits a whole chunk at a time,
so a process that dies without :meth:`RecordingWriter.close` loses at most the chunk that was
still open (``chunk_size_bytes``, default 1 MiB); :func:`read_recording` reads a truncated file
up to its last complete record.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
from mcap.exceptions import McapError
from mcap.records import Channel, Message
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer

from exitflow.pipeline.errors import DataError
from exitflow.pipeline.messages import Decision, SensorMessage

log = logging.getLogger(__name__)

SENSOR_ENCODING = "exitflow.sensor.v1"
DECISION_TOPIC = "/decisions"
EVENT_TOPIC = "/events"
SENSOR_TOPIC_PREFIX = "/sensor/"
_HEADER_LEN = struct.Struct("<I")


def encode_sensor_message(msg: SensorMessage) -> bytes:
    """Pack a message into the ``exitflow.sensor.v1`` bytes described in the module doc."""
    header: dict[str, Any] = {
        "modality": msg.modality,
        "source": msg.source,
        "timestamp_ns": int(msg.timestamp_ns),
        "seq": int(msg.seq),
        "source_time_ns": None if msg.source_time_ns is None else int(msg.source_time_ns),
        "sample_rate_hz": msg.sample_rate_hz,
        "meta": msg.meta,
    }
    if isinstance(msg.payload, str):
        header["kind"] = "str"
        body = msg.payload.encode("utf-8")
    elif isinstance(msg.payload, np.ndarray):
        arr = np.ascontiguousarray(msg.payload)
        header.update(kind="ndarray", dtype=arr.dtype.str, shape=list(arr.shape))
        body = arr.tobytes()
    else:
        raise TypeError(
            f"can record str or np.ndarray payloads, got {type(msg.payload).__name__} from {msg.source}"
        )
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _HEADER_LEN.pack(len(head)) + head + body


_HEADER_FIELDS = {"modality", "source", "timestamp_ns", "seq", "source_time_ns", "sample_rate_hz", "meta", "kind",
                  "dtype", "shape"}


def _int_or_none(value: Any, name: str, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"sensor record: {name} must be an integer in [0, 2**63), got {value!r}")
    return value


def decode_sensor_message(data: bytes) -> SensorMessage:
    """Inverse of :func:`encode_sensor_message`.

    Raises:
        ValueError: when the bytes are not a well-formed ``exitflow.sensor.v1`` record (a crafted
            or damaged file): bad header, unknown field, non-numeric dtype, a shape that does not
            match the payload size.
    """
    if len(data) < 4:
        raise ValueError("sensor record: shorter than its header length")
    (n,) = _HEADER_LEN.unpack_from(data, 0)
    if n > len(data) - 4:
        raise ValueError(f"sensor record: header length {n} exceeds the record ({len(data)} bytes)")
    header = json.loads(data[4 : 4 + n].decode("utf-8"))
    if not isinstance(header, dict) or not set(header) <= _HEADER_FIELDS:
        raise ValueError(f"sensor record: header must be an object with fields {sorted(_HEADER_FIELDS)}")
    if not isinstance(header.get("modality"), str) or not isinstance(header.get("source"), str):
        raise ValueError("sensor record: modality and source must be strings")
    header["timestamp_ns"] = _int_or_none(header.get("timestamp_ns"), "timestamp_ns", False)
    header["seq"] = _int_or_none(header.get("seq", 0), "seq", False)
    header["source_time_ns"] = _int_or_none(header.get("source_time_ns"), "source_time_ns", True)
    header["sample_rate_hz"] = _int_or_none(header.get("sample_rate_hz"), "sample_rate_hz", True)
    if not isinstance(header.setdefault("meta", {}), dict):
        raise ValueError("sensor record: meta must be an object")
    body = data[4 + n :]
    kind = header.pop("kind", None)
    if kind == "str":
        payload: Any = body.decode("utf-8")
    elif kind == "ndarray":
        try:
            dtype = np.dtype(str(header.pop("dtype", None)))
        except TypeError as e:
            raise ValueError(f"sensor record: unknown dtype ({e})") from e
        shape = header.pop("shape")
        if dtype.kind not in "biuf" or dtype.hasobject:
            raise ValueError(f"sensor record: payload dtype must be numeric, got {dtype}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"sensor record: shape must be a list of sizes, got {shape!r}")
        if len(shape) > 8 or int(np.prod(shape, dtype=np.float64)) * dtype.itemsize != len(body):
            raise ValueError(f"sensor record: shape {shape} of {dtype} does not match {len(body)} payload bytes")
        payload = np.frombuffer(body, dtype=dtype).reshape(shape).copy()
    else:
        raise ValueError(f"sensor record: kind must be 'str' or 'ndarray', got {kind!r}")
    header.pop("dtype", None)
    header.pop("shape", None)
    return SensorMessage(payload=payload, **header)


class _UnbufferedFile:
    """Hands every write straight to the OS (the MCAP writer would wrap a raw file in a buffer)."""

    def __init__(self, path: Path):
        self._raw = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = self._raw.write(view)
            view = view[n:]
        return len(data)

    def tell(self) -> int:
        return self._raw.tell()

    def flush(self) -> None:
        """Nothing is buffered here."""

    def close(self) -> None:
        self._raw.close()


class RecordingWriter:
    """Writes sensor messages and decisions to one MCAP file; thread-safe.

    Args:
        path: Output ``.mcap`` file (parent folders are created).
        chunk_size_bytes: Chunk size; the most a crash can lose.
        compression: ``"zstd"``, ``"lz4"`` or ``"none"``.
    """

    def __init__(self, path: str | Path, chunk_size_bytes: int = 1 << 20, compression: str = "zstd"):
        codecs = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}
        if compression not in codecs:
            raise ValueError(f"compression must be one of {sorted(codecs)}, got {compression!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = _UnbufferedFile(self.path)
        self._writer = Writer(
            cast(IO[Any], self._file), chunk_size=chunk_size_bytes, compression=codecs[compression]
        )
        self._writer.start(profile="exitflow", library="exitflow")
        self._channels: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.messages_written = 0
        self.decisions_written = 0

    def _channel(self, topic: str, encoding: str) -> int:
        if topic not in self._channels:
            self._channels[topic] = self._writer.register_channel(
                topic=topic, message_encoding=encoding, schema_id=0
            )
        return self._channels[topic]

    def write_message(self, msg: SensorMessage) -> None:
        """Append one raw sensor message (topic ``/sensor/<source>``)."""
        data = encode_sensor_message(msg)
        with self._lock:
            if self._closed:
                return
            channel = self._channel(SENSOR_TOPIC_PREFIX + msg.source, SENSOR_ENCODING)
            self._writer.add_message(
                channel,
                log_time=int(msg.timestamp_ns),
                data=data,
                publish_time=int(msg.timestamp_ns),
                sequence=msg.seq,
            )
            self.messages_written += 1

    def write_decision(self, decision: Decision, log_time_ns: int) -> None:
        """Append one decision (topic ``/decisions``, JSON)."""
        data = json.dumps(decision.to_json_dict(), separators=(",", ":")).encode("utf-8")
        with self._lock:
            if self._closed:
                return
            channel = self._channel(DECISION_TOPIC, "json")
            self._writer.add_message(
                channel, log_time=int(log_time_ns), data=data, publish_time=int(log_time_ns)
            )
            self.decisions_written += 1

    def write_event(self, event: Any) -> None:
        """Append one outage event (topic ``/events``, JSON of ``event.to_json_dict()``)."""
        data = json.dumps(event.to_json_dict(), separators=(",", ":")).encode("utf-8")
        with self._lock:
            if self._closed:
                return
            channel = self._channel(EVENT_TOPIC, "json")
            t_ns = int(event.timestamp_ns)
            self._writer.add_message(channel, log_time=t_ns, data=data, publish_time=t_ns)

    def flush(self) -> None:
        """Close the open chunk now (call periodically to bound what a crash can lose in time too)."""
        with self._lock:
            if not self._closed:
                self._writer.flush()

    def close(self) -> None:
        """Write the open chunk and the summary; the file is complete afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.finish()
            self._file.close()


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


@dataclass
class RecordedEvent:
    """One record read back: a sensor message or a decision dict, at ``log_time_ns``."""

    topic: str
    log_time_ns: int
    message: SensorMessage | None = None
    decision: dict[str, Any] | None = None


def read_recording(path: str | Path, errors: dict[str, int] | None = None) -> Iterator[RecordedEvent]:
    """Every message and decision in file order; a truncated file (crash) ends at its last full chunk.

    A record that does not decode (a crafted or damaged file) is skipped with a warning and
    counted in ``errors`` (``"bad_sensor_record:<ExceptionType>"`` / ``"bad_decision_record:..."``).

    Raises:
        DataError: when the file is missing or is not MCAP at all.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read recording {path}: {e}") from e
    reader = StreamReader(io.BytesIO(raw), validate_crcs=True)
    channels: dict[int, Channel] = {}
    records = reader.records
    count = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except (McapError, struct.error, EOFError, ValueError) as e:
            if count == 0 and len(raw) < 8:
                raise DataError(f"{path} is not an MCAP recording ({e})") from e
            log.warning("recording %s ends early (%s); read %d records before the cut", path, e, count)
            return
        count += 1
        if isinstance(record, Channel):
            channels[record.id] = record
        elif isinstance(record, Message):
            channel = channels.get(record.channel_id)
            if channel is None:
                continue
            kind = "bad_decision_record" if channel.topic == DECISION_TOPIC else "bad_sensor_record"
            try:
                if channel.topic == DECISION_TOPIC:
                    decision = json.loads(record.data)
                    if not isinstance(decision, dict):
                        raise TypeError(f"a decision is a JSON object, got {type(decision).__name__}")
                    event = RecordedEvent(channel.topic, record.log_time, decision=decision)
                elif channel.message_encoding == SENSOR_ENCODING:
                    event = RecordedEvent(channel.topic, record.log_time, message=decode_sensor_message(record.data))
                else:
                    continue
            except Exception as e:  # noqa: BLE001 - one damaged record is skipped, counted
                key = f"{kind}:{type(e).__name__}"
                if errors is not None:
                    errors[key] = errors.get(key, 0) + 1
                log.warning("recording %s: skipped a record on %s (%s: %s)", path, channel.topic, type(e).__name__, e)
                continue
            yield event
