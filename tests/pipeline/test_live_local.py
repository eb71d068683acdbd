"""The in-process runtime (no Ray): sources on threads with skewed clocks, sync, engine, recording.

Three synthetic sensors share one real timeline (a frame every 50 ms, an audio chunk 5 ms after
each frame, a text line every 200 ms) but each stamps with its own clock, off by up to an hour.
The driver measures each clock's offset by round trips and every sample must pair the frame with
its own chunk and the line that was current.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from exitflow.pipeline.config import RayConfig, SourceConfig, StreamConfig
from exitflow.pipeline.live.core.clocks import SourceClock
from exitflow.pipeline.live.recording.reader import read_recording
from exitflow.pipeline.live.recording.writer import RecordingWriter
from exitflow.pipeline.live.runtime.local import LocalPipeline, choose_runtime
from exitflow.pipeline.live.sources import Source
from exitflow.pipeline.messages import Decision, Sample

MS = 1_000_000
HOUR_NS = 3600 * 1_000_000_000
FRAME_MS, AUDIO_LAG_MS, TEXT_MS = 50, 5, 200
FRAMES = 40
TEXT_LEAD_MS = 10  # line j at j * 200 - 10 ms: 10 ms before a frame, 10 ms beyond the previous frame's slop


class Timeline(Source):
    """Emits message k at ``t0 + k * period + lag`` (monotonic) stamped by a clock ``offset_ns`` off."""

    def __init__(self, name: str, modality: str, t0_ns: int, period_ms: int, lag_ms: int, offset_ns: int, count: int):
        super().__init__(name, modality, clock=SourceClock(offset_ns))
        self.t0_ns, self.period_ms, self.lag_ms, self.count = t0_ns, period_ms, lag_ms, count
        self.k = 0

    def _open(self) -> None:
        pass

    def _read_raw(self):
        if self.k >= self.count:
            time.sleep(0.01)
            return None
        due = self.t0_ns + (self.k * self.period_ms + self.lag_ms) * MS
        delay_ns = due - time.monotonic_ns()
        if delay_ns > 0:
            time.sleep(delay_ns / 1e9)
        k, self.k = self.k, self.k + 1
        if self.modality == "image":
            msg = self.new_message(np.full((8, 8), k, np.uint8))
        elif self.modality == "audio":
            msg = self.new_message(np.full(FRAME_MS * 16, 0.1, np.float32), sample_rate_hz=16000)
        else:
            msg = self.new_message(f"line {k}")
        # stamped at the due instant (as a sensor's hardware stamp would be), on this source's own clock,
        # so a busy machine waking the thread late cannot change which messages belong together
        msg.timestamp_ns = msg.capture_wall_ns = self.clock.now_ns() - (time.monotonic_ns() - due)
        return msg


class Factory:
    def __init__(self, modality: str, **kwargs):
        self.modality, self.kwargs = modality, kwargs

    def __call__(self) -> Source:
        return Timeline(modality=self.modality, **self.kwargs)


class Recorder:
    """An engine that keeps every sample it is given (after preprocessing) and decides nothing."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.lock = threading.Lock()

    def process(self, sample: Sample) -> Decision:
        with self.lock:
            self.samples.append(sample)
        return Decision(sample_id=sample.sample_id, prediction=0, system="recorder", timestamp_ns=sample.timestamp_ns)


@pytest.mark.parametrize(
    "offsets_ns",
    [
        {"cam": HOUR_NS, "mic": -HOUR_NS, "txt": 50 * MS},
        {"cam": -50 * MS, "mic": 50 * MS, "txt": -HOUR_NS},
    ],
    ids=["cam+1h,mic-1h,txt+50ms", "cam-50ms,mic+50ms,txt-1h"],
)
def test_sources_with_clocks_an_hour_or_50ms_off_pair_every_sample_correctly(offsets_ns, tmp_path):
    t0 = time.monotonic_ns() + 300 * MS  # the sources start after the driver measured their clocks
    sources = {
        "cam": Factory("image", name="cam", t0_ns=t0, period_ms=FRAME_MS, lag_ms=0, offset_ns=offsets_ns["cam"],
                       count=FRAMES),
        "mic": Factory("audio", name="mic", t0_ns=t0, period_ms=FRAME_MS, lag_ms=AUDIO_LAG_MS,
                       offset_ns=offsets_ns["mic"], count=FRAMES + 2),
        "txt": Factory("text", name="txt", t0_ns=t0, period_ms=TEXT_MS, lag_ms=-TEXT_LEAD_MS, offset_ns=offsets_ns["txt"],
                       count=FRAMES // 4 + 2),
    }
    stream = StreamConfig(slop_ms=30.0, audio_window_s=0.1, engine_queue_size=64, engine_queue_policy="block",
                          max_in_flight=4, trigger_timeout_ms=10_000.0)
    engine = Recorder()
    recorder = RecordingWriter(tmp_path / "local.mcap", chunk_size_bytes=64 * 1024)
    pipe = LocalPipeline(stream, lambda: engine, sources=sources, recorder=recorder, keep_decisions=10_000)
    try:
        pipe.start()
        pipe.wait_ready()
        end = time.monotonic() + 30
        while len(engine.samples) < FRAMES and time.monotonic() < end:
            pipe.step()
        snap = pipe.snapshot()
    finally:
        pipe.shutdown()
    samples = sorted(engine.samples, key=lambda s: s.timestamp_ns)
    assert len(samples) == FRAMES, snap
    for k, s in enumerate(samples):
        assert not s.missing, (k, s.missing, snap["sync"])
        assert round(float(s.payloads["image"].mean()) * 255) == k  # frame k, in order
        gap_ms = (s.timestamps_ns["audio"] - s.timestamp_ns) / MS
        assert abs(gap_ms - AUDIO_LAG_MS) < 3, (k, gap_ms)  # its own chunk, not a neighbour 50 ms away
        line = int(s.payloads["text"].split()[1])
        assert line == (k * FRAME_MS + TEXT_LEAD_MS) // TEXT_MS, (k, line)  # the line current at frame k
    assert snap["runtime"] == "local"
    for name, offset in offsets_ns.items():
        clock = snap["sources"][name]["clock"]
        assert abs(clock["skew_ms"] - offset / MS) < 5, (name, clock)
        assert clock["skewed"] == (abs(offset) > stream.slop_ms * MS)
    assert snap["clock_skewed"] == sorted(n for n, o in offsets_ns.items() if abs(o) > stream.slop_ms * MS)
    # the recording holds the stamps in the driver's clock: frame and chunk 5 ms apart there too
    stamps: dict[str, list[int]] = {"cam": [], "mic": []}
    for event in read_recording(tmp_path / "local.mcap"):
        if event.message is not None and event.message.source in stamps:
            stamps[event.message.source].append(event.message.timestamp_ns)
    gaps = [(a - c) / MS for c, a in zip(stamps["cam"], stamps["mic"], strict=False)]
    assert gaps and all(abs(g - AUDIO_LAG_MS) < 3 for g in gaps)


def test_auto_runtime_is_local_for_one_device_and_ray_beyond():
    class Cfg:
        def __init__(self, stream, ray=None):
            self.stream, self.ray = stream, ray or RayConfig()

    one_device = StreamConfig(sources=(SourceConfig(name="cam"),))
    assert choose_runtime(Cfg(one_device)) == "local"
    assert choose_runtime(Cfg(StreamConfig(sources=(SourceConfig(name="cam", resources={"robot1": 1}),)))) == "ray"
    assert choose_runtime(Cfg(StreamConfig(engine_resources={"gpu_node": 1}))) == "ray"
    assert choose_runtime(Cfg(StreamConfig(engine_num_gpus=1))) == "ray"
    assert choose_runtime(Cfg(one_device, RayConfig(address="10.0.0.2:6379"))) == "ray"
    assert choose_runtime(Cfg(StreamConfig(runtime="ray"))) == "ray"
    assert choose_runtime(Cfg(StreamConfig(runtime="local", engine_num_gpus=1))) == "local"


# -- the same recording through a runtime and through the offline replay ----------------------------
REPO = Path(__file__).resolve().parents[2]
GRID_RECORDING = REPO / "examples" / "grid_live.mcap"
PAIRING_MARGIN_MS = 2.0  # nearer chunk at least this much nearer than the runner-up


def recorded_segment(seconds: float = 4.0) -> tuple[int, int]:
    """(origin_ns, end_ns) of a stretch of the example recording's camera."""
    stamps = [e.message.timestamp_ns for e in read_recording(GRID_RECORDING)
              if e.message is not None and e.message.source == "camera0"]
    origin = stamps[0] + 1_000_000_000
    return origin, origin + int(seconds * 1e9)


def replay_stream_config() -> StreamConfig:
    # the slop wait (no early trigger): pairing follows the stamps alone, not which thread ran first
    return StreamConfig(slop_ms=60.0, early_trigger=False, engine_queue_size=1024, engine_queue_policy="block",
                        max_in_flight=4, trigger_timeout_ms=10_000.0)


def recorded_sources(start_ns: int, origin_ns: int, end_ns: int) -> dict:
    from exitflow.pipeline.live.sources.recorded import RecordedSourceFactory

    return {
        "camera0": RecordedSourceFactory(str(GRID_RECORDING), "camera0", "image", start_ns, origin_ns, end_ns,
                                         clock_offset_ns=HOUR_NS),
        "mic0": RecordedSourceFactory(str(GRID_RECORDING), "mic0", "audio", start_ns, origin_ns, end_ns + 200_000_000,
                                      clock_offset_ns=-HOUR_NS, begin_ns=origin_ns - 1_500_000_000),  # pre-roll
    }


def offline_decisions(origin_ns: int, end_ns: int) -> tuple[list[Decision], set[int]]:
    """The replay's decisions on the segment, and the indices of near-tie samples (see PAIRING_MARGIN_MS)."""
    from exitflow.pipeline.live.core.sync import make_synchronizer
    from exitflow.pipeline.live.runtime.playback import replay_recording
    from exitflow.pipeline.live.runtime.rule_engine import RuleEngine

    sync = make_synchronizer(replay_stream_config(), ["audio", "image"])
    decisions = replay_recording(GRID_RECORDING, RuleEngine(), sync, topics=["/sensor/camera0", "/sensor/mic0"])
    cam = [e.message.timestamp_ns for e in read_recording(GRID_RECORDING)
           if e.message is not None and e.message.source == "camera0"]
    mic = np.array([e.message.timestamp_ns for e in read_recording(GRID_RECORDING)
                    if e.message is not None and e.message.source == "mic0"])
    by_ts = {d.timestamp_ns: d for d in decisions}
    kept, ties = [], set()
    for t in cam:
        if origin_ns <= t < end_ns and t in by_ts:
            gaps = np.sort(np.abs(mic - t)) / 1e6
            if gaps[1] - gaps[0] < PAIRING_MARGIN_MS:
                ties.add(len(kept))
            kept.append(by_ts[t])
    return kept, ties


def same_decisions(live: list[Decision], offline: list[Decision], ties: set[int]) -> None:
    assert len(live) == len(offline), (len(live), len(offline))
    for k, (a, b) in enumerate(zip(live, offline, strict=True)):
        if k in ties:
            continue
        assert (a.prediction, a.missing, a.order) == (b.prediction, b.missing, b.order), (k, a, b)
    assert len(ties) < len(offline) // 5


def test_the_local_runtime_decides_a_recording_as_the_offline_replay_does():
    from exitflow.pipeline.live.runtime.rule_engine import RuleEngine

    origin, end = recorded_segment()
    offline, ties = offline_decisions(origin, end)
    start = time.monotonic_ns() + 3_000_000_000  # after every source has read its part of the file
    decided: list[Decision] = []
    pipe = LocalPipeline(replay_stream_config(), RuleEngine, sources=recorded_sources(start, origin, end),
                         on_decision=decided.append)
    try:
        pipe.start()
        pipe.wait_ready()
        deadline = time.monotonic() + 30
        while len(decided) < len(offline) and time.monotonic() < deadline:
            pipe.step()
    finally:
        pipe.shutdown()
    same_decisions(sorted(decided, key=lambda d: d.sample_id), offline, ties)
