"""The first recording format, ``exitflow.sensor.v1``: read for old recordings, never written.

A sensor message was a little-endian uint32 header length, a JSON header with the
:class:`~pipeline.messages.SensorMessage` fields plus ``dtype``/``shape``, then the raw payload
bytes (ndarray data or UTF-8 text), on a channel without a schema; ``log_time`` was the monotonic
receive time. :func:`encode_sensor_message` stays for tests and the fuzz benchmark.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from exitflow.pipeline.messages import SensorMessage

SENSOR_ENCODING = "exitflow.sensor.v1"
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
