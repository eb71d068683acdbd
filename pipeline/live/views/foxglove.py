"""The remote live view: the live topics on a Foxglove WebSocket server (``foxglove-sdk``).

Off by default (``stream.foxglove: true`` or ``exitflow run --foxglove`` turns it on) and bound to
``stream.foxglove_host`` (default ``127.0.0.1``: only this machine can connect; set the host's
address or ``0.0.0.0`` to let others in, and mind that the protocol has no authentication).
Open Foxglove, "Open connection", ``ws://HOST:8765``, and import ``configs/foxglove_layout.json``.

Topics, with the same schemas and bytes as a recording (:mod:`.mcap_schemas`):

| topic | what |
|---|---|
| ``/sensor/<camera>`` | ``foxglove.CompressedImage`` (or ``RawImage``) |
| ``/sensor/<microphone>`` | ``foxglove.RawAudio`` |
| ``/audio_level/<microphone>`` | JSON ``{rms_dbfs, peak_dbfs}`` of each chunk (for a plot) |
| ``/sensor/<text source>`` | ``foxglove.Log`` |
| ``/decisions`` | JSON decision (prediction, exits per modality, energy, latency) |
| ``/events`` | JSON outage events |
| ``/status`` | JSON power, budget set-point, lambda, latency percentiles, exits histogram |

:class:`FoxgloveLiveServer` has the same ``write_*`` methods as
:class:`~.recording.RecordingWriter`, so the runtime hands it messages the same way;
:class:`FanOut` feeds several such sinks at once.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import threading
import time
from typing import Any, Literal

import numpy as np

from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.live.recording.mcap_schemas import (
    DECISION_TOPIC,
    EVENT_TOPIC,
    SENSOR_TOPIC_PREFIX,
    STATUS_TOPIC,
    ImageFormat,
    SchemaSpec,
    encode_sensor,
    json_schema,
    protobuf_schema,
    sensor_schema_name,
    status_body,
)
from exitflow.pipeline.messages import Decision, SensorMessage

log = logging.getLogger(__name__)

AUDIO_LEVEL_PREFIX = "/audio_level/"
AUDIO_LEVEL_SCHEMA: dict[str, Any] = {
    "title": "exitflow.AudioLevel",
    "type": "object",
    "properties": {
        "rms_dbfs": {"type": "number", "description": "RMS of the chunk, dB relative to full scale"},
        "peak_dbfs": {"type": "number"},
        "monotonic_ns": {"type": "integer"},
    },
}


class FoxgloveServerError(ExitflowError):
    """The Foxglove WebSocket server could not start."""


def audio_level_dbfs(samples: np.ndarray) -> tuple[float, float]:
    """(RMS, peak) of float samples in [-1, 1] in dBFS, floored at -120 dB."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return -120.0, -120.0
    rms = math.sqrt(float(np.mean(x * x)))
    peak = float(np.max(np.abs(x)))
    return max(-120.0, 20 * math.log10(rms or 1e-6)), max(-120.0, 20 * math.log10(peak or 1e-6))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FoxgloveLiveServer:
    """Publishes live messages to Foxglove clients over WebSocket; thread-safe.

    Args:
        host: Address to bind (loopback by default).
        port: Port (0 picks a free one; see :attr:`port`).
        image_format: ``"jpeg"`` or ``"raw"`` for camera topics.
        jpeg_quality: 1-100.
        name: Server name shown in Foxglove.

    Raises:
        FoxgloveServerError: when ``foxglove-sdk`` is missing or the port cannot be bound.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, image_format: ImageFormat = "jpeg",
                 jpeg_quality: int = 75, name: str = "exitflow"):
        try:
            import foxglove
        except ImportError as e:
            raise FoxgloveServerError(
                "the Foxglove live view needs foxglove-sdk: pip install 'foxglove-sdk>=0.30'") from e
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self._foxglove = foxglove
        self.image_format: ImageFormat = image_format
        self.jpeg_quality = int(jpeg_quality)
        self._context = foxglove.Context()
        if not is_loopback(host):
            log.warning("Foxglove live view listens on %s:%s: anyone who reaches it sees the streams "
                        "(no authentication); use 127.0.0.1 to keep it on this machine", host, port)
        try:
            self._server = foxglove.start_server(name=name, host=host, port=int(port), context=self._context)
        except Exception as e:  # noqa: BLE001 - the SDK raises its own error types for bind failures
            raise FoxgloveServerError(
                f"cannot serve the Foxglove live view on {host}:{port} ({e}); pick another "
                "stream.foxglove_port or stop what listens there") from e
        self.host = host
        self.port = int(self._server.port)
        self._channels: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.messages_published = 0

    def _channel(self, topic: str, spec: SchemaSpec | None, json_schema_dict: dict | None = None) -> Any:
        with self._lock:
            channel = self._channels.get(topic)
            if channel is None:
                if json_schema_dict is not None:
                    channel = self._foxglove.Channel(topic, schema=json_schema_dict, context=self._context)
                elif spec is not None:
                    schema = self._foxglove.Schema(name=spec.name, encoding=spec.encoding, data=spec.data)
                    channel = self._foxglove.Channel(topic, schema=schema, message_encoding=spec.message_encoding,
                                                     context=self._context)
                self._channels[topic] = channel
            return channel

    def _log(self, channel: Any, data: bytes | dict) -> None:
        if self._closed:
            return
        channel.log(data, log_time=time.time_ns())
        self.messages_published += 1

    def write_message(self, msg: SensorMessage) -> None:
        """Publish a sensor message (and the level of an audio chunk)."""
        name = sensor_schema_name(msg.modality, self.image_format)
        data = encode_sensor(msg, name, time.time_ns(), self.jpeg_quality)
        self._log(self._channel(SENSOR_TOPIC_PREFIX + msg.source, protobuf_schema(name)), data)
        if msg.modality == "audio":
            rms, peak = audio_level_dbfs(msg.payload)
            level = {"rms_dbfs": rms, "peak_dbfs": peak, "monotonic_ns": int(msg.timestamp_ns)}
            self._log(self._channel(AUDIO_LEVEL_PREFIX + msg.source, None, AUDIO_LEVEL_SCHEMA), level)

    def write_decision(self, decision: Decision, log_time_ns: int) -> None:
        body = {**decision.to_json_dict(), "monotonic_ns": int(log_time_ns)}
        self._log(self._channel(DECISION_TOPIC, None, _schema_dict(DECISION_TOPIC)), body)

    def write_event(self, event: Any) -> None:
        body = {**event.to_json_dict(), "monotonic_ns": int(event.timestamp_ns)}
        self._log(self._channel(EVENT_TOPIC, None, _schema_dict(EVENT_TOPIC)), body)

    def write_status(self, snapshot: dict[str, Any], now_ns: int | None = None) -> None:
        body = status_body(snapshot, time.monotonic_ns() if now_ns is None else int(now_ns))
        self._log(self._channel(STATUS_TOPIC, None, _schema_dict(STATUS_TOPIC)), json.loads(json.dumps(body, default=str)))

    def close(self) -> None:
        """Stop the server (clients see it go away)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.stop()


def _schema_dict(topic: str) -> dict[str, Any]:
    return dict(json.loads(json_schema(topic).data))


class FanOut:
    """Hands each ``write_*`` call to every sink (a recording, a live server); one failing sink
    does not stop the others, and the first error is raised after all were called (so the
    runtime counts it as before)."""

    def __init__(self, *sinks: Any):
        self.sinks = [s for s in sinks if s is not None]

    def _each(self, method: str, *args: Any) -> None:
        error: Exception | None = None
        for sink in self.sinks:
            fn = getattr(sink, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - raised after the other sinks had their turn
                error = error or e
        if error is not None:
            raise error

    def write_message(self, msg: SensorMessage) -> None:
        self._each("write_message", msg)

    def write_decision(self, decision: Decision, log_time_ns: int) -> None:
        self._each("write_decision", decision, log_time_ns)

    def write_event(self, event: Any) -> None:
        self._each("write_event", event)

    def write_status(self, snapshot: dict[str, Any], now_ns: int | None = None) -> None:
        self._each("write_status", snapshot, now_ns)

    def close(self) -> None:
        self._each("close")


def foxglove_layout(cameras: list[str], microphones: list[str], texts: list[str]) -> str:
    """A Foxglove layout (JSON) for these sources' topics: camera and audio on the left; the
    words, energy against the budget, end-to-end latency and the latest decision on the right.
    ``configs/foxglove_layout.json`` is this for ``configs/grid_live.yaml``."""
    import foxglove.layouts as fl

    def split(direction: Literal["row", "column"], *items: tuple[float, Any]) -> Any:
        return fl.SplitContainer(direction=direction, items=[fl.SplitItem(proportion=p, content=c) for p, c in items])

    def plot(title: str, *paths: str) -> Any:
        return fl.PlotPanel(title=title, config=fl.PlotConfig(paths=[fl.PlotSeries(value=p) for p in paths]))

    left: list[tuple[float, Any]] = [
        (3, fl.ImagePanel(title=f"camera {c}", config=fl.ImageConfig(
            image_mode=fl.ImageModeConfig(image_topic=SENSOR_TOPIC_PREFIX + c)))) for c in cameras]
    for m in microphones:
        left.append((1, fl.AudioPanel(config=fl.AudioConfig(topic=SENSOR_TOPIC_PREFIX + m))))
        left.append((1, plot(f"audio level {m} (dBFS)", f"{AUDIO_LEVEL_PREFIX}{m}.rms_dbfs")))
    right: list[tuple[float, Any]] = [
        (1, fl.LogPanel(title=f"text {t}", config=fl.LogConfig(topic_to_render=SENSOR_TOPIC_PREFIX + t)))
        for t in texts]
    right += [
        (1, plot("energy per sample vs budget (mJ)", f"{STATUS_TOPIC}.energy_mj_mean",
                 f"{STATUS_TOPIC}.budget_mj_per_sample")),
        (1, plot("end-to-end latency (ms)", f"{STATUS_TOPIC}.latency_ms.end_to_end.p50",
                 f"{STATUS_TOPIC}.latency_ms.end_to_end.p95")),
        (1, fl.RawMessagesPanel(title="latest decision", config=fl.RawMessagesConfig(topic_path=DECISION_TOPIC))),
    ]
    layout = fl.Layout(content=split("row", (1, split("column", *left)), (1, split("column", *right))))
    return json.dumps(json.loads(layout.to_json()), indent=2) + "\n"
