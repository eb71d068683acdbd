"""Camera source: OpenCV ``VideoCapture`` over a device index, a video file, HTTP MJPEG or RTSP.

``uri`` is ``"0"`` (or ``0``) for ``/dev/video0``, a path (``clip.mpg``), ``http://host:port/...``
(MJPEG) or ``rtsp://host:port/...``. Frames come out raw: uint8 HxW (``gray=True``) or HxWx3
BGR. A frame that fails to decode or has the wrong shape is dropped and counted
(``decode_failure`` / ``wrong_shape``), never fatal; a stream that stops sending is closed and
reopened with backoff. Files can be paced to real time (``realtime=True``) and looped.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from exitflow.pipeline.live.sources.base import Backoff, EndOfStream, Pacer, Source, SourceDisconnected
from exitflow.pipeline.messages import SensorMessage

log = logging.getLogger(__name__)

STREAM_PREFIXES = ("http://", "https://", "rtsp://", "rtsps://", "udp://", "tcp://")


def parse_camera_uri(uri: str | int) -> int | str:
    """A device index for ``"0"``/``0``, else the string unchanged."""
    if isinstance(uri, int):
        return uri
    text = str(uri).strip()
    return int(text) if text.isdigit() else text


class CameraSource(Source):
    """Frames from OpenCV; see the module docstring.

    Args:
        uri: Device index, file path or stream URL.
        name: Source name.
        gray: Convert frames to single-channel gray.
        expected_shape: ``(H, W)`` every frame must have; others are dropped (``wrong_shape``).
            None accepts the first frame's shape and then holds the stream to it.
        realtime: Pace a video file to its frame rate (ignored for devices and streams).
        loop: Restart a video file at its end instead of finishing.
        max_consecutive_failures: Failed grabs in a row on a live stream before reconnecting.
        backoff: Reconnect policy.
    """

    modality = "image"

    def __init__(
        self,
        uri: str | int,
        name: str = "camera0",
        gray: bool = False,
        expected_shape: tuple[int, int] | None = None,
        realtime: bool = True,
        loop: bool = False,
        max_consecutive_failures: int = 25,
        backoff: Backoff | None = None,
    ):
        super().__init__(name, "image", backoff)
        self.uri = parse_camera_uri(uri)
        self.gray = gray
        self.expected_shape = tuple(expected_shape) if expected_shape else None
        self.is_file = isinstance(self.uri, str) and not self.uri.startswith(STREAM_PREFIXES)
        self.realtime = realtime
        self.loop = loop
        self.max_consecutive_failures = max_consecutive_failures
        self._cap: cv2.VideoCapture | None = None
        self._pacer = Pacer()
        self._failures = 0
        self._file_fps = 25.0
        self._frame_index = 0
        self._shape: tuple[int, ...] | None = None

    def _open(self) -> None:
        if isinstance(self.uri, str) and self.uri.startswith(STREAM_PREFIXES):
            cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG)
        else:
            cap = cv2.VideoCapture(self.uri)
        if not cap.isOpened():
            cap.release()
            raise SourceDisconnected(f"cannot open camera {self.uri!r} (no device, file or stream there)")
        self._cap = cap
        self._failures = 0
        self._frame_index = 0
        self._pacer.reset()
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._file_fps = fps if fps and 1.0 <= fps <= 1000.0 else 25.0

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _read_raw(self) -> SensorMessage | None:
        if self._cap is None:
            raise SourceDisconnected("capture is closed")
        if self.is_file and self.realtime:
            media_ns = int(self._frame_index / self._file_fps * 1e9)
            if not self._pacer.wait(media_ns):
                return None
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if self.is_file:
                if self.loop:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    self._frame_index = 0
                    self._pacer.reset()
                    return None
                raise EndOfStream()
            self._failures += 1
            self.count_drop("decode_failure")
            if self._failures >= self.max_consecutive_failures:
                raise SourceDisconnected(f"{self._failures} failed grabs in a row")
            time.sleep(0.005)
            return None
        self._failures = 0
        self._frame_index += 1
        source_time_ns = int(self._cap.get(cv2.CAP_PROP_POS_MSEC) * 1e6)
        return self.check_frame(frame, source_time_ns)

    def decode_frame(self, data: bytes, source_time_ns: int | None = None) -> SensorMessage | None:
        """One compressed frame (JPEG, PNG...) -> a message; bytes that do not decode are counted
        (``decode_failure``) and give None. For custom sources that receive encoded frames."""
        buf = np.frombuffer(bytes(data), np.uint8)
        try:
            frame = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if self.gray else cv2.IMREAD_COLOR) if buf.size else None
        except cv2.error:
            frame = None
        if frame is None:
            self.count_drop("decode_failure")
            return None
        return self.check_frame(frame, source_time_ns)

    def check_frame(self, frame: np.ndarray, source_time_ns: int | None = None) -> SensorMessage | None:
        """Validate and convert one decoded frame; garbage is counted and gives None."""
        if (
            not isinstance(frame, np.ndarray)
            or frame.dtype != np.uint8
            or frame.ndim not in (2, 3)
            or frame.size == 0
        ):
            self.count_drop("decode_failure")
            return None
        if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
            self.count_drop("wrong_shape")
            return None
        if self.gray and frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.shape[2] == 3 else frame[..., 0]
        hw = tuple(frame.shape[:2])
        reference = self.expected_shape or self._shape
        if reference is not None and hw != tuple(reference[:2]):
            self.count_drop("wrong_shape")
            log.debug("camera %s: dropped frame of shape %s, expected %s", self.name, hw, reference)
            return None
        if self._shape is None:
            self._shape = hw
        frame = np.ascontiguousarray(frame)
        return self.new_message(frame, source_time_ns=source_time_ns, meta={"shape": list(frame.shape)})
