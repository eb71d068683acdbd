"""Record a live run to MCAP that Foxglove and any MCAP reader open.

What goes where (schemas, times, metadata) is described in :mod:`.mcap_schemas`; in short:
camera frames as ``foxglove.CompressedImage`` (JPEG) or ``foxglove.RawImage``, audio as
``foxglove.RawAudio`` (pcm-s16), text as ``foxglove.Log``, decisions, outage events and a status
stream (power, budget set-point, latency) as JSON-schema channels; ``log_time`` in epoch ns.
Metadata records ``exitflow`` (format, version, git revision, host, meter), ``exitflow.clock``
(the epoch offset that turns every ``log_time`` back into the monotonic ``timestamp_ns``) and
``exitflow.config`` (the whole config as YAML, also attached as ``config.yaml``) come first in the
file, so even a cut file keeps them.

Crash safety: the file is opened unbuffered; the open chunk is written when it reaches
``chunk_size_bytes`` and at the latest every ``flush_interval_s`` (a background thread), so a
process that dies loses at most that much time of recording. :mod:`.reader` reads recordings
back; :class:`~exitflow.pipeline.live.core.endpoints.DecisionLog` streams decisions and outage
events to a JSONL file instead.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO, Any, cast

from mcap.writer import CompressionType, Writer

from exitflow.pipeline.live.recording.mcap_schemas import (
    DECISION_TOPIC,
    EVENT_TOPIC,
    FORMAT,
    IMAGE_FORMATS,
    SENSOR_TOPIC_PREFIX,
    STATUS_TOPIC,
    ImageFormat,
    encode_sensor,
    json_schema,
    protobuf_schema,
    sensor_schema_name,
    status_body,
)
from exitflow.pipeline.messages import Decision, SensorMessage

log = logging.getLogger(__name__)

__all__ = ["RecordingWriter", "recording_metadata"]


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def recording_metadata(cfg: Any = None) -> dict[str, str]:
    """The ``exitflow`` metadata record: version, git revision, host and the power meter setting."""
    try:
        version = importlib_metadata.version("exitflow")
    except importlib_metadata.PackageNotFoundError:
        version = "unknown"
    power = getattr(cfg, "power", None)
    meter = "unknown" if power is None else (
        f"meter={power.meter} device_profile={power.device_profile}"
        + (f" replay_trace={power.replay_trace}" if power.replay_trace else ""))
    return {"format": FORMAT, "exitflow_version": version, "git_revision": _git_revision(),
            "host": socket.gethostname(), "meter": meter, "engine": str(getattr(getattr(cfg, "stream", None),
                                                                                  "engine", "unknown"))}


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
    """Writes sensor messages, decisions, outage events and status to one MCAP file; thread-safe.

    Args:
        path: Output ``.mcap`` file (parent folders are created).
        chunk_size_bytes: A chunk is written when it grows past this.
        compression: ``"zstd"``, ``"lz4"`` or ``"none"``.
        image_format: ``"jpeg"`` (``foxglove.CompressedImage``) or ``"raw"`` (``foxglove.RawImage``).
        jpeg_quality: 1-100.
        image_max_side_px: Frames larger than this on their longer side are scaled down before
            they are stored (None: stored at full size).
        flush_interval_s: The open chunk is written at least this often (0: only when full).
        metadata: Extra entries for the ``exitflow`` metadata record (see :func:`recording_metadata`).
        config_yaml: The run's config, stored as metadata and attached as ``config.yaml``.
    """

    def __init__(
        self,
        path: str | Path,
        chunk_size_bytes: int = 1 << 20,
        compression: str = "zstd",
        image_format: ImageFormat = "jpeg",
        jpeg_quality: int = 75,
        image_max_side_px: int | None = None,
        flush_interval_s: float = 1.0,
        metadata: dict[str, str] | None = None,
        config_yaml: str | None = None,
    ):
        codecs = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}
        if compression not in codecs:
            raise ValueError(f"compression must be one of {sorted(codecs)}, got {compression!r}")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        if image_max_side_px is not None and image_max_side_px < 8:
            raise ValueError(f"image_max_side_px must be at least 8 (or None), got {image_max_side_px}")
        if not flush_interval_s >= 0:
            raise ValueError(f"flush_interval_s must be >= 0 (0 = only full chunks), got {flush_interval_s}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.image_format: ImageFormat = image_format
        self.jpeg_quality = int(jpeg_quality)
        self.image_max_side_px = image_max_side_px
        # one constant: log_time (epoch) - epoch_offset_ns == the message's monotonic timestamp_ns
        self.epoch_offset_ns = time.time_ns() - time.monotonic_ns()
        self._file = _UnbufferedFile(self.path)
        self._writer = Writer(
            cast(IO[Any], self._file), chunk_size=chunk_size_bytes, compression=codecs[compression]
        )
        self._writer.start(profile="", library="exitflow")
        self._writer.add_metadata("exitflow", {**recording_metadata(), **(metadata or {})})
        self._writer.add_metadata("exitflow.clock", {
            "epoch_offset_ns": str(self.epoch_offset_ns),
            "meaning": "log_time and publish_time are epoch ns = monotonic timestamp_ns + epoch_offset_ns",
            "monotonic_clock": "time.monotonic_ns() of the driver's host",
            "image_format": image_format, "jpeg_quality": str(self.jpeg_quality),
            "image_max_side_px": str(image_max_side_px or ""),
        })
        if config_yaml is not None:
            self._writer.add_metadata("exitflow.config", {"yaml": config_yaml})
            self._writer.add_attachment(time.time_ns(), time.time_ns(), "config.yaml", "application/yaml",
                                        config_yaml.encode("utf-8"))
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, tuple[int, str]] = {}  # topic -> (channel id, schema name)
        self._lock = threading.Lock()
        self._closed = False
        self._dirty = False
        self.messages_written = 0
        self.decisions_written = 0
        self.bytes_in = 0  # payload bytes handed to the writer (after image/audio encoding)
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if flush_interval_s > 0:
            self._flusher = threading.Thread(target=self._flush_loop, args=(flush_interval_s,),
                                             name="mcap-flush", daemon=True)
            self._flusher.start()

    def _flush_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 - a full disk: logged, the writer calls will raise too
                log.warning("recording %s: periodic flush failed (%s)", self.path, e)

    def _channel(self, topic: str, schema: Any) -> int:
        """Channel id of ``topic`` (registered with its schema on first use). Call under the lock."""
        if topic not in self._channels:
            if schema.name not in self._schemas:
                self._schemas[schema.name] = self._writer.register_schema(schema.name, schema.encoding, schema.data)
            cid = self._writer.register_channel(topic, schema.message_encoding, self._schemas[schema.name])
            self._channels[topic] = (cid, schema.name)
        return self._channels[topic][0]

    def _add(self, topic: str, schema: Any, data: bytes, monotonic_ns: int, sequence: int = 0) -> bool:
        t_ns = int(monotonic_ns) + self.epoch_offset_ns
        with self._lock:
            if self._closed:
                return False
            self._writer.add_message(self._channel(topic, schema), log_time=t_ns, data=data,
                                     publish_time=t_ns, sequence=sequence & 0xFFFFFFFF)
            self._dirty = True
            self.bytes_in += len(data)
        return True

    def _shrink(self, frame: Any) -> Any:
        import cv2

        side = max(frame.shape[:2])
        if self.image_max_side_px is None or side <= self.image_max_side_px:
            return frame
        scale = self.image_max_side_px / side
        size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)

    def write_message(self, msg: SensorMessage) -> None:
        """Append one sensor message on ``/sensor/<source>`` with its modality's Foxglove schema; a
        source that sends several modalities (a robot's camera and microphone from one source) keeps
        ``/sensor/<source>`` for the first and records each other on ``/sensor/<source>/<modality>``.

        Raises:
            TypeError, ValueError: a payload its schema cannot hold (see :func:`encode_sensor`).
        """
        topic = SENSOR_TOPIC_PREFIX + msg.source
        name = sensor_schema_name(msg.modality, self.image_format)
        known = self._channels.get(topic)
        if known is not None and known[1] != name:
            topic = f"{topic}/{msg.modality}"
        if msg.modality == "image" and self.image_max_side_px is not None and hasattr(msg.payload, "shape"):
            msg = SensorMessage(msg.modality, msg.source, msg.timestamp_ns, self._shrink(msg.payload), msg.seq,
                                msg.source_time_ns, msg.sample_rate_hz, msg.meta)
        data = encode_sensor(msg, name, int(msg.timestamp_ns) + self.epoch_offset_ns, self.jpeg_quality)
        if self._add(topic, protobuf_schema(name), data, msg.timestamp_ns, int(msg.seq)):
            self.messages_written += 1

    def write_decision(self, decision: Decision, log_time_ns: int) -> None:
        """Append one decision on ``/decisions`` at the sample's monotonic ``log_time_ns``."""
        body = {**decision.to_json_dict(), "monotonic_ns": int(log_time_ns)}
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        if self._add(DECISION_TOPIC, json_schema(DECISION_TOPIC), data, log_time_ns):
            self.decisions_written += 1

    def write_event(self, event: Any) -> None:
        """Append one outage event (``event.to_json_dict()``) on ``/events``."""
        t_ns = int(event.timestamp_ns)
        data = json.dumps({**event.to_json_dict(), "monotonic_ns": t_ns}, separators=(",", ":")).encode("utf-8")
        self._add(EVENT_TOPIC, json_schema(EVENT_TOPIC), data, t_ns)

    def write_status(self, snapshot: dict[str, Any], now_ns: int | None = None) -> None:
        """Append power, budget set-point and latency from a pipeline snapshot on ``/status``."""
        t_ns = time.monotonic_ns() if now_ns is None else int(now_ns)
        body = status_body(snapshot, t_ns)
        data = json.dumps(body, separators=(",", ":"), default=str).encode("utf-8")
        self._add(STATUS_TOPIC, json_schema(STATUS_TOPIC), data, t_ns)

    def flush(self) -> None:
        """Write the open chunk now (the background thread does this every ``flush_interval_s``)."""
        with self._lock:
            if not self._closed and self._dirty:
                self._writer.flush()
                self._dirty = False

    def close(self) -> None:
        """Write the open chunk and the summary; the file is complete afterwards."""
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5.0)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.finish()
            self._file.close()
