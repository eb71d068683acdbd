"""The terminal view fits 100x24 with the important figures first; the Foxglove server advertises
the live topics with their schemas on loopback."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct

import numpy as np
from rich.console import Console

from exitflow.pipeline.live.core.stats import LiveStats
from exitflow.pipeline.live.views.foxglove import FanOut, FoxgloveLiveServer, audio_level_dbfs, is_loopback
from exitflow.pipeline.live.views.terminal import render
from exitflow.pipeline.messages import Decision, SensorMessage


def busy_snapshot() -> dict:
    stats = LiveStats()
    for stage, ms in (("end_to_end", 80.0), ("engine_call", 40.0), ("sync", 61.0), ("queue", 3.0),
                      ("source", 9.0), ("preprocess", 5.0), ("engine", 18.0)):
        stats.observe_latency(stage, ms)
    for i in range(30):
        stats.observe_decision(Decision(sample_id=i, prediction=1, system="t", exits={"image": i % 3, "audio": i % 4},
                                        energy_mj=40.0 + i, energy_source="rapl", estimated=False, lam=0.5))
    sources = {f"src{i}": {"modality": "image", "state": "connected", "fps": 25.0, "messages": 100,
                           "dropped": {"wrong_shape": i}, "queue": {"dropped": {}}} for i in range(4)}
    return {"sources": sources, "sync": {"emitted": 30, "dropped": {"non_monotonic": 2}, "unmatched": {},
                                          "missing": {"audio": {"no_data": 1}}},
            "engine_queue": {"size": 1, "maxsize": 4, "policy": "drop_oldest", "dropped": {}},
            "budget": {"mj_per_sample": 30.0}, "decisions_total": 30, **stats.summary()}


def shown(snap: dict, width: int, height: int | None) -> str:
    console = Console(width=width, height=height or 200, record=True, color_system=None)
    console.print(render(snap, height=height, width=width))
    return console.export_text()


def test_a_100x24_terminal_shows_power_budget_and_latency_first():
    text = shown(busy_snapshot(), 100, 24)
    lines = text.splitlines()
    assert len(lines) <= 24
    for needle in ("energy per sample", "mj_per_sample=30.0", "latency (ms)", "end_to_end", "engine_call", "lambda"):
        assert needle in text, needle
    assert "not shown at this size" in lines[-1] and "sync/engine" in lines[-1]
    full = shown(busy_snapshot(), 100, None)
    assert "sync and engine" in full and "src3" in full and "not shown" not in full


def test_a_tiny_terminal_degrades_to_the_overview():
    text = shown(busy_snapshot(), 60, 4)
    assert len(text.splitlines()) <= 4 and "decisions 30" in text and "not shown" in text


def read_frame(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    def need(n: int) -> None:
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf.extend(chunk)

    need(2)
    n, p = buf[1] & 0x7F, 2
    if n == 126:
        need(4)
        n, p = struct.unpack(">H", bytes(buf[2:4]))[0], 4
    elif n == 127:
        need(10)
        n, p = struct.unpack(">Q", bytes(buf[2:10]))[0], 10
    need(p + n)
    op, data = buf[0] & 0x0F, bytes(buf[p : p + n])
    del buf[: p + n]
    return op, data


def test_the_foxglove_server_advertises_the_live_topics_on_loopback():
    server = FoxgloveLiveServer(port=0)
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        sink = FanOut(server, None)
        sink.write_message(SensorMessage("image", "camera0", 1, np.zeros((8, 8), np.uint8)))
        sink.write_message(SensorMessage("audio", "mic0", 1, np.full(160, 0.1, np.float32), sample_rate_hz=16000))
        sink.write_message(SensorMessage("text", "words", 1, "bin blue"))
        sink.write_decision(Decision(sample_id=0, prediction=1, system="t"), 5)
        sink.write_status({"budget": {"mj_per_sample": 3.0}, "latency_ms": {}})
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Protocol: foxglove.sdk.v1\r\n\r\n").encode())
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            buf.extend(sock.recv(4096))
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n")[0]
        buf = bytearray(rest)
        advertised: dict[str, str] = {}
        while len(advertised) < 6:
            op, data = read_frame(sock, buf)
            if op == 1 and json.loads(data).get("op") == "advertise":
                advertised.update({c["topic"]: c["schemaName"] for c in json.loads(data)["channels"]})
        sock.close()
        assert advertised == {"/sensor/camera0": "foxglove.CompressedImage", "/sensor/mic0": "foxglove.RawAudio",
                              "/audio_level/mic0": "exitflow.AudioLevel", "/sensor/words": "foxglove.Log",
                              "/decisions": "exitflow.Decision", "/status": "exitflow.Status"}
    finally:
        server.close()


def test_audio_levels_and_loopback_checks():
    rms, peak = audio_level_dbfs(np.full(100, 0.5, np.float32))
    assert abs(rms - (-6.02)) < 0.01 and abs(peak - (-6.02)) < 0.01
    assert audio_level_dbfs(np.zeros(10, np.float32)) == (-120.0, -120.0)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_the_committed_foxglove_layout_matches_the_grid_sources():
    from pathlib import Path

    from exitflow.pipeline.live.views.foxglove import foxglove_layout

    committed = Path(__file__).resolve().parents[2] / "configs/foxglove_layout.json"
    assert committed.read_text() == foxglove_layout(["camera0"], ["mic0"], ["words"])
    text = committed.read_text()
    for topic in ("/sensor/camera0", "/sensor/mic0", "/audio_level/mic0.rms_dbfs", "/sensor/words",
                  "/status.budget_mj_per_sample", "/decisions"):
        assert f'"{topic}' in text, topic


def test_a_skewed_source_clock_is_shown_in_the_overview_at_100x24():
    snap = busy_snapshot()
    snap["sources"]["src1"]["clock"] = {"skew_ms": 3_600_000.0, "rtt_ms": 0.3, "skewed": True}
    snap["sources"]["src2"]["clock"] = {"skew_ms": -50.0, "rtt_ms": 0.3, "skewed": True}
    snap["sources"]["src3"]["clock"] = {"skew_ms": 0.2, "rtt_ms": 0.3, "skewed": False}
    snap["clock_skewed"] = ["src1", "src2"]
    text = shown(snap, 100, 24)
    assert len(text.splitlines()) <= 24
    assert "clock off: src1 +3600.000 s (+1 more), corrected" in text.replace("\n", "")
    assert "clock skew (ms)" in shown(snap, 100, None)
    del snap["clock_skewed"]
    assert "clock off" not in shown(snap, 100, 24)
