"""Property-based fuzzing of the live input path: sources' parsing, sync, preprocess, the engine
actor and recorded messages. The property everywhere: no exception escapes, and every message
that is refused is counted with a reason.

The example counts are bounded so the suite stays fast; ``benchmarks/fuzz_stream.py`` runs the
same strategies over >= 10,000 generated messages and prints the counts.
"""

from __future__ import annotations

import io
import json
import struct

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exitflow.pipeline.live.core.sync import AudioWindow, Synchronizer
from exitflow.pipeline.live.recording.v1 import decode_sensor_message, encode_sensor_message
from exitflow.pipeline.live.runtime.preprocess import preprocess_sample
from exitflow.pipeline.live.runtime.rule_engine import RuleEngine
from exitflow.pipeline.live.runtime.workers import EngineWorker
from exitflow.pipeline.live.sources import CameraSource, PcmSocketSource, TextFileSource, TextSocketSource
from exitflow.pipeline.messages import Sample, SensorMessage

FAST = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces, CI does not flake
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ONE_MB = 1 << 20

# -- strategies (shared with benchmarks/fuzz_stream.py) -------------------------------------------
_DTYPES = st.sampled_from([np.uint8, np.int16, np.int32, np.float16, np.float32, np.float64, np.bool_, np.complex64])
_SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=24)


def arrays() -> st.SearchStrategy[np.ndarray]:
    """Arrays of any dtype and shape, NaN/inf included."""
    return _DTYPES.flatmap(lambda dt: hnp.arrays(dt, _SHAPES))


def good_frames() -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)))


def audio_payloads() -> st.SearchStrategy[np.ndarray]:
    finite = hnp.arrays(np.float32, st.integers(1, 4000), elements=st.floats(-1, 1, width=32))
    wild = hnp.arrays(np.float32, st.integers(0, 400), elements=st.floats(width=32))  # NaN, inf
    return st.one_of(finite, wild, arrays())


def texts() -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), st.text(max_size=50), st.just("x" * ONE_MB), st.just("\x00\udcff bad"))


def timestamps() -> st.SearchStrategy[object]:
    return st.one_of(
        st.integers(0, 10**10),
        st.sampled_from([0, 5, 5, -1, 2**63, 2**64]),  # duplicates, negative, overflow
        st.floats(allow_nan=True),
        st.none(),
        st.text(max_size=3),
    )


@st.composite
def sensor_messages(draw: st.DrawFn) -> SensorMessage:
    """A message as a buggy or hostile source could emit it (any field may be wrong)."""
    modality = draw(st.sampled_from(["image", "audio", "text", "image", "audio", "video", ""]))
    if modality == "image":
        payload = draw(st.one_of(good_frames(), arrays(), texts()))
    elif modality == "audio":
        payload = draw(st.one_of(audio_payloads(), texts()))
    else:
        payload = draw(st.one_of(texts(), arrays()))
    return SensorMessage(
        modality=modality,
        source=draw(st.sampled_from(["cam", "mic", "txt", "cam2"])),
        timestamp_ns=draw(timestamps()),  # type: ignore[arg-type]
        payload=payload,
        sample_rate_hz=draw(st.sampled_from([16000, 16000, 8000, 44100, 0, None])),
    )


@st.composite
def plausible_messages(draw: st.DrawFn, timestamp_ns: int) -> SensorMessage:
    """A message a working source would send (so samples do form), at ``timestamp_ns``."""
    modality = draw(st.sampled_from(["image", "image", "audio", "audio", "text"]))
    if modality == "image":
        payload: object = draw(hnp.arrays(np.uint8, st.sampled_from([(24, 32), (24, 32, 3)])))
    elif modality == "audio":
        payload = draw(hnp.arrays(np.float32, st.integers(400, 1600), elements=st.floats(-1, 1, width=32)))
    else:
        payload = draw(st.text(min_size=1, max_size=20).filter(str.strip))
    source = {"image": "cam", "audio": "mic", "text": "txt"}[modality]
    return SensorMessage(modality, source, timestamp_ns, payload, sample_rate_hz=16000 if modality == "audio" else None)


@st.composite
def sensor_streams(draw: st.DrawFn, min_size: int = 0, max_size: int = 25) -> list[SensorMessage]:
    """A stream in arrival order: mostly plausible messages with rising timestamps, mixed with
    hostile ones and with duplicate, backwards and garbage timestamps."""
    n = draw(st.integers(min_size, max_size))
    out = []
    clock = draw(st.integers(0, 10**9))
    for _ in range(n):
        clock += draw(st.integers(0, 80_000_000))
        if draw(st.integers(0, 9)) < 6:
            msg = draw(plausible_messages(clock))
            anomaly = draw(st.integers(0, 19))
            if anomaly == 0 and out:
                msg.timestamp_ns = out[-1].timestamp_ns  # duplicate
            elif anomaly == 1:
                msg.timestamp_ns = max(0, clock - 500_000_000)  # backwards
            out.append(msg)
        else:
            out.append(draw(sensor_messages()))
    return out


def feed_sync(
    sync: Synchronizer, messages: list[SensorMessage], poll_every: int = 3, emitted: list | None = None
) -> tuple[int, int]:
    """Push every message (polling now and then); returns (accepted, refused). The samples the polls
    emit are appended to ``emitted`` when given."""
    collect = emitted.extend if emitted is not None else (lambda samples: None)
    accepted = refused = 0
    clock = 0
    for i, msg in enumerate(messages):
        if sync.push(msg):
            accepted += 1
        else:
            refused += 1
        if isinstance(msg.timestamp_ns, int) and 0 <= msg.timestamp_ns < 2**62:
            clock = max(clock, msg.timestamp_ns)
        if i % poll_every == 0:
            collect(sync.poll(clock + 70_000_000))
    collect(sync.poll(clock + 10**9))
    sync.flush()
    return accepted, refused


def refused_count(sync: Synchronizer) -> int:
    """Drops that refused a pushed message (trigger_overflow evicts an accepted one instead)."""
    return sum(n for reason, n in sync.stats.dropped.items() if reason != "trigger_overflow")


# -- sync ----------------------------------------------------------------------------------------
@FAST
@given(sensor_streams(), st.sampled_from(["image", "audio", "text"]))
def test_sync_never_raises_and_counts_every_refused_message(messages, trigger):
    sync = Synchronizer(("image", "audio", "text"), trigger=trigger, slop_ns=60_000_000, audio_window_s=0.1)
    accepted, refused = feed_sync(sync, messages)
    assert accepted + refused == len(messages) == sync.stats.received
    assert refused_count(sync) == refused


# -- preprocess and the engine actor -------------------------------------------------------------
@st.composite
def raw_samples(draw: st.DrawFn) -> Sample:
    payloads = {}
    if draw(st.booleans()):
        payloads["image"] = draw(st.one_of(good_frames(), arrays()))
    if draw(st.booleans()):
        payloads["audio"] = AudioWindow(draw(audio_payloads()), draw(st.sampled_from([16000, 8000, 1])))
    if draw(st.booleans()):
        payloads["text"] = draw(texts())
    return Sample(sample_id=draw(st.integers(0, 10**6)), timestamp_ns=0, payloads=payloads)


@FAST
@given(raw_samples())
def test_preprocess_and_engine_never_raise_and_count_every_dropped_payload(sample):
    drops: dict[str, int] = {}
    out = preprocess_sample(sample, drops)
    dropped = set(out.missing) - set(sample.missing)
    assert sum(drops.values()) == len(dropped)
    decision, _, error = EngineWorker(RuleEngine).process(sample)
    assert decision.sample_id == sample.sample_id
    assert error is None or decision.prediction == -1


# -- sources' parsing ----------------------------------------------------------------------------
@FAST
@given(st.one_of(arrays(), good_frames()))
def test_camera_check_frame_never_raises_and_counts_garbage(frame):
    cam = CameraSource("0", "cam", gray=True)
    msg = cam.check_frame(frame)
    assert (msg is None) == (sum(cam.dropped.values()) == 1)


def _jpeg(seed: int) -> bytes:
    frame = np.random.default_rng(seed).integers(0, 256, (16, 16), np.uint8)
    return cv2.imencode(".jpg", frame)[1].tobytes()


@FAST
@given(st.integers(0, 100), st.binary(max_size=64), st.integers(0, 400), st.sampled_from(["cut", "flip", "junk"]))
def test_corrupt_jpeg_bytes_decode_or_are_counted(seed, junk, pos, how):
    data = bytearray(_jpeg(seed))
    if how == "cut":
        data = data[: pos % len(data)]
    elif how == "flip":
        data[pos % len(data)] ^= 0xFF
    else:
        data = bytearray(junk)
    cam = CameraSource("0", "cam", gray=True)
    msg = cam.decode_frame(bytes(data))
    assert msg is not None or cam.dropped.get("decode_failure") == 1


class FakeSocket:
    def __init__(self, chunks: list[bytes]):
        self.chunks = list(chunks)

    def recv(self, n: int) -> bytes:
        if not self.chunks:
            raise TimeoutError
        return self.chunks.pop(0)

    def close(self) -> None:
        pass


@FAST
@given(st.lists(st.binary(max_size=900), max_size=8), st.sampled_from(["s16le", "f32le"]),
       st.sampled_from([16000, 8000]))
def test_pcm_bytes_of_any_content_and_rate_become_messages_or_counted_drops(chunks, fmt, rate):
    src = PcmSocketSource("127.0.0.1", 1, fmt=fmt, sample_rate_hz=rate, target_rate_hz=16000, chunk_ms=10)
    src._sock = FakeSocket(chunks)  # what _open would have connected
    src.state = "connected"
    for _ in range(len(chunks) * 4 + 2):
        msg = src.read()
        if msg is not None:
            assert msg.payload.dtype == np.float32 and np.isfinite(msg.payload).all()
            assert msg.sample_rate_hz == 16000
    assert set(src.dropped) <= {"non_finite", "resampled"}


@FAST
@given(st.lists(st.one_of(st.binary(max_size=200), st.just(b"a" * ONE_MB), st.just(b"\xff\xfe\n")), max_size=6))
def test_text_socket_bytes_never_raise_and_oversize_lines_are_counted(chunks):
    src = TextSocketSource("127.0.0.1", 1, "txt", max_rate_hz=None)
    src._sock = FakeSocket(chunks + [b""])  # then the peer closes
    src.state = "connected"
    for _ in range(len(chunks) * 3 + 3):
        msg = src.read()
        if msg is not None:
            assert isinstance(msg.payload, str) and 0 < len(msg.payload) <= src.max_chars
    assert set(src.dropped) <= {"line_too_long", "truncated", "flood"}


@FAST
@given(st.lists(st.one_of(
    st.text(max_size=40),
    st.builds(lambda t, s: json.dumps({"t_s": t, "text": s}), st.floats(allow_nan=True), st.text(max_size=10)),
    st.builds(lambda t: json.dumps({"timestamp_ns": t, "text": "x"}), st.one_of(st.integers(), st.text(max_size=3))),
), max_size=8))
@example(['{"t_s": 1.8e299, "text": ""}', '{"t_s": -1, "text": "x"}', '{"timestamp_ns": "7", "text": "x"}'])
def test_jsonl_lines_of_any_content_are_read_or_counted_as_bad_json(lines):
    src = TextFileSource("unused.jsonl", "txt", jsonl=True, realtime=False, max_rate_hz=None)
    src._file = io.BytesIO(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    src._pending = None
    src.state = "connected"
    for _ in range(len(lines) + 2):
        src.read()
    assert set(src.dropped) <= {"bad_json", "bad_time", "truncated", "bad_utf8"}


NOT_UTF8 = (0xC0, 0xC1, 0xF5, 0xF8, 0xFE, 0xFF)  # bytes that never occur in UTF-8


def _read_all(src: TextFileSource, passes: int = 1) -> list[str]:
    """Everything the source hands out until it finishes (or, looping, for ``passes`` passes)."""
    out: list[str] = []
    for _ in range(200_000):
        msg = src.read()
        if msg is not None:
            out.append(msg.payload)
        if src.state == "finished" or src.state == "failed" or (src.loop and len(out) >= passes * 400 - 60):
            break
    return out


@pytest.mark.parametrize("jsonl", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invalid_utf8_bytes_lose_only_their_own_lines(tmp_path, jsonl, seed):
    """Issue 26 item 9: one invalid byte used to escape read() as UnicodeDecodeError and take the ~8 KB
    block around it; now it costs its own line (counted as bad_utf8) and nothing else, on every pass."""
    rng = np.random.default_rng(seed)
    texts = [f"line {i} " + "é" * int(rng.integers(0, 40)) + "x" * int(rng.integers(0, 60)) for i in range(400)]
    lines = [json.dumps({"text": t, "t_s": i * 0.01}).encode() if jsonl else t.encode() for i, t in enumerate(texts)]
    bad = set(rng.choice(400, size=40, replace=False).tolist())
    for i in bad:
        pos = int(rng.integers(0, len(lines[i]) + 1))
        lines[i] = lines[i][:pos] + bytes([int(rng.choice(NOT_UTF8))]) + lines[i][pos:]
    path = tmp_path / ("fuzz.jsonl" if jsonl else "fuzz.txt")
    path.write_bytes(b"\n".join(lines) + b"\n")
    src = TextFileSource(str(path), "txt", jsonl=jsonl, line_rate_hz=None, realtime=False, max_rate_hz=None,
                         max_chars=4096)
    got = _read_all(src)
    good = [t for i, t in enumerate(texts) if i not in bad]
    assert got == good  # every valid line, in order
    assert src.dropped == {"bad_utf8": len(bad)}
    looping = TextFileSource(str(path), "txt", jsonl=jsonl, line_rate_hz=None, realtime=False, max_rate_hz=None,
                             max_chars=4096, loop=True)
    assert _read_all(looping, passes=2)[: 2 * len(good)] == good + good  # the second pass loses nothing either
    assert looping.dropped["bad_utf8"] >= 2 * len(bad) - 1


# -- recorded messages (replay of a crafted file) -------------------------------------------------
@FAST
@given(st.dictionaries(st.sampled_from(["modality", "source", "timestamp_ns", "seq", "kind", "dtype", "shape",
                                        "meta", "sample_rate_hz", "extra"]),
                       st.one_of(st.integers(-5, 2**64), st.text(max_size=5), st.none(), st.lists(st.integers(-2, 9)),
                                 st.sampled_from(["ndarray", "str", "<f4", "|O", "V8", "<U4"]))),
       st.binary(max_size=64))
def test_crafted_sensor_records_decode_or_raise_value_error_only(header, body):
    head = json.dumps(header).encode()
    try:
        msg = decode_sensor_message(struct.pack("<I", len(head)) + head + body)
    except ValueError:
        return
    assert isinstance(msg, SensorMessage)
    assert decode_sensor_message(encode_sensor_message(msg)).timestamp_ns == msg.timestamp_ns
