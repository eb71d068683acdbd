"""Damaged recordings: every intact chunk is read, the damage is counted, nothing raises.

The chunk layout of the undamaged example comes from the ``mcap`` library's own reader, so the
check does not trust the reader under test: after a byte flip every message of every chunk that
does not contain the flipped byte must come back; after a cut, every message of every chunk that
ends before the cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.stream_reader import breakup_chunk

from exitflow.pipeline.live.core.sync import Synchronizer
from exitflow.pipeline.live.recording.mcap_reader import McapFile
from exitflow.pipeline.live.runtime.playback import replay_stream
from exitflow.pipeline.live.runtime.rule_engine import RuleEngine

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples/grid_live.mcap"
MS = 1_000_000

Key = tuple[int, int, int]  # (channel id, log_time, sequence)


def chunk_layout(data: bytes) -> list[tuple[int, int, set[Key]]]:
    """(start offset, end offset, message keys) of every chunk, by the ``mcap`` library."""
    import io

    from mcap.data_stream import ReadDataStream
    from mcap.records import Chunk, Message

    summary = make_reader(io.BytesIO(data)).get_summary()
    assert summary is not None
    out = []
    for index in summary.chunk_indexes:
        body = data[index.chunk_start_offset + 9 : index.chunk_start_offset + index.chunk_length]
        chunk = Chunk.read(ReadDataStream(io.BytesIO(body)))
        keys = {(r.channel_id, r.log_time, r.sequence) for r in breakup_chunk(chunk, validate_crc=True)
                if isinstance(r, Message)}
        out.append((index.chunk_start_offset, index.chunk_start_offset + index.chunk_length, keys))
    return out


def read_keys(path: Path) -> tuple[set[tuple[str, int, int]], McapFile]:
    with McapFile(path) as f:
        got = {(m.topic, m.log_time_ns, m.sequence) for m in f.iter_messages()}
    return got, f


@pytest.fixture(scope="module")
def example() -> tuple[bytes, list[tuple[int, int, set[Key]]], dict[int, str]]:
    if not EXAMPLE.exists():
        pytest.skip("examples/grid_live.mcap is missing")
    data = EXAMPLE.read_bytes()
    import io

    summary = make_reader(io.BytesIO(data)).get_summary()
    assert summary is not None
    topics = {cid: ch.topic for cid, ch in summary.channels.items()}
    return data, chunk_layout(data), topics


def _named(keys: set[Key], topics: dict[int, str]) -> set[tuple[str, int, int]]:
    return {(topics[c], t, s) for c, t, s in keys}


def test_the_undamaged_example_reads_whole_through_the_index(example, tmp_path):
    data, layout, topics = example
    got, f = read_keys(EXAMPLE)
    everything = set().union(*(_named(k, topics) for _, _, k in layout))
    assert got == everything and len(layout) >= 5
    assert f.report.mode == "index" and not f.report.damaged and f.report.chunks_read == len(layout)


def test_200_byte_flips_lose_only_the_chunk_they_hit(example, tmp_path):
    data, layout, topics = example
    everything = set().union(*(_named(k, topics) for _, _, k in layout))
    rng = np.random.default_rng(15)
    lost_any = 0
    for trial in range(200):
        offset = int(rng.integers(0, len(data)))
        damaged = bytearray(data)
        damaged[offset] ^= int(rng.integers(1, 256))
        path = tmp_path / f"flip{trial % 4}.mcap"
        path.write_bytes(bytes(damaged))
        got, f = read_keys(path)
        intact = set().union(*(_named(k, topics) for s, e, k in layout if not s <= offset < e))
        assert intact <= got, f"flip at {offset}: {len(intact - got)} messages of intact chunks missing"
        assert got <= everything | got  # nothing invented beyond the recording's messages
        hit = [s for s, e, _ in layout if s <= offset < e]
        if got != everything:
            lost_any += 1
            assert f.report.chunks_damaged, f"flip at {offset} lost messages without reporting a damaged chunk"
            if hit:
                assert any(c.offset == hit[0] for c in f.report.chunks_damaged)
    assert lost_any > 100  # most flips land in a chunk: the test really damages data


def test_20_truncations_keep_every_chunk_before_the_cut(example, tmp_path):
    data, layout, topics = example
    rng = np.random.default_rng(20)
    for trial in range(20):
        cut = int(rng.integers(16, len(data)))
        path = tmp_path / f"cut{trial % 4}.mcap"
        path.write_bytes(data[:cut])
        got, f = read_keys(path)
        before = set().union(*(_named(k, topics) for s, e, k in layout if e <= cut))
        assert before <= got, f"cut at {cut}: {len(before - got)} messages of complete chunks missing"
        assert f.report.mode == "scan"
        partial = [s for s, e, _ in layout if s < cut < e]
        if partial:
            assert f.report.truncated and f.report.chunks_damaged[-1].offset == partial[0]


def test_a_damaged_example_replays_without_a_traceback_and_reports_the_loss(example, tmp_path):
    data, layout, topics = example
    start, end, keys = layout[len(layout) // 2]
    damaged = bytearray(data)
    damaged[(start + end) // 2] ^= 0xFF  # the middle of a middle chunk's compressed data
    path = tmp_path / "flip.mcap"
    path.write_bytes(bytes(damaged))
    sync = Synchronizer(slop_ns=60 * MS, audio_rate_hz=16000, audio_window_s=1.0)
    summary = replay_stream(path, RuleEngine(), sync)
    clean = replay_stream(EXAMPLE, RuleEngine(), Synchronizer(slop_ns=60 * MS, audio_rate_hz=16000,
                                                                audio_window_s=1.0))
    sensor_keys = {k for k in keys if topics[k[0]].startswith("/sensor/")}
    assert summary.lost_data and not clean.lost_data
    assert summary.messages == clean.messages - len(sensor_keys)
    [chunk] = summary.read.chunks_damaged
    assert chunk.offset == start and chunk.messages_lost == len(keys)
    assert chunk.start_ns is not None and chunk.end_ns is not None and chunk.end_ns > chunk.start_ns
    assert 0 < summary.decisions < clean.decisions


def test_a_file_cut_inside_its_first_chunk_reports_the_loss_instead_of_no_data(example, tmp_path):
    data, layout, _ = example
    path = tmp_path / "cut.mcap"
    path.write_bytes(data[: layout[0][1] - 10])
    summary = replay_stream(path, RuleEngine(), Synchronizer(slop_ns=60 * MS))
    assert summary.messages == 0 and summary.lost_data and summary.read.truncated
    assert summary.read.chunks_damaged[0].offset == layout[0][0]


@pytest.mark.parametrize("extra", [0, 1, 5, 8])
def test_a_file_cut_at_or_just_past_a_chunk_boundary_reads_as_incomplete(example, tmp_path, extra):
    """Cut where a chunk (and its message indexes) ends, or a few bytes into the next record: every
    record before the cut is whole, so only the missing footer tells that the file is not."""
    data, layout, topics = example
    k = len(layout) // 2
    boundary = layout[k + 1][0]  # the next chunk's start: the end of chunk k's message index records
    path = tmp_path / "cut.mcap"
    path.write_bytes(data[: boundary + extra])
    got, f = read_keys(path)
    kept = set().union(*(_named(keys, topics) for s, e, keys in layout if e <= boundary))
    assert got == kept
    assert f.report.incomplete and f.report.damaged and f.report.mode == "scan"
    assert f.report.messages_read == len(kept)
    times = sorted(t for _, t, _ in kept)
    assert (f.report.first_ns, f.report.last_ns) == (times[0], times[-1])
    assert f"{len(kept)} message(s) kept" in f.report.kept_text()


def test_a_finished_recording_is_not_incomplete(example, tmp_path):
    data, layout, _ = example
    got, f = read_keys(EXAMPLE)
    assert not f.report.incomplete
    path = tmp_path / "no_summary.mcap"  # everything up to the data-end record: all data is there
    data_end = data.rfind(b"\x0f\x04\x00\x00\x00\x00\x00\x00\x00", layout[-1][1])
    assert data_end > 0
    path.write_bytes(data[: data_end + 13])
    got, f = read_keys(path)
    assert f.report.mode == "scan" and not f.report.incomplete and len(got) == len(read_keys(EXAMPLE)[0])
