"""MCAP recording: round trip, crash safety (lose at most the open chunk), deterministic replay."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from exitflow.pipeline.data.roots import SHARED_DATA
from exitflow.pipeline.errors import DataError
from exitflow.pipeline.live.core.sync import Synchronizer
from exitflow.pipeline.live.recording.reader import read_recording
from exitflow.pipeline.live.recording.v1 import decode_sensor_message, encode_sensor_message
from exitflow.pipeline.live.recording.writer import RecordingWriter
from exitflow.pipeline.live.runtime.playback import decision_log_key, replay_recording
from exitflow.pipeline.messages import Decision, Sample, SensorMessage

REPO = Path(__file__).resolve().parents[2]
GRID_NPZ = SHARED_DATA / Path("grid_av_samples/grid_decoded.npz")
MS = 1_000_000


def test_sensor_message_round_trips_bit_exact():
    msgs = [
        SensorMessage(
            "image",
            "cam",
            5,
            np.arange(12, dtype=np.uint8).reshape(3, 4),
            seq=3,
            source_time_ns=40,
            meta={"shape": [3, 4]},
        ),
        SensorMessage("audio", "mic", 6, np.linspace(-1, 1, 7, dtype=np.float32), sample_rate_hz=16000),
        SensorMessage("text", "txt", 7, "lay blue by c two again ✓"),
    ]
    for m in msgs:
        back = decode_sensor_message(encode_sensor_message(m))
        assert (back.modality, back.source, back.timestamp_ns, back.seq) == (
            m.modality,
            m.source,
            m.timestamp_ns,
            m.seq,
        )
        assert back.source_time_ns == m.source_time_ns and back.sample_rate_hz == m.sample_rate_hz
        if isinstance(m.payload, str):
            assert back.payload == m.payload
        else:
            assert back.payload.dtype == m.payload.dtype
            np.testing.assert_array_equal(back.payload, m.payload)
    with pytest.raises(TypeError, match="str or np.ndarray"):
        encode_sensor_message(SensorMessage("image", "cam", 1, [1, 2]))


def test_writer_reads_back_messages_and_decisions(tmp_path):
    path = tmp_path / "run.mcap"
    w = RecordingWriter(path, chunk_size_bytes=2048)
    for i in range(20):
        w.write_message(SensorMessage("image", "cam", 1000 + i, np.full((8, 8), i, np.uint8), seq=i))
    w.write_decision(Decision(sample_id=0, prediction=3, system="t", exits={"image": 1}), log_time_ns=1010)
    w.close()
    events = list(read_recording(path))
    frames = [e.message for e in events if e.message is not None]
    decisions = [e.decision for e in events if e.decision is not None]
    assert [int(f.payload[0, 0]) for f in frames] == list(range(20))
    assert decisions == [Decision(sample_id=0, prediction=3, system="t", exits={"image": 1}).to_json_dict()]
    with pytest.raises(DataError):
        list(read_recording(tmp_path / "nope.mcap"))


def test_a_crashed_writer_loses_at_most_the_open_chunk(tmp_path):
    """A child process writes 200 frames then SIGKILLs itself without closing the file."""
    path = tmp_path / "crash.mcap"
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from exitflow.pipeline.messages import SensorMessage
        from exitflow.pipeline.live.recording.writer import RecordingWriter
        w = RecordingWriter({str(path)!r}, chunk_size_bytes=8192, compression="none", image_format="raw",
                            flush_interval_s=0)
        for i in range(200):
            w.write_message(SensorMessage("image", "cam", 10_000 + i, np.full((30, 30), i % 256, np.uint8), seq=i))
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    seqs = [e.message.seq for e in read_recording(path) if e.message is not None]
    per_chunk = 8192 // (30 * 30) + 1  # messages that fit in one open chunk (a RawImage is 900 bytes + ~40)
    assert seqs == list(range(len(seqs)))  # an exact prefix, nothing corrupted
    assert 200 - per_chunk - 1 <= len(seqs) <= 200
    assert not path.read_bytes().endswith(b"\x89MCAP0\r\n")  # really no footer: the file was cut


def test_a_crashed_writer_loses_at_most_the_flush_interval(tmp_path):
    """A 1 MiB chunk never fills here: only the time-bound flush puts the first frames on disk."""
    path = tmp_path / "crash.mcap"
    script = textwrap.dedent(f"""
        import os, sys, time
        import numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from exitflow.pipeline.messages import SensorMessage
        from exitflow.pipeline.live.recording.writer import RecordingWriter
        w = RecordingWriter({str(path)!r}, flush_interval_s=0.2)
        for i in range(50):
            w.write_message(SensorMessage("text", "txt", 10_000 + i, f"line {{i}}", seq=i))
        time.sleep(1.0)
        for i in range(50, 55):
            w.write_message(SensorMessage("text", "txt", 10_000 + i, f"line {{i}}", seq=i))
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    seqs = [e.message.seq for e in read_recording(path) if e.message is not None]
    assert seqs[:50] == list(range(50)) and len(seqs) <= 55


class ReplayedPowerTrace:
    """A recorded power trace (time_s, power_mw) looked up by event time: no live measurement."""

    def __init__(self, path: Path):
        rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
        self.t_s = np.array([float(r[0]) for r in rows])
        self.power_mw = np.array([float(r[1]) for r in rows])

    def energy_mj(self, t_s: float, duration_s: float) -> float:
        return float(np.interp(t_s, self.t_s, self.power_mw) * duration_s)


class RuleEngine:
    """A tiny deterministic engine: image brightness and audio loudness vote on a digit."""

    def __init__(self, trace: ReplayedPowerTrace, t0_ns: int):
        self.trace, self.t0_ns, self.budget = trace, t0_ns, None

    def process(self, sample: Sample) -> Decision:
        votes, exits = [], {}
        if "image" in sample.present():
            votes.append(int(sample.payloads["image"].mean() * 100) % 10)
            exits["image"] = 0
        if "audio" in sample.present():
            votes.append(int(sample.payloads["audio"].mean() * 100) % 10)
            exits["audio"] = 1
        t_s = (sample.timestamp_ns - self.t0_ns) / 1e9
        return Decision(
            sample_id=sample.sample_id,
            prediction=max(votes) if votes else -1,
            system="rule",
            exits=exits,
            missing=sorted(sample.missing),
            energy_mj=self.trace.energy_mj(t_s, 0.02),
            energy_source="replay",
            estimated=False,
            latency_ms={"engine": float(np.random.rand())},
            timestamp_ns=sample.timestamp_ns,
        )

    def set_budget(self, mj_per_sample=None, power_w=None):
        self.budget = mj_per_sample


@pytest.mark.skipif(not GRID_NPZ.exists(), reason="GRID decoded clips not found under ../shared/data")
def test_record_then_replay_twice_gives_identical_decision_logs(tmp_path):
    with np.load(GRID_NPZ, allow_pickle=False) as z:
        frames, audio = z["frames"][0], z["audio"][0].astype(np.float32) / 32768.0  # (75,144,180), (47648,)
    t0 = 5_000 * MS
    path = tmp_path / "grid.mcap"
    w = RecordingWriter(path, chunk_size_bytes=64 * 1024)
    msgs = [SensorMessage("image", "cam", t0 + 40 * MS * i + 3 * MS, frames[i], seq=i) for i in range(75)]
    msgs += [
        SensorMessage(
            "audio",
            "mic",
            t0 + 100 * MS * (k + 1),
            audio[1600 * k : 1600 * (k + 1)],
            seq=k,
            sample_rate_hz=16000,
        )
        for k in range(29)
    ]
    msgs += [
        SensorMessage("text", "txt", t0 + 500 * MS * k, w_, seq=k)
        for k, w_ in enumerate("bin blue at f two now".split())
    ]
    for m in sorted(msgs, key=lambda m: m.timestamp_ns):
        w.write_message(m)
    w.close()
    trace_path = tmp_path / "power.csv"
    trace_path.write_text("t_s,power_mw\n0,1500\n1,2500\n2,1800\n3,3000\n")

    def replay(mode="fast", rate=1.0, start_s=0.0, out=None):
        sync = Synchronizer(slop_ns=60 * MS, audio_rate_hz=16000, audio_window_s=1.0)
        engine = RuleEngine(ReplayedPowerTrace(trace_path), t0)
        return replay_recording(path, engine, sync, mode=mode, rate=rate, start_s=start_s, decisions_path=out)

    first = replay(out=tmp_path / "a.jsonl")
    second = replay(out=tmp_path / "b.jsonl")
    assert len(first) == 75
    assert [decision_log_key(d) for d in first] == [decision_log_key(d) for d in second]
    assert first[0].latency_ms != second[0].latency_ms  # only wall-clock fields differ
    logged = [decision_log_key(json.loads(line)) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert logged == [decision_log_key(d) for d in second]
    assert {d.energy_source for d in first} == {"replay"} and len({d.energy_mj for d in first}) > 10
    assert sum("audio" in d.missing for d in first) < 10  # audio present once 0.25 s has arrived
    paced = replay(mode="realtime", rate=20.0)  # 3 s of event time in ~0.15 s
    assert [decision_log_key(d) for d in paced] == [decision_log_key(d) for d in first]
    later = replay(start_s=1.0)
    assert 45 <= len(later) <= 52 and later[0].timestamp_ns >= t0 + 1000 * MS
    with pytest.raises(ValueError, match="mode"):
        replay(mode="slow")
