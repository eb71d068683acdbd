"""Stage 1 of the live data flow: sensor sources (camera, microphone, text, a recording).

Every source is a plain class with ``read() -> SensorMessage | None``, reconnect with backoff,
and ``health()``; :func:`build_source` makes one from a ``stream.sources`` config entry. The
runtimes (:mod:`exitflow.pipeline.live.runtime`) read them on threads or inside Ray actors.
Imports: :mod:`~exitflow.pipeline.live.core` and :mod:`~exitflow.pipeline.live.recording` (a
recorded source plays a recording), nothing above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exitflow.pipeline.config import SourceConfig
from exitflow.pipeline.live.core.backoff import Backoff
from exitflow.pipeline.live.core.clocks import SourceClock
from exitflow.pipeline.live.core.endpoints import source_modality
from exitflow.pipeline.live.sources.base import Source, SourceDisconnected, SourceError, SourceHealth
from exitflow.pipeline.live.sources.camera import CameraSource
from exitflow.pipeline.live.sources.microphone import AudioFileSource, MicrophoneSource, PcmSocketSource
from exitflow.pipeline.live.sources.text import StdinTextSource, TextFileSource, TextSocketSource

__all__ = [
    "AudioFileSource",
    "CameraSource",
    "MicrophoneSource",
    "PcmSocketSource",
    "Source",
    "SourceDisconnected",
    "SourceError",
    "SourceHealth",
    "SkewedSourceFactory",
    "StdinTextSource",
    "TextFileSource",
    "TextSocketSource",
    "build_source",
    "split_host_port",
]


def split_host_port(uri: str, source_name: str) -> tuple[str, int]:
    """``"127.0.0.1:5000"`` -> ``("127.0.0.1", 5000)``.

    Raises:
        SourceError: when ``uri`` is not ``host:port``.
    """
    text = uri.split("://", 1)[-1]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SourceError(
            f"source '{source_name}': expected uri 'host:port' (e.g. 127.0.0.1:5000), got {uri!r}"
        )
    return host, int(port)


@dataclass(frozen=True)
class SkewedSourceFactory:
    """Builds ``spec``'s source on a clock ``offset_ns`` off this host's (a simulated robot whose
    clock is wrong: the clock-offset tests and the fleet benchmark). Picklable, so a Ray source
    actor can build it too.

    Args:
        spec: The source to build.
        offset_ns: Added to the source's clock.
        audio_rate_hz: Rate the pipeline wants for audio.
    """

    spec: SourceConfig
    offset_ns: int = 0
    audio_rate_hz: int | None = None

    @property
    def modality(self) -> str:
        return source_modality(self.spec)

    def __call__(self) -> Source:
        source = build_source(self.spec, self.audio_rate_hz)
        source.clock = SourceClock(self.offset_ns)
        return source


def build_source(
    spec: SourceConfig, audio_rate_hz: int | None = None, backoff: Backoff | None = None
) -> Source:
    """Make the source ``spec`` describes.

    Args:
        spec: One ``stream.sources`` entry.
        audio_rate_hz: Rate the pipeline wants for audio (sources resample or reject per spec).
        backoff: Reconnect policy shared by the source.
    """
    audio: dict[str, Any] = {
        "sample_rate_hz": spec.sample_rate_hz,
        "target_rate_hz": audio_rate_hz,
        "on_rate_mismatch": spec.on_rate_mismatch,
        "chunk_ms": spec.chunk_ms,
        "backoff": backoff,
    }
    text: dict[str, Any] = {"max_rate_hz": spec.max_rate_hz, "backoff": backoff}
    if spec.kind == "camera":
        shape = (spec.height, spec.width) if spec.height and spec.width else None
        return CameraSource(
            spec.uri,
            spec.name,
            gray=spec.gray,
            expected_shape=shape,
            realtime=spec.realtime,
            loop=spec.loop,
            backoff=backoff,
        )
    if spec.kind in ("pcm_tcp", "pcm_udp"):
        host, port = split_host_port(spec.uri, spec.name)
        return PcmSocketSource(
            host, port, protocol=spec.kind[4:], name=spec.name, allowed_peers=spec.allowed_peers, **audio
        )
    if spec.kind == "audio_file":
        return AudioFileSource(spec.uri, spec.name, realtime=spec.realtime, loop=spec.loop, **audio)
    if spec.kind == "microphone":
        device: int | str | None = int(spec.uri) if spec.uri.isdigit() else (spec.uri or None)
        return MicrophoneSource(device, spec.name, **audio)
    if spec.kind == "text_stdin":
        return StdinTextSource(spec.name, **text)
    if spec.kind in ("text_file", "text_jsonl"):
        return TextFileSource(
            spec.uri,
            spec.name,
            jsonl=spec.kind == "text_jsonl",
            line_rate_hz=spec.line_rate_hz,
            realtime=spec.realtime,
            loop=spec.loop,
            **text,
        )
    if spec.kind == "text_tcp":
        host, port = split_host_port(spec.uri, spec.name)
        return TextSocketSource(host, port, spec.name, allowed_peers=spec.allowed_peers, **text)
    raise SourceError(f"source '{spec.name}': unknown kind {spec.kind!r}")
