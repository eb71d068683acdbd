"""A cheap simulated robot that streams what the AV-MNIST model was made for: one source, three topics.

Every robot plays the same :class:`DigitStream`, built once and shared (nothing is encoded per
robot): MNIST test digits degraded as AV-MNIST's images are (PCA, top components) as JPEG frames
(MJPEG, as a network camera sends them; decoded here, a 28x28 JPEG costs a few microseconds) and,
for each digit, a Free Spoken Digit recording of the
same digit by the test speaker as 16 kHz PCM; the digit's label goes out on a side topic
(modality ``label``) stamped with its frame's capture time, so the driver can score live accuracy.

Timeline: item *k* holds for ``hold_s`` seconds (the audio window, 1 s by default): its frames
show the digit, and its recording (0.3-0.8 s) plays at the start of the slot, so once the word is
over a frame's trailing audio window holds it in full and nothing of the previous digit; frames
during the word hear part of it and the previous word's end (live audio is not segmented for the
model, and the window is longer than the clips the model was trained on). :class:`DigitRobotSource` paces
the three topics in real time from its start (frames at ``fps``, PCM in ``chunk_ms`` chunks) and
sleeps until the next message is due, so a robot costs a fraction of a percent of a core.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import librosa
import numpy as np

from exitflow.pipeline.data.pca import degrade_images, load_pca_basis
from exitflow.pipeline.live.core.clocks import SourceClock
from exitflow.pipeline.live.core.labels import LABEL
from exitflow.pipeline.live.sources.base import Source, SourceError
from exitflow.pipeline.messages import SensorMessage


@dataclass(frozen=True)
class DigitStream:
    """The pre-encoded media every robot plays: ``jpegs[k]`` and ``pcm`` slot ``k`` show/say ``labels[k]``."""

    jpegs: tuple[bytes, ...]
    pcm: np.ndarray  # float32 mono in [-1, 1] at rate_hz, len(labels) slots of hold_s each
    labels: tuple[int, ...]
    rate_hz: int
    hold_s: float

    @property
    def duration_s(self) -> float:
        return len(self.labels) * self.hold_s


def digit_stream(data_root: Path, n: int = 50, hold_s: float = 1.0, rate_hz: int = 16000, seed: int = 0,
                 speaker: str | None = None, energy_removed: float = 0.75) -> DigitStream:
    """``n`` (digit image, spoken digit) pairs with equal labels from ``data_root``'s MNIST and FSDD test files.

    Args:
        data_root: Holds ``mnist/mnist_test.npz`` and ``fsdd/fsdd_test.npz``.
        n: Items (the stream loops over them).
        hold_s: Seconds each item lasts (the audio window).
        rate_hz: PCM rate delivered (FSDD is 8 kHz: resampled once, here).
        seed: Picks the items.
        speaker: FSDD speaker to use (default: the last in name order).
        energy_removed: The AV-MNIST image degradation (PCA, ``pipeline.data.pca``) the model was
            trained with; the degraded digit is sent with its negative part clipped (a camera
            sends light, not signed values).

    Raises:
        SourceError: when the files are missing or hold no recording of ``speaker``.
    """
    try:
        mnist = np.load(data_root / "mnist" / "mnist_test.npz")
        fsdd = np.load(data_root / "fsdd" / "fsdd_test.npz")
    except OSError as e:
        raise SourceError(f"no MNIST/FSDD test files under {data_root}; see ../shared/data/README.md") from e
    speakers = fsdd["speakers"]
    speaker = speaker or sorted(set(speakers.tolist()))[-1]
    rng = np.random.default_rng(seed)
    basis = load_pca_basis()
    slot = int(round(hold_s * rate_hz))
    pcm = np.zeros(n * slot, np.float32)
    jpegs, labels = [], []
    for k in range(n):
        label = int(rng.integers(0, 10))
        clips = np.flatnonzero((fsdd["labels"] == label) & (speakers == speaker))
        digits = np.flatnonzero(mnist["labels"] == label)
        if not len(clips):
            raise SourceError(f"FSDD test holds no recording of {label} by {speaker!r}")
        c = int(rng.choice(clips))
        clip = fsdd["audio"][fsdd["offsets"][c]: fsdd["offsets"][c + 1]].astype(np.float32) / 32768.0
        clip = librosa.resample(clip, orig_sr=int(fsdd["sample_rate"]), target_sr=rate_hz)[:slot]
        pcm[k * slot: k * slot + len(clip)] = clip  # at the start of its slot
        degraded = degrade_images(mnist["images"][int(rng.choice(digits))][None], basis, energy_removed)[0, 0]
        frame = np.clip(np.round(degraded * 255.0), 0, 255).astype(np.uint8)  # what a camera can send: >= 0
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise SourceError("OpenCV could not JPEG-encode an MNIST digit")
        jpegs.append(jpeg.tobytes())
        labels.append(label)
    return DigitStream(tuple(jpegs), pcm, tuple(labels), rate_hz, hold_s)


class DigitRobotSource(Source):
    """One robot: camera (``image``), microphone (``audio``) and ``label`` topics from one source.

    Args:
        name: Source name (the robot's).
        stream: What it plays (:func:`digit_stream`).
        fps: Camera frame rate.
        chunk_ms: PCM chunk length.
        start_item: Item the robot starts at (robots of a fleet start apart).
        clock: Stamps messages (a skewed clock for a robot on a wrong clock).
    """

    modality = "image"
    modalities = ("image", "audio", LABEL)

    def __init__(self, name: str, stream: DigitStream, fps: float = 10.0, chunk_ms: float = 20.0,
                 start_item: int = 0, clock: SourceClock | None = None):
        super().__init__(name, "image", clock=clock)
        if fps <= 0 or chunk_ms <= 0:
            raise ValueError(f"fps and chunk_ms must be > 0, got {fps}, {chunk_ms}")
        self.stream, self.fps = stream, fps
        self.chunk = max(1, int(round(chunk_ms / 1000.0 * stream.rate_hz)))
        self.offset_s = (start_item % len(stream.labels)) * stream.hold_s
        self._pending: deque[SensorMessage] = deque()

    def _open(self) -> None:
        self._t0_ns = time.monotonic_ns()
        self._frames = 0
        self._chunks = 0

    def _due_ns(self) -> tuple[int, int]:
        frame = self._t0_ns + int(self._frames / self.fps * 1e9)
        chunk = self._t0_ns + int((self._chunks + 1) * self.chunk / self.stream.rate_hz * 1e9)  # when it is whole
        return frame, chunk

    def _read_raw(self) -> SensorMessage | None:
        if self._pending:
            return self._pending.popleft()
        frame_ns, chunk_ns = self._due_ns()
        wait_s = (min(frame_ns, chunk_ns) - time.monotonic_ns()) / 1e9
        if wait_s > 0:
            time.sleep(min(wait_s, 0.05))
            return None
        now = self.clock.now_ns()
        if chunk_ns <= frame_ns:
            n = len(self.stream.pcm)
            start = (int(self.offset_s * self.stream.rate_hz) + self._chunks * self.chunk) % n
            pcm = np.take(self.stream.pcm, np.arange(start, start + self.chunk), mode="wrap")
            self._chunks += 1
            return SensorMessage("audio", self.name, now, pcm, sample_rate_hz=self.stream.rate_hz,
                                 capture_wall_ns=now)
        t_s = self.offset_s + self._frames / self.fps
        item = int(t_s // self.stream.hold_s) % len(self.stream.labels)
        self._frames += 1
        image = cv2.imdecode(np.frombuffer(self.stream.jpegs[item], np.uint8), cv2.IMREAD_GRAYSCALE)
        self._pending.append(SensorMessage(LABEL, self.name, now, self.stream.labels[item], capture_wall_ns=now))
        return SensorMessage("image", self.name, now, image, capture_wall_ns=now, meta={"codec": "jpeg"})


@dataclass(frozen=True)
class DigitRobotFactory:
    """Builds a :class:`DigitRobotSource` (picklable: a Ray source actor builds it on its node)."""

    name: str
    stream: DigitStream
    fps: float = 10.0
    chunk_ms: float = 20.0
    start_item: int = 0
    offset_ns: int = 0

    modality = "image"
    modalities = DigitRobotSource.modalities

    def __call__(self) -> DigitRobotSource:
        return DigitRobotSource(self.name, self.stream, self.fps, self.chunk_ms, self.start_item,
                                SourceClock(self.offset_ns))


def demo_robot(data_root: Path, audio_window_s: float = 1.0, audio_rate_hz: int = 16000, name: str = "robot0",
               fps: float = 10.0, chunk_ms: float = 50.0, n: int = 30) -> DigitRobotFactory:
    """The live example ``exitflow run`` plays when ``stream.sources`` is empty: one digit robot on
    ``data_root``'s MNIST and FSDD test files (no ffmpeg, no device), labels included.

    Raises:
        SourceError: when the test files are not under ``data_root``.
    """
    media = digit_stream(data_root, n=n, hold_s=audio_window_s, rate_hz=audio_rate_hz)
    return DigitRobotFactory(name, media, fps=fps, chunk_ms=chunk_ms)
