"""How each live topic is stored in MCAP: Foxglove schemas for sensors, JSON schemas for the rest.

One channel per topic, each with a schema record, so Foxglove (and any MCAP reader) can show it:

| topic | schema | encoding | payload |
|---|---|---|---|
| ``/sensor/<camera>`` | ``foxglove.CompressedImage`` (default, JPEG) or ``foxglove.RawImage`` | protobuf | a frame; ``frame_id`` is the source name |
| ``/sensor/<microphone>`` | ``foxglove.RawAudio`` | protobuf | one chunk: ``pcm-s16`` mono at ``sample_rate`` |
| ``/sensor/<text source>`` | ``foxglove.Log`` | protobuf | one line; ``name`` is the source name, level INFO |
| ``/decisions`` | ``exitflow.Decision`` | json | :meth:`Decision.to_json_dict` plus ``monotonic_ns`` |
| ``/events`` | ``exitflow.OutageEvent`` | json | ``{"outage": {...}}`` plus ``monotonic_ns`` |
| ``/status`` | ``exitflow.Status`` | json | power, budget set-point, latency percentiles, drops (a few per second) |

Times: every ``log_time``/``publish_time`` and every protobuf ``timestamp`` is epoch nanoseconds,
``timestamp_ns + epoch_offset_ns`` where ``timestamp_ns`` is the message's monotonic capture time
on the shared time base and ``epoch_offset_ns`` is measured once when the recording starts and
stored in the ``exitflow.clock`` metadata record. Because the offset is one constant, the
monotonic time of every message comes back exactly (``log_time - epoch_offset_ns``) and intervals
are exact even if the wall clock steps during the run; the JSON channels also carry it as
``monotonic_ns``. The MCAP ``sequence`` field holds the source's ``seq``.

Audio is stored as signed 16-bit PCM (what the PCM sources deliver): float samples in [-1, 1]
round-trip exactly when they came from 16-bit PCM, other float audio is quantized to 16 bits.
JPEG is lossy: a replay sees the decoded frames, the same in every replay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import cv2
import numpy as np
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.Log_pb2 import Log
from foxglove_schemas_protobuf.RawAudio_pb2 import RawAudio
from foxglove_schemas_protobuf.RawImage_pb2 import RawImage
from google.protobuf.message import DecodeError
from mcap_protobuf.schema import build_file_descriptor_set

from exitflow.pipeline.messages import SensorMessage

ImageFormat = Literal["jpeg", "raw"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("jpeg", "raw")

FORMAT = "exitflow.mcap.v2"  # the ``format`` in a recording's ``exitflow`` metadata record
SENSOR_TOPIC_PREFIX = "/sensor/"
DECISION_TOPIC = "/decisions"
EVENT_TOPIC = "/events"
STATUS_TOPIC = "/status"

COMPRESSED_IMAGE = "foxglove.CompressedImage"
RAW_IMAGE = "foxglove.RawImage"
RAW_AUDIO = "foxglove.RawAudio"
LOG = "foxglove.Log"
_PROTO_TYPES: dict[str, Any] = {
    COMPRESSED_IMAGE: CompressedImage,
    RAW_IMAGE: RawImage,
    RAW_AUDIO: RawAudio,
    LOG: Log,
}
MODALITY_OF_SCHEMA = {COMPRESSED_IMAGE: "image", RAW_IMAGE: "image", RAW_AUDIO: "audio", LOG: "text"}

_RAW_ENCODINGS = {1: "mono8", 3: "bgr8", 4: "bgra8"}  # channels -> foxglove.RawImage encoding (uint8)
_CHANNELS_OF_ENCODING = {v: k for k, v in _RAW_ENCODINGS.items()}
_LOG_INFO = Log.Level.INFO

DECISION_SCHEMA: dict[str, Any] = {
    "title": "exitflow.Decision",
    "description": "What the engine did with one sample (see pipeline/messages.py: Decision).",
    "type": "object",
    "properties": {
        "sample_id": {"type": "integer"},
        "prediction": {"type": "integer", "description": "-1 for a failed sample"},
        "system": {"type": "string"},
        "label": {"type": ["integer", "null"]},
        "order": {"type": "array", "items": {"type": "string"}},
        "exits": {"type": "object", "description": "modality -> exit index taken"},
        "exit_layers": {"type": "object"},
        "skipped": {"type": "array", "items": {"type": "string"}},
        "missing": {"type": "array", "items": {"type": "string"}},
        "macs": {"type": "integer"},
        "latency_ms": {"type": "object", "description": "stage -> ms, plus total"},
        "energy_mj": {"type": ["number", "null"]},
        "energy_source": {"type": ["string", "null"]},
        "estimated": {"type": ["boolean", "null"]},
        "lam": {"type": ["number", "null"]},
        "timestamp_ns": {"type": ["integer", "null"], "description": "the sample's monotonic time"},
        "monotonic_ns": {"type": "integer"},
        "error": {"type": "string", "description": "only on a failed sample"},
    },
}
EVENT_SCHEMA: dict[str, Any] = {
    "title": "exitflow.OutageEvent",
    "description": "A source or the engine going down or coming back.",
    "type": "object",
    "properties": {
        "outage": {
            "type": "object",
            "properties": {
                "source": {"type": "string"},
                "event": {"type": "string", "enum": ["actor_down", "actor_up", "disconnected", "reconnected"]},
                "reason": {"type": "string"},
                "timestamp_ns": {"type": "integer"},
            },
        },
        "monotonic_ns": {"type": "integer"},
    },
}
STATUS_SCHEMA: dict[str, Any] = {
    "title": "exitflow.Status",
    "description": "Power, budget and latency of a live run, a few times per second.",
    "type": "object",
    "properties": {
        "monotonic_ns": {"type": "integer"},
        "energy_mj_mean": {"type": ["number", "null"], "description": "rolling mean per sample"},
        "energy_source": {"type": ["string", "null"]},
        "estimated": {"type": ["boolean", "null"]},
        "budget_mj_per_sample": {"type": ["number", "null"], "description": "the set-point"},
        "budget_power_w": {"type": ["number", "null"]},
        "lam": {"type": ["number", "null"]},
        "decisions": {"type": "integer"},
        "failed": {"type": "integer"},
        "latency_ms": {"type": "object", "description": "stage -> {p50, p95, p99, n}"},
        "exits": {"type": "object", "description": "modality -> {exit: count}"},
        "recalibration": {"type": ["object", "null"], "description": "online recalibration: target and measured "
                          "disagreement with the full path, shadow share, shift, thresholds (null: off)"},
        "overload": {"type": ["object", "null"], "description": "overloaded flag, measured capacity_sps "
                     "(samples/s), shed samples by reason (shed_total)"},
        "accuracy": {"type": ["object", "null"], "description": "live accuracy over decisions whose label "
                     "arrived: labelled, correct, accuracy"},
    },
}
JSON_SCHEMAS = {DECISION_TOPIC: DECISION_SCHEMA, EVENT_TOPIC: EVENT_SCHEMA, STATUS_TOPIC: STATUS_SCHEMA}


@dataclass(frozen=True)
class SchemaSpec:
    """A schema record's fields and the message encoding of its channel."""

    name: str
    encoding: str  # "protobuf" or "jsonschema"
    data: bytes
    message_encoding: str  # "protobuf" or "json"


def status_body(snapshot: dict[str, Any], monotonic_ns: int) -> dict[str, Any]:
    """The ``/status`` message (power, budget, lambda, counts, latency, exits) of a live-stats snapshot."""
    budget = snapshot.get("budget") or {}
    return {
        "monotonic_ns": int(monotonic_ns),
        "energy_mj_mean": snapshot.get("energy_mj_mean"),
        "energy_source": snapshot.get("energy_source"),
        "estimated": snapshot.get("estimated"),
        "budget_mj_per_sample": budget.get("mj_per_sample"),
        "budget_power_w": budget.get("power_w"),
        "lam": snapshot.get("lam"),
        "decisions": snapshot.get("decisions_total", snapshot.get("decisions", 0)),
        "failed": snapshot.get("failed_decisions", snapshot.get("failed", 0)),
        "latency_ms": snapshot.get("latency_ms", {}),
        "exits": snapshot.get("exits", {}),
        "recalibration": snapshot.get("recalibration"),
        "overload": snapshot.get("overload"),
        "accuracy": snapshot.get("accuracy"),
    }


@cache
def protobuf_schema(name: str) -> SchemaSpec:
    """The schema record of one of the Foxglove protobuf schemas used here."""
    if name not in _PROTO_TYPES:
        raise ValueError(f"no protobuf schema {name!r}; known: {sorted(_PROTO_TYPES)}")
    data = build_file_descriptor_set(_PROTO_TYPES[name]).SerializeToString()
    return SchemaSpec(name, "protobuf", data, "protobuf")


@cache
def json_schema(topic: str) -> SchemaSpec:
    """The JSON schema record of ``/decisions``, ``/events`` or ``/status``."""
    if topic not in JSON_SCHEMAS:
        raise ValueError(f"no JSON schema for topic {topic!r}; known: {sorted(JSON_SCHEMAS)}")
    schema = JSON_SCHEMAS[topic]
    return SchemaSpec(schema["title"], "jsonschema", json.dumps(schema).encode("utf-8"), "json")


def sensor_schema_name(modality: str, image_format: ImageFormat) -> str:
    """The schema a sensor of ``modality`` is recorded with."""
    if modality == "image":
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        return COMPRESSED_IMAGE if image_format == "jpeg" else RAW_IMAGE
    if modality == "audio":
        return RAW_AUDIO
    if modality == "text":
        return LOG
    raise ValueError(f"modality must be 'image', 'audio' or 'text', got {modality!r}")


def _set_time(stamp: Any, epoch_ns: int) -> None:
    stamp.seconds, stamp.nanos = divmod(int(epoch_ns), 1_000_000_000)


def _time_ns(stamp: Any) -> int:
    return int(stamp.seconds) * 1_000_000_000 + int(stamp.nanos)


def _image_array(payload: Any, source: str) -> np.ndarray:
    if not isinstance(payload, np.ndarray) or payload.dtype != np.uint8:
        raise TypeError(f"{source}: a camera frame must be a uint8 array, got {type(payload).__name__}"
                        f"{'' if not isinstance(payload, np.ndarray) else ' of ' + str(payload.dtype)}")
    channels = 1 if payload.ndim == 2 else (payload.shape[2] if payload.ndim == 3 else 0)
    if channels not in _RAW_ENCODINGS or min(payload.shape[:2], default=0) < 1:
        raise ValueError(f"{source}: a camera frame must be HxW or HxWx(1|3|4), got shape {payload.shape}")
    return payload


def encode_sensor(
    msg: SensorMessage, schema_name: str, epoch_ns: int, jpeg_quality: int = 75
) -> bytes:
    """A sensor message as the protobuf bytes of ``schema_name`` (see the module doc).

    Raises:
        TypeError: a payload of the wrong type for its schema (e.g. text on an image channel).
        ValueError: a frame of an unsupported shape, non-finite audio, a failed JPEG encode.
    """
    if schema_name in (COMPRESSED_IMAGE, RAW_IMAGE):
        frame = _image_array(msg.payload, msg.source)
        if schema_name == COMPRESSED_IMAGE:
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            if not ok:
                raise ValueError(f"{msg.source}: JPEG encoding of a {frame.shape} frame failed")
            out: Any = CompressedImage(frame_id=msg.source, data=buf.tobytes(), format="jpeg")
        else:
            channels = 1 if frame.ndim == 2 else frame.shape[2]
            frame = np.ascontiguousarray(frame)
            out = RawImage(
                frame_id=msg.source, width=frame.shape[1], height=frame.shape[0],
                encoding=_RAW_ENCODINGS[channels], step=frame.shape[1] * channels, data=frame.tobytes(),
            )
    elif schema_name == RAW_AUDIO:
        samples = msg.payload
        if not isinstance(samples, np.ndarray) or samples.dtype.kind != "f" or samples.ndim != 1:
            raise TypeError(f"{msg.source}: audio must be a 1-D float array, got {type(samples).__name__}")
        if not np.isfinite(samples).all():
            raise ValueError(f"{msg.source}: audio with NaN/inf cannot be stored as pcm-s16")
        if not msg.sample_rate_hz:
            raise ValueError(f"{msg.source}: an audio message needs sample_rate_hz")
        pcm = np.clip(np.rint(samples.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
        out = RawAudio(data=pcm.tobytes(), format="pcm-s16", sample_rate=int(msg.sample_rate_hz),
                       number_of_channels=1)
    elif schema_name == LOG:
        if not isinstance(msg.payload, str):
            raise TypeError(f"{msg.source}: text must be a str, got {type(msg.payload).__name__}")
        out = Log(level=_LOG_INFO, message=msg.payload, name=msg.source)
    else:
        raise ValueError(f"no sensor schema {schema_name!r}; known: {sorted(MODALITY_OF_SCHEMA)}")
    _set_time(out.timestamp, epoch_ns)
    return bytes(out.SerializeToString())


def decode_sensor(
    schema_name: str, data: bytes, source: str, monotonic_ns: int, seq: int
) -> SensorMessage:
    """Inverse of :func:`encode_sensor`: a :class:`SensorMessage` at ``monotonic_ns``.

    Raises:
        ValueError: bytes that do not parse, a JPEG that does not decode, a frame or audio
            chunk whose declared size does not match its data.
    """
    kind = _PROTO_TYPES.get(schema_name)
    if kind is None:
        raise ValueError(f"no sensor schema {schema_name!r}; known: {sorted(MODALITY_OF_SCHEMA)}")
    try:
        msg = kind.FromString(data)
    except DecodeError as e:
        raise ValueError(f"{source}: {schema_name} does not parse ({e})") from e
    modality = MODALITY_OF_SCHEMA[schema_name]
    meta: dict[str, Any] = {"epoch_ns": _time_ns(msg.timestamp)}
    rate: int | None = None
    payload: Any
    if schema_name == COMPRESSED_IMAGE:
        if msg.format not in ("jpeg", "png", "webp"):
            raise ValueError(f"{source}: image format {msg.format!r} is not one exitflow reads")
        frame = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_UNCHANGED) if msg.data else None
        if frame is None:
            raise ValueError(f"{source}: a {msg.format} frame does not decode ({len(msg.data)} bytes)")
        payload = frame
    elif schema_name == RAW_IMAGE:
        channels = _CHANNELS_OF_ENCODING.get(msg.encoding)
        if channels is None:
            raise ValueError(f"{source}: raw image encoding {msg.encoding!r} is not one of {sorted(_CHANNELS_OF_ENCODING)}")
        h, w = int(msg.height), int(msg.width)
        if h < 1 or w < 1 or msg.step != w * channels or len(msg.data) != h * w * channels:
            raise ValueError(f"{source}: raw image {w}x{h}x{channels} (step {msg.step}) does not match "
                             f"{len(msg.data)} bytes")
        arr = np.frombuffer(msg.data, np.uint8)
        payload = (arr.reshape(h, w) if channels == 1 else arr.reshape(h, w, channels)).copy()
    elif schema_name == RAW_AUDIO:
        if msg.format != "pcm-s16" or msg.number_of_channels != 1 or len(msg.data) % 2:
            raise ValueError(f"{source}: audio must be mono pcm-s16, got {msg.format!r} x "
                             f"{msg.number_of_channels} ({len(msg.data)} bytes)")
        if not 1000 <= msg.sample_rate <= 384000:
            raise ValueError(f"{source}: sample rate {msg.sample_rate} Hz is out of range")
        payload = np.frombuffer(msg.data, "<i2").astype(np.float32) / np.float32(32768.0)
        rate = int(msg.sample_rate)
    else:
        payload = str(msg.message)
    return SensorMessage(modality=modality, source=source, timestamp_ns=int(monotonic_ns), payload=payload,
                         seq=int(seq), sample_rate_hz=rate, meta=meta)
