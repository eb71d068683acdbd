"""A simulated robot streams AV-MNIST-like digits, the spoken digit and the label on a side topic; the driver
matches labels to samples (live accuracy)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from exitflow.pipeline.data.roots import SHARED_DATA
from exitflow.pipeline.live.core.endpoints import modalities_of
from exitflow.pipeline.live.core.labels import LABEL, LabelBook
from exitflow.pipeline.messages import Sample


def test_labels_attach_to_the_sample_their_frame_triggered() -> None:
    book = LabelBook(tolerance_ns=1_000)
    book.add(2_000_000, 7)
    book.add(1_000_000, 3)
    s = Sample(0, 1_000_500, {}, timestamps_ns={"image": 1_000_500})
    assert book.attach(s).label == 3  # within 1 us
    assert book.attach(s).label is None  # used once
    assert book.attach(Sample(1, 5, {}, timestamps_ns={"image": 1_500_000})).label is None  # nothing near
    assert book.attach(Sample(2, 2_000_000, {}, timestamps_ns={"image": 2_000_000}), "image").label == 7
    labelled = Sample(3, 0, {}, label=1)
    assert book.attach(labelled) is labelled
    small = LabelBook(keep=2)
    for t in range(5):
        small.add(t * 10_000_000, t)  # every 10 ms
    assert small.attach(Sample(4, 0, {}, timestamps_ns={"image": 0})).label is None  # oldest forgotten


needs_data = pytest.mark.skipif(not (SHARED_DATA / "fsdd" / "fsdd_test.npz").is_file(), reason="no shared data")


@needs_data
def test_a_robot_streams_frames_pcm_and_labels_with_the_frames_stamps() -> None:
    from exitflow.pipeline.live.sources.robot import DigitRobotFactory, digit_stream

    stream = digit_stream(SHARED_DATA, n=3, hold_s=0.2)
    assert len(stream.jpegs) == len(stream.labels) == 3 and len(stream.pcm) == 3 * 3200
    factory = DigitRobotFactory("robot0", stream, fps=20, chunk_ms=20, start_item=1, offset_ns=3_600_000_000_000)
    assert set(modalities_of(factory)) == {"image", "audio", LABEL}
    source = factory()
    got = []
    end = time.monotonic() + 0.45
    while time.monotonic() < end:
        msg = source.read()
        if msg is not None:
            got.append(msg)
    frames = [m for m in got if m.modality == "image"]
    labels = [m for m in got if m.modality == LABEL]
    chunks = [m for m in got if m.modality == "audio"]
    assert 7 <= len(frames) <= 11 and len(labels) == len(frames)
    assert 18 <= len(chunks) <= 24 and all(len(c.payload) == 320 and c.sample_rate_hz == 16000 for c in chunks)
    assert [f.timestamp_ns for f in frames] == [x.timestamp_ns for x in labels]
    assert frames[0].payload.shape == (28, 28) and frames[0].payload.dtype == np.uint8
    # item 1 for the first 0.2 s (4 frames at 20 fps), then item 2
    assert [x.payload for x in labels[:5]] == [stream.labels[1]] * 4 + [stream.labels[2]]
    assert abs(frames[0].timestamp_ns - time.time_ns() - 3_600_000_000_000) < 5e9  # on its skewed clock


@needs_data
@pytest.mark.parametrize("max_age_ms", [None, 0.001])
def test_a_local_pipeline_scores_labels_and_sheds_stale_samples(max_age_ms) -> None:
    from exitflow.pipeline.config import StreamConfig
    from exitflow.pipeline.live.runtime.local import LocalPipeline
    from exitflow.pipeline.live.sources.robot import DigitRobotFactory, digit_stream

    stream = StreamConfig(live_view=False, runtime="local", max_sample_age_ms=max_age_ms,
                          engine="exitflow.pipeline.live.runtime.rule_engine:build_rule_engine")
    robot = DigitRobotFactory("robot0", digit_stream(SHARED_DATA, n=3), fps=20)
    pipe = LocalPipeline(stream, stream.engine, sources={"robot0": robot})
    try:
        pipe.start()
        pipe.wait_ready(timeout_s=30)
        pipe.run(duration_s=2.0)
        snap = pipe.snapshot()
    finally:
        pipe.shutdown()
    if max_age_ms is None:  # every decision carries the label its frame was sent with
        assert snap["decisions"] > 10 and snap["accuracy"]["labelled"] == snap["decisions"]
        assert snap["overload"]["shed"] == {}
    else:  # every sample is older than 1 us at dispatch: shed, counted, nothing decided
        assert snap["decisions"] == 0 and snap["overload"]["shed"]["shed:stale"] > 10
        assert snap["drops"]["engine_queue"]["shed:stale"] == snap["overload"]["shed"]["shed:stale"]
        assert snap["overload"]["overloaded"] is True


@needs_data
def test_a_run_without_sources_plays_the_digit_robot_and_records_each_of_its_modalities(tmp_path) -> None:
    """``exitflow run`` with an empty ``stream.sources`` (the README's live example) streams the
    digit robot; a recording keeps its frames and its PCM, each on its own channel."""
    from exitflow.pipeline.config import load_config
    from exitflow.pipeline.live.recording.reader import Recording
    from exitflow.pipeline.live.recording.writer import RecordingWriter
    from exitflow.pipeline.live.run import demo_sources

    cfg = load_config(None, ["data.root=auto"])
    assert not cfg.stream.sources
    sources = demo_sources(cfg)
    (name, factory), = sources.items()
    assert set(modalities_of(factory)) == {"image", "audio", LABEL}
    robot = factory()
    messages = []
    deadline = time.monotonic() + 5.0
    while len({m.modality for m in messages}) < 3 and time.monotonic() < deadline:
        msg = robot.read()
        if msg is not None:
            messages.append(msg)
    robot.close()
    writer = RecordingWriter(tmp_path / "robot.mcap")
    for msg in messages:
        if msg.modality != LABEL:
            writer.write_message(msg)
    writer.close()
    with Recording(tmp_path / "robot.mcap") as rec:
        recorded = {e.message.modality for e in rec.events() if e.message is not None}
    assert recorded == {"image", "audio"}
