"""Recordings Foxglove opens: schemas, epoch times, metadata, codecs, streaming reads, old files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer
from mcap_protobuf.decoder import DecoderFactory

from exitflow.pipeline.errors import DataError
from exitflow.pipeline.live.core.sync import Synchronizer
from exitflow.pipeline.live.recording.mcap_schemas import (
    COMPRESSED_IMAGE,
    LOG,
    RAW_AUDIO,
    RAW_IMAGE,
    decode_sensor,
    encode_sensor,
)
from exitflow.pipeline.live.recording.reader import Recording, read_recording, recorded_modalities
from exitflow.pipeline.live.recording.v1 import SENSOR_ENCODING, encode_sensor_message
from exitflow.pipeline.live.recording.writer import RecordingWriter
from exitflow.pipeline.live.runtime.playback import replay_recording, replay_stream
from exitflow.pipeline.live.runtime.rule_engine import RuleEngine
from exitflow.pipeline.messages import Decision, SensorMessage

MS = 1_000_000
YEAR_2020_NS = 1_577_836_800 * 10**9


def frame(i: int, shape: tuple[int, ...] = (24, 32)) -> np.ndarray:
    rng = np.random.default_rng(i)
    return (rng.random(shape) * 40 + 100 + (i % 50)).astype(np.uint8)


def test_each_schema_round_trips_its_payload():
    img = frame(1)
    raw = decode_sensor(RAW_IMAGE, encode_sensor(SensorMessage("image", "cam", 5, img), RAW_IMAGE, 7), "cam", 5, 3)
    np.testing.assert_array_equal(raw.payload, img)
    assert (raw.modality, raw.source, raw.timestamp_ns, raw.seq, raw.meta["epoch_ns"]) == ("image", "cam", 5, 3, 7)
    color = frame(2, (16, 16, 3))
    back = decode_sensor(RAW_IMAGE, encode_sensor(SensorMessage("image", "c", 1, color), RAW_IMAGE, 1), "c", 1, 0)
    np.testing.assert_array_equal(back.payload, color)
    jpeg = decode_sensor(COMPRESSED_IMAGE, encode_sensor(SensorMessage("image", "cam", 5, img), COMPRESSED_IMAGE, 7, 90),
                         "cam", 5, 0).payload
    assert jpeg.shape == img.shape and jpeg.dtype == np.uint8
    assert np.abs(jpeg.astype(int) - img.astype(int)).mean() < 6  # lossy, but the same picture
    pcm = (np.arange(-800, 800, dtype=np.int16) * 20).astype(np.float32) / 32768.0  # from 16-bit PCM: exact
    audio = decode_sensor(RAW_AUDIO, encode_sensor(SensorMessage("audio", "mic", 9, pcm, sample_rate_hz=16000),
                                                   RAW_AUDIO, 9), "mic", 9, 0)
    np.testing.assert_array_equal(audio.payload, pcm)
    assert audio.sample_rate_hz == 16000 and audio.payload.dtype == np.float32
    text = decode_sensor(LOG, encode_sensor(SensorMessage("text", "words", 3, "bin blue ✓"), LOG, 3), "words", 3, 0)
    assert text.payload == "bin blue ✓" and text.modality == "text"


def test_payloads_a_schema_cannot_hold_are_refused_with_the_reason():
    with pytest.raises(TypeError, match="uint8"):
        encode_sensor(SensorMessage("image", "cam", 1, np.zeros((4, 4), np.float32)), COMPRESSED_IMAGE, 1)
    with pytest.raises(ValueError, match="NaN"):
        encode_sensor(SensorMessage("audio", "mic", 1, np.array([np.nan], np.float32), sample_rate_hz=16000),
                      RAW_AUDIO, 1)
    with pytest.raises(TypeError, match="str"):
        encode_sensor(SensorMessage("text", "t", 1, b"bytes"), LOG, 1)
    with pytest.raises(ValueError, match="does not (decode|parse)"):
        decode_sensor(COMPRESSED_IMAGE, encode_sensor(SensorMessage("image", "c", 1, frame(0)), COMPRESSED_IMAGE, 1)[:40],
                      "c", 1, 0)


def write_run(path: Path, seconds: int = 3, **options) -> int:
    """A small run: 25 fps frames, 10 Hz audio, words, decisions, a status; returns t0 (monotonic ns)."""
    t0 = time.monotonic_ns()
    w = RecordingWriter(path, chunk_size_bytes=16 * 1024, flush_interval_s=0, config_yaml="stream:\n  slop_ms: 60\n",
                        **options)
    for i in range(25 * seconds):
        t = t0 + 40 * MS * i
        w.write_message(SensorMessage("image", "cam", t, frame(i), seq=i))
        if i % 4 == 0:
            audio = (np.sin(np.arange(1600) / 7 + i) * 0.3).astype(np.float32)
            w.write_message(SensorMessage("audio", "mic", t + MS, audio, seq=i // 4, sample_rate_hz=16000))
        if i % 12 == 0:
            w.write_message(SensorMessage("text", "words", t + 2 * MS, f"word {i}", seq=i // 12))
        w.write_decision(Decision(sample_id=i, prediction=i % 10, system="t", exits={"image": i % 3},
                                  energy_mj=10.0 + i % 5, energy_source="test", estimated=True), t + 3 * MS)
    w.write_status({"budget": {"mj_per_sample": 12.0}, "energy_mj_mean": 11.0, "latency_ms": {}}, t0 + MS)
    w.close()
    return t0


def test_every_channel_has_a_schema_and_times_are_epoch(tmp_path):
    path = tmp_path / "run.mcap"
    t0 = write_run(path)
    with path.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        schemas = {summary.channels[c].topic: summary.schemas[summary.channels[c].schema_id].name
                   for c in summary.channels}
        assert schemas == {"/sensor/cam": COMPRESSED_IMAGE, "/sensor/mic": RAW_AUDIO, "/sensor/words": LOG,
                           "/decisions": "exitflow.Decision", "/status": "exitflow.Status"}
        assert summary.statistics.message_start_time > YEAR_2020_NS
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
        assert metadata["exitflow.config"]["yaml"].startswith("stream:")
        assert metadata["exitflow"]["format"] == "exitflow.mcap.v2" and metadata["exitflow"]["git_revision"]
        offset = int(metadata["exitflow.clock"]["epoch_offset_ns"])
        assert [a.name for a in reader.iter_attachments()] == ["config.yaml"]
        _, channel, message, decoded = next(reader.iter_decoded_messages(topics=["/sensor/cam"]))
        assert decoded.format == "jpeg" and decoded.frame_id == "cam"  # the standard protobuf decoder reads it
        assert message.log_time == t0 + offset and message.publish_time == message.log_time
        stamp = decoded.timestamp.seconds * 10**9 + decoded.timestamp.nanos
        assert stamp == message.log_time
    back = [e.message for e in read_recording(path, topics=["/sensor/cam"])]
    assert [m.timestamp_ns for m in back] == [t0 + 40 * MS * i for i in range(75)]  # monotonic, exact
    assert [m.seq for m in back] == list(range(75))


def test_reads_seek_by_time_and_filter_by_topic_through_the_index(tmp_path):
    path = tmp_path / "run.mcap"
    write_run(path, seconds=4, image_format="raw")
    with Recording(path) as rec:
        t0 = rec.start_time_ns()
        assert t0 is not None
        window = list(rec.events(["/sensor/cam"], t0 + 1_000 * MS, t0 + 2_000 * MS - 1))
        assert len(window) == 25 and all(e.topic == "/sensor/cam" for e in window)
        assert rec.report.mode == "index"
        chunks_for_window = rec.report.chunks_read
    with Recording(path) as rec:
        everything = list(rec.events())
        assert rec.report.chunks_read > 2 * chunks_for_window  # the seek skipped chunks
    assert len(everything) == 100 + 25 + 9 + 100 + 1
    assert recorded_modalities(path) == ["audio", "image", "text"]
    assert recorded_modalities(path, ["/sensor/mic"]) == ["audio"]


def test_replay_with_start_end_and_topics(tmp_path):
    path = tmp_path / "run.mcap"
    write_run(path, seconds=4)

    def sync():
        return Synchronizer(slop_ns=60 * MS, audio_rate_hz=16000, audio_window_s=1.0)

    whole = replay_recording(path, RuleEngine(), sync())
    part = replay_recording(path, RuleEngine(), sync(), start_s=1.0, end_s=2.0)
    only_cam = replay_recording(path, RuleEngine(), Synchronizer(["image"], slop_ns=60 * MS), topics=["/sensor/cam"])
    assert len(whole) == 100 and 24 <= len(part) <= 26 and len(only_cam) == 100
    assert all(d.missing == [] for d in only_cam)  # the synchronizer only waited for images
    assert part[0].timestamp_ns == whole[25].timestamp_ns
    again = replay_stream(path, RuleEngine(), sync())
    assert again.decisions == 100 and again.messages == 100 + 25 + 9 and not again.lost_data


def test_a_first_format_recording_still_replays(tmp_path):
    """A file as RecordingWriter wrote it before schemas (exitflow.sensor.v1, monotonic log_time)."""
    path = tmp_path / "old.mcap"
    with path.open("wb") as f:
        w = Writer(f, chunk_size=4096, compression=CompressionType.ZSTD)
        w.start(profile="exitflow", library="exitflow")
        cam = w.register_channel(topic="/sensor/cam", message_encoding=SENSOR_ENCODING, schema_id=0)
        for i in range(50):
            t = 10**9 + 40 * MS * i
            w.add_message(cam, log_time=t, publish_time=t,
                          data=encode_sensor_message(SensorMessage("image", "cam", t, frame(i), seq=i)))
        w.finish()
    decisions = replay_recording(path, RuleEngine(), Synchronizer(["image"], slop_ns=60 * MS))
    assert len(decisions) == 50 and decisions[0].timestamp_ns == 10**9
    assert recorded_modalities(path) == ["image"]


def test_a_recording_of_an_unknown_format_gets_one_clear_error(tmp_path):
    path = tmp_path / "future.mcap"
    with path.open("wb") as f:
        w = Writer(f)
        w.start()
        w.add_metadata("exitflow", {"format": "exitflow.mcap.v9"})
        w.finish()
    with pytest.raises(DataError, match="exitflow.mcap.v9"):
        list(read_recording(path))
    (tmp_path / "junk.mcap").write_bytes(b"not an mcap file at all" * 10)
    with pytest.raises(DataError, match="not an MCAP"):
        list(read_recording(tmp_path / "junk.mcap"))


def test_the_writer_refuses_bad_settings():
    for kwargs, match in (({"image_format": "png"}, "image_format"), ({"jpeg_quality": 0}, "jpeg_quality"),
                          ({"compression": "gzip"}, "compression"), ({"flush_interval_s": -1}, "flush_interval_s"),
                          ({"image_max_side_px": 2}, "image_max_side_px")):
        with pytest.raises(ValueError, match=match):
            RecordingWriter("/nonexistent/never.mcap", **kwargs)


def test_frames_are_scaled_down_to_the_configured_side(tmp_path):
    path = tmp_path / "small.mcap"
    w = RecordingWriter(path, image_max_side_px=16, flush_interval_s=0)
    w.write_message(SensorMessage("image", "cam", 1, frame(0, (24, 32))))
    w.close()
    [event] = list(read_recording(path))
    assert event.message is not None and event.message.payload.shape == (12, 16)


def test_json_channels_carry_the_monotonic_time(tmp_path):
    path = tmp_path / "run.mcap"
    t0 = write_run(path, seconds=1)
    with path.open("rb") as f:
        decision = next(m for _, c, m in make_reader(f).iter_messages(topics=["/decisions"]))
    body = json.loads(decision.data)
    assert body["monotonic_ns"] == t0 + 3 * MS and decision.log_time > YEAR_2020_NS

