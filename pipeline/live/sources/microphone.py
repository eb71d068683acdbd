"""Microphone sources: a sound card (``sounddevice``), raw PCM over TCP/UDP, a WAV/FLAC file.

Every audio message carries float32 mono samples in [-1, 1] and ``sample_rate_hz``. When a
stream's rate differs from ``target_rate_hz`` the source either resamples (policy
``"resample"``, one warning, counted as ``resampled``) or refuses to start with an error
saying which rate arrived and which the pipeline expects (policy ``"reject"``).
``sounddevice`` is an optional extra (``pip install exitflow[mic]``) that also needs PortAudio
and an input device; without them the source fails with an error saying so.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from typing import Any

import numpy as np

from exitflow.pipeline.live.sources.base import (
    Backoff,
    EndOfStream,
    Pacer,
    Source,
    SourceDisconnected,
    SourceError,
    check_peer,
)
from exitflow.pipeline.messages import SensorMessage

log = logging.getLogger(__name__)

PCM_DTYPES: dict[str, np.dtype[Any]] = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


def resample_audio(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample float32 mono audio from ``from_hz`` to ``to_hz`` (librosa, as the data sets do)."""
    if from_hz == to_hz:
        return samples.astype(np.float32, copy=False)
    import librosa

    return librosa.resample(samples.astype(np.float32), orig_sr=int(from_hz), target_sr=int(to_hz)).astype(
        np.float32
    )


def pcm_to_float(raw: bytes, fmt: str, channels: int) -> np.ndarray:
    """Interleaved PCM bytes -> float32 mono (channels averaged)."""
    dtype = PCM_DTYPES[fmt]
    usable = len(raw) - len(raw) % (dtype.itemsize * channels)
    x = np.frombuffer(raw[:usable], dtype=dtype)
    x = x.astype(np.float32) / 32768.0 if fmt == "s16le" else x.astype(np.float32)
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x


class AudioSource(Source):
    """Shared rate handling and message building for the audio sources.

    Args:
        name: Source name.
        sample_rate_hz: Rate the stream delivers.
        target_rate_hz: Rate the pipeline wants; None keeps the stream's rate.
        on_rate_mismatch: ``"resample"`` or ``"reject"``.
        chunk_ms: Duration of one message.
        backoff: Reconnect policy.
    """

    modality = "audio"

    def __init__(
        self,
        name: str,
        sample_rate_hz: int,
        target_rate_hz: int | None = None,
        on_rate_mismatch: str = "resample",
        chunk_ms: float = 100.0,
        backoff: Backoff | None = None,
    ):
        super().__init__(name, "audio", backoff)
        if on_rate_mismatch not in ("resample", "reject"):
            raise ValueError(f"on_rate_mismatch must be 'resample' or 'reject', got {on_rate_mismatch!r}")
        if sample_rate_hz <= 0 or chunk_ms <= 0:
            raise ValueError(f"sample_rate_hz and chunk_ms must be > 0, got {sample_rate_hz}, {chunk_ms}")
        self.sample_rate_hz = int(sample_rate_hz)
        self.target_rate_hz = int(target_rate_hz) if target_rate_hz else None
        self.on_rate_mismatch = on_rate_mismatch
        self.chunk_ms = chunk_ms
        self._samples_done = 0
        self._warned = False

    @property
    def chunk_samples(self) -> int:
        return max(1, int(round(self.sample_rate_hz * self.chunk_ms / 1000.0)))

    def check_rate(self, actual_hz: int) -> None:
        """Apply the mismatch policy to a stream running at ``actual_hz``.

        Raises:
            SourceError: under ``"reject"`` when the rates differ.
        """
        self.sample_rate_hz = int(actual_hz)
        if self.target_rate_hz is None or actual_hz == self.target_rate_hz:
            return
        if self.on_rate_mismatch == "reject":
            raise SourceError(
                f"audio source '{self.name}' delivers {actual_hz} Hz but the pipeline expects "
                f"{self.target_rate_hz} Hz; set on_rate_mismatch: resample or fix the stream's rate"
            )
        if not self._warned:
            log.warning(
                "audio source %s: resampling %d Hz -> %d Hz", self.name, actual_hz, self.target_rate_hz
            )
            self._warned = True

    def audio_message(self, samples: np.ndarray) -> SensorMessage | None:
        """A message from float32 mono ``samples`` at the stream rate (resampled if needed)."""
        if samples.size == 0:
            return None
        if not np.all(np.isfinite(samples)):
            self.count_drop("non_finite")
            return None
        source_time_ns = int(self._samples_done / self.sample_rate_hz * 1e9)
        self._samples_done += samples.size
        rate = self.sample_rate_hz
        if self.target_rate_hz is not None and rate != self.target_rate_hz:
            samples = resample_audio(samples, rate, self.target_rate_hz)
            rate = self.target_rate_hz
            self.dropped["resampled"] = self.dropped.get("resampled", 0) + 1
        return self.new_message(
            np.ascontiguousarray(samples, dtype=np.float32),
            source_time_ns=source_time_ns,
            sample_rate_hz=rate,
        )


class PcmSocketSource(AudioSource):
    """Raw PCM over TCP (connects to a server, e.g. ``ffmpeg ... tcp://host:port?listen=1``) or UDP
    (binds ``host:port`` and receives datagrams, e.g. ``ffmpeg ... udp://host:port``).

    Args:
        host: Address to connect to (TCP) or bind (UDP).
        port: Port.
        protocol: ``"tcp"`` or ``"udp"``.
        fmt: ``"s16le"`` or ``"f32le"``.
        channels: Interleaved channels (mixed to mono).
        timeout_s: Socket timeout per read; a TCP stream silent for ``stall_s`` reconnects.
        allowed_peers: Peer IP addresses accepted (empty: any). UDP datagrams from anyone else
            are dropped and counted as ``peer_refused``; a TCP server outside the list fails the
            source with an error.
        **kwargs: See :class:`AudioSource`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        protocol: str = "tcp",
        fmt: str = "s16le",
        channels: int = 1,
        name: str = "mic0",
        timeout_s: float = 0.05,
        stall_s: float = 3.0,
        allowed_peers: tuple[str, ...] | list[str] = (),
        **kwargs: Any,
    ):
        super().__init__(name, **kwargs)
        self.allowed_peers = frozenset(allowed_peers)
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be 'tcp' or 'udp', got {protocol!r}")
        if fmt not in PCM_DTYPES:
            raise ValueError(f"fmt must be one of {sorted(PCM_DTYPES)}, got {fmt!r}")
        self.host, self.port, self.protocol, self.fmt, self.channels = (
            host,
            int(port),
            protocol,
            fmt,
            channels,
        )
        self.timeout_s, self.stall_s = timeout_s, stall_s
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._silent_s = 0.0

    def _open(self) -> None:
        self.check_rate(self.sample_rate_hz)
        if self.protocol == "tcp":
            sock = socket.create_connection((self.host, self.port), timeout=1.0)
            check_peer(sock, self.allowed_peers, self.name)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        sock.settimeout(self.timeout_s)
        self._sock = sock
        self._buf.clear()
        self._silent_s = 0.0

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read_raw(self) -> SensorMessage | None:
        if self._sock is None:
            raise SourceDisconnected("socket is closed")
        frame_bytes = PCM_DTYPES[self.fmt].itemsize * self.channels
        want = self.chunk_samples * frame_bytes
        if len(self._buf) >= want:
            return self._take_chunk(want)
        try:
            if self.protocol == "udp" and self.allowed_peers:
                data, peer = self._sock.recvfrom(65536)
                if peer[0] not in self.allowed_peers:
                    self.count_drop("peer_refused")
                    return None
            else:
                data = self._sock.recv(65536)
        except TimeoutError:
            data = None
        if data is None:
            self._silent_s += self.timeout_s
            if self.protocol == "tcp" and self._silent_s >= self.stall_s:
                raise SourceDisconnected(f"no PCM for {self.stall_s} s")
            return None
        if data == b"" and self.protocol == "tcp":
            raise SourceDisconnected("peer closed the PCM stream")
        self._silent_s = 0.0
        self._buf.extend(data)
        if len(self._buf) < want:
            return None
        return self._take_chunk(want)

    def _take_chunk(self, want: int) -> SensorMessage | None:
        raw = bytes(self._buf[:want])
        del self._buf[:want]
        return self.audio_message(pcm_to_float(raw, self.fmt, self.channels))


class AudioFileSource(AudioSource):
    """A WAV/FLAC file (``soundfile``), paced to real time unless ``realtime=False``.

    Args:
        path: Audio file.
        realtime: Pace chunks to the file's rate.
        loop: Start over at the end instead of finishing.
        **kwargs: See :class:`AudioSource` (``sample_rate_hz`` is read from the file).
    """

    def __init__(
        self, path: str, name: str = "mic0", realtime: bool = True, loop: bool = False, **kwargs: Any
    ):
        kwargs.setdefault("sample_rate_hz", 16000)
        super().__init__(name, **kwargs)
        self.path, self.realtime, self.loop = path, realtime, loop
        self._file: Any = None
        self._pacer = Pacer()
        self._pos = 0

    def _open(self) -> None:
        import soundfile

        try:
            self._file = soundfile.SoundFile(self.path)
        except (RuntimeError, soundfile.LibsndfileError) as e:
            raise SourceDisconnected(f"cannot open audio file {self.path}: {e}") from e
        self.check_rate(self._file.samplerate)
        self._pacer.reset()
        self._pos = 0

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _read_raw(self) -> SensorMessage | None:
        if self._file is None:
            raise SourceDisconnected("file is closed")
        if self.realtime and not self._pacer.wait(int(self._pos / self.sample_rate_hz * 1e9)):
            return None
        block = self._file.read(self.chunk_samples, dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            if self.loop:
                self._file.seek(0)
                self._pos = 0
                self._pacer.reset()
                return None
            raise EndOfStream()
        self._pos += block.shape[0]
        return self.audio_message(block.mean(axis=1))


class MicrophoneSource(AudioSource):
    """A sound-card input through ``sounddevice`` (PortAudio).

    Args:
        device: PortAudio device index or name; None for the default input.
        max_buffered_chunks: Chunks held while nobody reads (oldest dropped, counted ``overflow``).
        **kwargs: See :class:`AudioSource`.
    """

    def __init__(
        self,
        device: int | str | None = None,
        name: str = "mic0",
        max_buffered_chunks: int = 50,
        **kwargs: Any,
    ):
        super().__init__(name, **kwargs)
        self.device = device
        self._chunks: deque[np.ndarray] = deque(maxlen=max_buffered_chunks)
        self._lock = threading.Lock()
        self._stream: Any = None

    def _open(self) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as e:
            raise SourceError(
                "the microphone source needs sounddevice and PortAudio: pip install 'exitflow[mic]' and "
                f"apt-get install libportaudio2 (import failed: {e}); or stream PCM over TCP/UDP instead"
            ) from e
        try:
            sounddevice.query_devices(self.device, kind="input")
        except (ValueError, sounddevice.PortAudioError) as e:
            raise SourceError(
                f"no audio input device {self.device!r}: {e}; list devices with python -m sounddevice"
            ) from e
        self.check_rate(self.sample_rate_hz)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            with self._lock:
                if len(self._chunks) == self._chunks.maxlen:
                    self.count_drop("overflow")
                self._chunks.append(indata.mean(axis=1).astype(np.float32))

        self._stream = sounddevice.InputStream(
            device=self.device,
            channels=1,
            samplerate=self.sample_rate_hz,
            blocksize=self.chunk_samples,
            dtype="float32",
            callback=callback,
        )
        self._stream.start()

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _read_raw(self) -> SensorMessage | None:
        with self._lock:
            chunk = self._chunks.popleft() if self._chunks else None
        if chunk is None:
            threading.Event().wait(0.005)
            return None
        return self.audio_message(chunk)
