"""Serve a real video clip over loopback with ffmpeg: video as HTTP MJPEG, audio as raw PCM over TCP.

Used by the streaming integration test and the live throughput benchmark (and handy to try a live
configuration without a camera): the clip is paced to real time (``-re``) and looped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_listener(backlog: int = 4, accept_timeout_s: float = 0.2) -> socket.socket:
    """A TCP server socket on 127.0.0.1 (any free port, reusable) whose ``accept`` times out."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    srv.settimeout(accept_timeout_s)
    return srv


@dataclass
class LoopbackClip:
    """The two ffmpeg servers of one clip; ``close()`` stops both."""

    video: subprocess.Popen
    audio: subprocess.Popen
    video_url: str
    audio_address: str

    def close(self) -> None:
        for proc in (self.video, self.audio):
            proc.kill()
            proc.wait(5)


def serve_clip(
    clip: Path, video_port: int, audio_port: int, size: tuple[int, int] | None = None, fps: float | None = None,
    audio_rate_hz: int = 16000,
) -> LoopbackClip:
    """Start ffmpeg serving ``clip``'s video at ``http://127.0.0.1:video_port/cam.mjpg`` and its mono
    ``audio_rate_hz`` s16le audio at ``tcp://127.0.0.1:audio_port`` (both listen for one client).

    Raises:
        FileNotFoundError: when ffmpeg is not installed or the clip does not exist.
    """
    if shutil.which("ffmpeg") is None:
        raise FileNotFoundError("ffmpeg is not installed (apt-get install ffmpeg)")
    if not Path(clip).is_file():
        raise FileNotFoundError(f"no clip at {clip}")
    base = ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip)]
    filters = []
    if size is not None:
        filters.append(f"scale={size[0]}:{size[1]}")
    if fps is not None:
        filters.append(f"fps={fps}")
    video_url = f"http://127.0.0.1:{video_port}/cam.mjpg"
    video_args = ["-an", *(["-vf", ",".join(filters)] if filters else []), "-c:v", "mjpeg", "-q:v", "5",
                  "-f", "mpjpeg", "-listen", "1", video_url]
    video = subprocess.Popen(base + video_args)
    audio = subprocess.Popen(
        base + ["-vn", "-ac", "1", "-ar", str(audio_rate_hz), "-f", "s16le", f"tcp://127.0.0.1:{audio_port}?listen=1"]
    )
    return LoopbackClip(video, audio, video_url, f"127.0.0.1:{audio_port}")
