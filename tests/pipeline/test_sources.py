"""Sources without Ray: reconnect/backoff, health, garbage frames, PCM sockets, rates, text floods."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from exitflow.pipeline.config import SourceConfig
from exitflow.pipeline.data.roots import SHARED_DATA
from exitflow.pipeline.live.core.backoff import Backoff
from exitflow.pipeline.live.sources import (
    AudioFileSource,
    CameraSource,
    PcmSocketSource,
    Source,
    SourceDisconnected,
    StdinTextSource,
    TextFileSource,
    TextSocketSource,
    build_source,
)
from exitflow.pipeline.messages import SensorMessage

GRID = SHARED_DATA / Path("grid_av_samples")
GRID_CLIP = GRID / "mpg" / "bbaf2n.mpg"
needs_grid = pytest.mark.skipif(not GRID_CLIP.exists(), reason="GRID clips not found under ../shared/data")


def read_until(source: Source, n: int, timeout_s: float = 5.0) -> list[SensorMessage]:
    out: list[SensorMessage] = []
    end = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < end:
        msg = source.read()
        if msg is not None:
            out.append(msg)
        elif source.state in ("finished", "failed"):
            break
        else:
            time.sleep(0.001)
    return out


def grid_audio_int16() -> np.ndarray:
    with np.load(GRID / "grid_decoded.npz", allow_pickle=False) as z:
        return z["audio"][0].astype(np.int16)  # (47648,) at 16 kHz


# -- base: backoff, reconnect, health --------------------------------------------------------
def test_backoff_grows_exponentially_caps_and_gives_up():
    b = Backoff(initial_s=0.1, max_s=0.5, factor=2.0, max_attempts=5)
    delays = [b.next_delay_s() for _ in range(5)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert b.exhausted
    b.reset()
    assert not b.exhausted
    with pytest.raises(ValueError):
        Backoff(initial_s=1.0, max_s=0.5)


class FlakySource(Source):
    """Fails to connect ``fail_opens`` times, then gives ``per_connection`` messages per connection."""

    def __init__(self, fail_opens: int, per_connection: int, **kwargs):
        super().__init__("flaky", "text", **kwargs)
        self.fail_opens, self.per_connection, self.opens, self.left = fail_opens, per_connection, 0, 0

    def _open(self):
        self.opens += 1
        if self.opens <= self.fail_opens:
            raise ConnectionRefusedError("nobody listening")
        self.left = self.per_connection

    def _read_raw(self):
        if self.left == 0:
            raise SourceDisconnected("peer went away")
        self.left -= 1
        return self.new_message("hi")


def test_source_reconnects_with_backoff_and_reports_health():
    src = FlakySource(fail_opens=2, per_connection=3, backoff=Backoff(initial_s=0.01, max_s=0.02))
    assert src.read() is None
    h = src.health()
    assert h.state == "reconnecting" and "nobody listening" in h.last_error
    msgs = read_until(src, 5, timeout_s=2.0)
    assert [m.seq for m in msgs] == [0, 1, 2, 3, 4]  # seq continues across reconnects
    assert all(isinstance(m.timestamp_ns, int) for m in msgs)
    assert [m.timestamp_ns for m in msgs] == sorted(m.timestamp_ns for m in msgs)
    h = src.health()
    assert h.reconnects >= 1 and h.messages == 5 and "peer went away" in h.last_error


def test_source_fails_after_max_attempts():
    src = FlakySource(fail_opens=100, per_connection=1, backoff=Backoff(0.0, 0.0, max_attempts=3))
    for _ in range(10):
        src.read()
    assert src.health().state == "failed"


# -- camera ----------------------------------------------------------------------------------
@needs_grid
def test_camera_reads_every_frame_of_a_real_grid_clip():
    cam = CameraSource(str(GRID_CLIP), "cam", gray=True, realtime=False)
    frames = read_until(cam, 80, timeout_s=10.0)
    assert len(frames) == 75  # 3.00 s at 25 fps
    assert cam.health().state == "finished"
    assert frames[0].payload.shape == (288, 360) and frames[0].payload.dtype == np.uint8
    assert frames[-1].source_time_ns > frames[0].source_time_ns
    assert frames[10].payload.std() > 5  # a real face, not a blank frame


@needs_grid
def test_camera_file_paced_to_real_time():
    cam = CameraSource(str(GRID_CLIP), "cam", gray=True, realtime=True)
    t0 = time.monotonic()
    frames = read_until(cam, 13, timeout_s=5.0)
    elapsed = time.monotonic() - t0
    assert len(frames) == 13
    assert 0.4 < elapsed < 1.5  # 12 frame intervals at 25 fps = 0.48 s


def test_camera_drops_garbage_frames_and_counts_them():
    cam = CameraSource("unused.mpg", "cam", gray=True, expected_shape=(4, 6))
    assert cam.check_frame(np.zeros((4, 6), np.uint8)) is not None
    assert cam.check_frame(np.zeros((5, 6), np.uint8)) is None
    assert cam.check_frame(np.zeros((4, 6), np.float32)) is None
    assert cam.check_frame(np.zeros((0,), np.uint8)) is None
    assert cam.check_frame(np.zeros((4, 6, 2), np.uint8)) is None
    assert cam.dropped == {"wrong_shape": 2, "decode_failure": 2}
    colour = cam.check_frame(np.full((4, 6, 3), 200, np.uint8))
    assert colour is not None and colour.payload.shape == (4, 6)


def test_camera_that_is_absent_reconnects_instead_of_crashing(tmp_path):
    cam = CameraSource(str(tmp_path / "missing.mpg"), "cam", backoff=Backoff(0.01, 0.05))
    assert cam.read() is None
    h = cam.health()
    assert h.state == "reconnecting" and "cannot open camera" in h.last_error


# -- microphone: PCM over TCP / UDP, files, rates --------------------------------------------
class PcmServer:
    """Serves int16 PCM to the first TCP client, then closes (a source going away)."""

    def __init__(self, pcm: bytes, port: int = 0):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", port))
        self.srv.listen(1)
        self.port = self.srv.getsockname()[1]
        self.pcm = pcm
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.srv.accept()
        with conn:
            conn.sendall(self.pcm)
        self.srv.close()


@needs_grid
def test_pcm_tcp_source_delivers_real_audio_and_reconnects_after_the_peer_leaves():
    audio = grid_audio_int16()[:16000]  # 1 s of real speech
    server = PcmServer(audio.tobytes())
    src = PcmSocketSource(
        "127.0.0.1",
        server.port,
        "tcp",
        name="mic",
        sample_rate_hz=16000,
        chunk_ms=100,
        backoff=Backoff(0.01, 0.05),
    )
    msgs = read_until(src, 10)
    assert len(msgs) == 10
    got = np.concatenate([m.payload for m in msgs])
    np.testing.assert_allclose(got, audio.astype(np.float32) / 32768.0, atol=1e-7)
    assert all(m.sample_rate_hz == 16000 and m.payload.dtype == np.float32 for m in msgs)
    assert msgs[3].source_time_ns == 300_000_000
    assert read_until(src, 1, timeout_s=0.3) == []  # peer closed
    assert src.health().state == "reconnecting"
    server2 = PcmServer(audio[:3200].tobytes(), port=server.port)
    again = read_until(src, 2, timeout_s=3.0)
    assert len(again) == 2 and src.health().reconnects == 1
    server2.thread.join(1)


def test_pcm_udp_source_receives_datagrams():
    src = PcmSocketSource("127.0.0.1", 0, "udp", name="mic", sample_rate_hz=8000, chunk_ms=50)
    src.read()  # binds the socket
    port = src._sock.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ramp = (np.arange(1200, dtype=np.int16) * 10).tobytes()
    for i in range(0, len(ramp), 400):
        tx.sendto(ramp[i : i + 400], ("127.0.0.1", port))
    msgs = read_until(src, 3, timeout_s=2.0)
    assert len(msgs) == 3 and all(m.payload.shape == (400,) for m in msgs)
    np.testing.assert_allclose(msgs[0].payload[:3], np.array([0, 10, 20]) / 32768.0)
    tx.close()
    src.close()


@needs_grid
def test_pcm_at_an_unexpected_rate_is_resampled_with_a_count():
    audio = grid_audio_int16()[::2][:8000]  # 1 s at 8 kHz
    server = PcmServer(audio.tobytes())
    src = PcmSocketSource(
        "127.0.0.1", server.port, "tcp", sample_rate_hz=8000, target_rate_hz=16000, chunk_ms=100
    )
    msgs = read_until(src, 3)
    assert len(msgs) == 3
    assert all(m.sample_rate_hz == 16000 and m.payload.shape == (1600,) for m in msgs)
    assert src.dropped.get("resampled") == 3


def test_audio_at_a_rejected_rate_fails_the_source_with_a_clear_error(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, np.zeros(8000, np.float32), 8000)
    src = AudioFileSource(str(path), "mic", target_rate_hz=16000, on_rate_mismatch="reject")
    assert src.read() is None
    h = src.health()
    assert h.state == "failed"
    assert "8000 Hz" in h.last_error and "expects 16000 Hz" in h.last_error and "resample" in h.last_error


def test_flac_file_source_reads_chunks_and_finishes(tmp_path):
    path = tmp_path / "ramp.flac"
    ramp = np.linspace(-0.5, 0.5, 4000).astype(np.float32)
    soundfile.write(path, ramp, 16000)
    src = AudioFileSource(str(path), "mic", chunk_ms=100, realtime=False)
    msgs = read_until(src, 10, timeout_s=2.0)
    assert [m.payload.shape[0] for m in msgs] == [1600, 1600, 800]
    np.testing.assert_allclose(np.concatenate([m.payload for m in msgs]), ramp, atol=1e-4)
    assert src.health().state == "finished"


def test_microphone_without_sounddevice_fails_with_an_actionable_error(monkeypatch):
    import builtins

    from exitflow.pipeline.live.sources import MicrophoneSource

    real_import = builtins.__import__

    def no_sounddevice(name, *args, **kwargs):
        if name == "sounddevice":
            raise ImportError("No module named 'sounddevice'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    src = MicrophoneSource(None, "mic", sample_rate_hz=16000)
    assert src.read() is None
    h = src.health()
    assert h.state == "failed"
    assert "exitflow[mic]" in h.last_error and "PCM over TCP/UDP" in h.last_error


# -- text ------------------------------------------------------------------------------------
def test_text_socket_flood_is_limited_and_counted():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def flood():
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"".join(f"line {i}\n".encode() for i in range(500)))
            time.sleep(0.5)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    src = TextSocketSource("127.0.0.1", port, "txt", max_rate_hz=10.0)
    got = []
    end = time.monotonic() + 0.4
    while time.monotonic() < end:
        msg = src.read()
        if msg is not None:
            got.append(msg.payload)
    assert got[0] == "line 0"
    assert 3 <= len(got) <= 15  # burst of 5 plus ~10 Hz
    assert src.dropped["flood"] >= 400
    t.join(2)
    srv.close()


def test_jsonl_text_is_replayed_at_its_timestamps_and_bad_lines_are_counted(tmp_path):
    path = tmp_path / "ops.jsonl"
    lines = [
        {"t_s": 0.0, "text": "bin blue"},
        "not json",
        {"t_s": 0.2, "text": "at f"},
        {"timestamp_ns": 300_000_000, "text": "two now"},
    ]
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    src = TextFileSource(str(path), "txt", jsonl=True)
    t0 = time.monotonic()
    msgs = read_until(src, 3, timeout_s=2.0)
    assert [m.payload for m in msgs] == ["bin blue", "at f", "two now"]
    assert [m.source_time_ns for m in msgs] == [0, 200_000_000, 300_000_000]
    assert time.monotonic() - t0 >= 0.25
    assert src.dropped == {"bad_json": 1}


def test_stdin_text_source_reads_lines_until_eof():
    src = StdinTextSource("txt", stream=io.StringIO("set white\n\nwith p two\n"))
    msgs = read_until(src, 2, timeout_s=2.0)
    assert [m.payload for m in msgs] == ["set white", "with p two"]
    read_until(src, 1, timeout_s=0.2)
    assert src.health().state == "finished"


def test_build_source_from_config_and_bad_uri():
    cam = build_source(SourceConfig(name="c", kind="camera", uri="0"))
    assert isinstance(cam, CameraSource) and cam.uri == 0
    txt = build_source(SourceConfig(name="t", kind="text_tcp", uri="127.0.0.1:6000"))
    assert isinstance(txt, TextSocketSource) and txt.port == 6000
    from exitflow.pipeline.live.sources import SourceError

    with pytest.raises(SourceError, match="host:port"):
        build_source(SourceConfig(name="m", kind="pcm_tcp", uri="localhost"))
