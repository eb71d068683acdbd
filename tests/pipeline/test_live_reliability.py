"""Reliability of the live path without Ray: per-sample isolation, the circuit breaker, sync that
cannot be poisoned, trigger: audio, outage events, engine names, Ray address checks, peers."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from exitflow.pipeline.live.core.endpoints import DecisionLog
from exitflow.pipeline.live.core.failures import (
    CircuitBreaker,
    CircuitOpenError,
    FailedDecision,
    LiveRuntimeError,
    OutageEvent,
    describe_error,
    error_kind,
)
from exitflow.pipeline.live.core.sync import AudioWindow, Synchronizer
from exitflow.pipeline.live.recording.reader import read_recording
from exitflow.pipeline.live.recording.writer import RecordingWriter
from exitflow.pipeline.live.runtime.rule_engine import RuleEngine
from exitflow.pipeline.live.runtime.workers import EngineWorker, SourceWorker, resolve_engine_factory
from exitflow.pipeline.live.sources import PcmSocketSource, Source, SourceDisconnected
from exitflow.pipeline.messages import Decision, Sample, SensorMessage

MS = 1_000_000


def image_msg(t_ms: float, source: str = "cam", shape=(24, 32)) -> SensorMessage:
    return SensorMessage("image", source, int(t_ms * MS), np.full(shape, 128, np.uint8))


def audio_msg(t_ms: float, n: int = 1600, source: str = "mic", payload=None, rate: int = 16000) -> SensorMessage:
    data = np.linspace(-0.5, 0.5, n, dtype=np.float32) if payload is None else payload
    return SensorMessage("audio", source, int(t_ms * MS), data, sample_rate_hz=rate)


# -- per-sample isolation in the engine actor ---------------------------------------------------
class FlakyEngine(RuleEngine):
    def process(self, sample: Sample) -> Decision:
        if sample.sample_id % 100 == 42:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return super().process(sample)


def test_any_engine_exception_becomes_a_failed_decision_and_the_next_sample_runs():
    worker = EngineWorker(FlakyEngine)
    ok, failed = 0, 0
    for i in range(300):
        sample = Sample(i, i * MS, {"image": np.full((20, 20), i % 256, np.uint8), "text": "bin blue"})
        decision, stage_ms, error = worker.process(sample)
        if i % 100 == 42:
            assert isinstance(decision, FailedDecision) and decision.prediction == -1
            assert error == decision.error and error.startswith("engine: RuntimeError: CUDA out of memory")
            assert decision.sample_id == i and decision.timestamp_ns == i * MS
            failed += 1
        else:
            assert error is None and decision.system == "rule" and "engine" in stage_ms
            ok += 1
    assert (ok, failed) == (297, 3) and worker.failures == 3
    assert json.loads(json.dumps(decision.to_json_dict()))["sample_id"] == 299


class WrongReturnEngine:
    def process(self, sample):
        return {"prediction": 1}


def test_an_engine_returning_garbage_and_a_broken_payload_are_isolated_too():
    worker = EngineWorker(WrongReturnEngine)
    decision, _, error = worker.process(Sample(0, 0, {"text": "x"}))
    assert isinstance(decision, FailedDecision) and error.startswith("engine: TypeError: engine returned dict")
    worker = EngineWorker(RuleEngine)
    bad = Sample(1, 0, {"image": np.zeros((0, 5), np.uint8), "audio": AudioWindow(np.full(10, np.nan, np.float32), 16000),
                        "text": "ok"})
    decision, _, error = worker.process(bad)
    assert error is None and set(decision.missing) == {"image", "audio"}  # dropped payloads, sample decided
    assert sum(worker.status()["preprocess_drops"].values()) == 2


def test_describe_error_is_one_bounded_line_and_kinds_are_bounded_keys():
    text = describe_error("engine", ValueError("line one\nline two " + "x" * 1000))
    assert "\n" not in text and len(text) <= 300 and text.startswith("engine: ValueError: line one line two")
    assert error_kind(text) == "engine:ValueError"
    assert error_kind(describe_error("preprocess", KeyError())) == "preprocess:KeyError"


# -- circuit breaker ------------------------------------------------------------------------------
def test_circuit_breaker_opens_only_when_every_sample_fails_for_the_window():
    breaker = CircuitBreaker(window_s=10.0, min_failures=3)
    s = 1_000_000_000
    breaker.failure("engine: RuntimeError: a", now_ns=0)
    breaker.failure("engine: RuntimeError: a", now_ns=9 * s)
    breaker.success()  # one good sample resets the window
    breaker.failure("engine: RuntimeError: b", now_ns=10 * s)
    breaker.failure("engine: RuntimeError: b", now_ns=15 * s)
    with pytest.raises(CircuitOpenError, match=r"every sample failed for 10 s .*last: engine: RuntimeError: b.*circuit_breaker_s"):
        breaker.failure("engine: RuntimeError: b", now_ns=20 * s)


def test_circuit_breaker_needs_min_failures_and_can_be_switched_off():
    breaker = CircuitBreaker(window_s=1.0, min_failures=3)
    breaker.failure("x", now_ns=0)
    breaker.failure("x", now_ns=100 * 10**9)  # two slow failures are not a pattern
    off = CircuitBreaker(window_s=0.0)
    for i in range(100):
        off.failure("x", now_ns=i * 10**9)
    with pytest.raises(ValueError, match=">= 0"):
        CircuitBreaker(window_s=-1)


# -- sync ----------------------------------------------------------------------------------------
def test_malformed_audio_is_dropped_and_counted_and_later_polls_still_work():
    sync = Synchronizer(("image", "audio"), slop_ns=20 * MS, audio_window_s=0.2)
    bad = [
        audio_msg(0, payload=np.zeros((2, 800), np.float32)),  # 2-D
        audio_msg(1, payload="not audio"),
        audio_msg(2, payload=np.full(800, np.nan, np.float32)),
        audio_msg(3, payload=np.zeros(0, np.float32)),
        audio_msg(4, payload=np.zeros(800, np.complex64)),
        audio_msg(5, rate=8000),
        SensorMessage("audio", "mic", -5, np.zeros(10, np.float32), sample_rate_hz=16000),
        SensorMessage("audio", "mic", "soon", np.zeros(10, np.float32), sample_rate_hz=16000),  # type: ignore[arg-type]
        SensorMessage("audio", "mic", 6 * MS, np.zeros(10, np.float32), sample_rate_hz=None),
    ]
    for msg in bad:
        assert sync.push(msg) is False
    dropped = sync.stats.dropped
    assert dropped["malformed_audio"] == 5 and dropped["non_finite_audio"] == 1
    assert dropped["rate_mismatch"] == 1 and dropped["malformed_timestamp"] == 2
    for i in range(5):
        assert sync.push(audio_msg(100 + 100 * i))
        assert sync.push(image_msg(100 + 100 * i))
    samples = sync.poll(10_000 * MS)
    assert len(samples) == 5 and all(not s.missing for s in samples)
    assert all(s.payloads["audio"].samples.shape == (3200,) for s in samples)


def test_a_poisoned_buffer_is_cleared_and_counted_instead_of_failing_every_poll():
    sync = Synchronizer(("image", "audio"), slop_ns=20 * MS, audio_window_s=0.2)
    sync._buffers["audio"].append(audio_msg(0, payload="smuggled past push"))  # what check() would refuse
    sync.push(image_msg(1))
    assert sync.poll(100 * MS) == []  # that sample is lost, counted
    assert sync.stats.dropped == {"assemble_failed:ValueError": 1}
    sync.push(audio_msg(200))
    sync.push(image_msg(200))
    (sample,) = sync.poll(1000 * MS)
    assert not sample.missing


def test_duplicate_and_backwards_timestamps_and_bad_text_are_counted():
    sync = Synchronizer(("image", "text"), slop_ns=10 * MS)
    assert sync.push(image_msg(10))
    assert not sync.push(image_msg(10))
    assert not sync.push(image_msg(5))
    assert not sync.push(SensorMessage("text", "t", 1, ""))
    assert not sync.push(SensorMessage("text", "t", 2, "x" * (1 << 20)))
    assert not sync.push(SensorMessage("text", "t", 3, b"bytes"))
    assert not sync.push(SensorMessage("image", "cam2", 3, np.zeros((4, 4, 7), np.uint8)))
    assert not sync.push("not a message")  # type: ignore[arg-type]
    assert sync.stats.dropped == {
        "duplicate_timestamp": 1, "non_monotonic": 1, "empty_text": 1, "text_too_long": 1,
        "malformed_text": 1, "malformed_image": 1, "malformed_message": 1,
    }


def test_audio_trigger_gets_the_assembled_window_not_the_raw_chunk():
    from exitflow.pipeline.live.runtime.preprocess import preprocess_sample

    sync = Synchronizer(("audio", "text"), trigger="audio", slop_ns=0, audio_window_s=1.0)
    for i in range(12):
        sync.push(audio_msg(100 * i))
    sync.push(SensorMessage("text", "t", 50 * MS, "bin blue"))
    samples = sync.poll(1150 * MS)  # before the trigger timeout: no fallback sample
    assert len(samples) == 12
    assert "audio" in samples[0].missing  # 100 ms of a 1 s window: under the fill share
    full = samples[-1]
    assert isinstance(full.payloads["audio"], AudioWindow) and full.payloads["audio"].samples.shape == (16000,)
    assert full.payloads["text"] == "bin blue"
    assert preprocess_sample(full).payloads["audio"].shape == (1, 112, 112)
    assert sync.stats.missing["audio"]["audio_underfill"] == 2  # 1600 and 3200 of 16000 samples
    decision = RuleEngine().process(preprocess_sample(full))
    assert decision.order == ["audio", "text"]


# -- outage events -------------------------------------------------------------------------------
class FlappingSource(Source):
    """Gives a message per read and breaks its stream every 5 messages."""

    modality = "text"

    def __init__(self):
        from exitflow.pipeline.live.core.backoff import Backoff

        super().__init__("flap", "text", Backoff(0.0, 0.0))
        self.n = 0

    def _open(self):
        pass

    def _read_raw(self):
        self.n += 1
        if self.n % 5 == 0:
            raise SourceDisconnected("peer went away")
        time.sleep(0.002)
        return self.new_message(f"line {self.n}")


def test_source_worker_reports_every_disconnect_and_reconnect_as_events():
    worker = SourceWorker(FlappingSource, queue_size=4)
    events: list[OutageEvent] = []
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and sum(e.event == "reconnected" for e in events) < 3:
            events += worker.health()["events"]
            time.sleep(0.01)
    finally:
        worker.stop()
    kinds = [e.event for e in events]
    assert kinds[:6] == ["disconnected", "reconnected"] * 3, kinds  # the first connect is no event
    assert "peer went away" in events[0].reason and events[0].source == "flap"


def test_decision_log_and_recording_hold_failed_decisions_and_outages(tmp_path):
    failed = FailedDecision(sample_id=3, prediction=-1, system="failed", error="engine: RuntimeError: boom")
    event = OutageEvent("cam", "actor_down", "ActorDiedError", 123)
    log = DecisionLog(tmp_path / "d.jsonl")
    log.write_decision(failed)
    log.write_event(event)
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert lines[0]["error"] == "engine: RuntimeError: boom" and lines[1]["outage"]["event"] == "actor_down"
    rec = RecordingWriter(tmp_path / "r.mcap")
    rec.write_message(image_msg(1))
    rec.write_decision(failed, 2)
    rec.write_event(event)
    rec.close()
    got = list(read_recording(tmp_path / "r.mcap"))  # /events does not disturb readers (log_time order)
    assert sorted(e.topic for e in got) == ["/decisions", "/sensor/cam"]
    assert next(e.decision for e in got if e.decision)["error"] == "engine: RuntimeError: boom"
    [outage] = [e.record for e in read_recording(tmp_path / "r.mcap", records=True) if e.topic == "/events"]
    assert outage is not None and outage["outage"]["event"] == "actor_down"


# -- engine names (item 8) ------------------------------------------------------------------------
def test_stream_engine_accepts_only_systems_entry_points_and_exitflow_factories(monkeypatch):
    from exitflow.pipeline.live.runtime import workers

    assert resolve_engine_factory("exitflow.pipeline.live.runtime.rule_engine:build_rule_engine")(None).process
    for bad, match in [
        ("os:system", "only exitflow's own factories"),
        ("benchmarks.live_throughput:build_rule_engine", "entry-point group 'exitflow.engines'"),
        ("system:nope", "unknown system 'nope'"),
        ("my-engine", "not an engine registered"),
        ("exitflow.pipeline.live.runtime.rule_engine:nope", "cannot load engine factory"),
    ]:
        with pytest.raises(LiveRuntimeError, match=match):
            resolve_engine_factory(bad)

    class FakePoint:
        name = "my-engine"

        def load(self):
            return lambda cfg: "engine"

    monkeypatch.setattr(workers, "engine_entry_points", lambda: {"my-engine": FakePoint()})
    assert resolve_engine_factory("my-engine")(None) == "engine"


def test_default_stream_engine_names_a_real_system():
    from exitflow.pipeline.config import StreamConfig
    from exitflow.pipeline.inference.systems import system_names

    engine = StreamConfig().engine
    assert engine.startswith("system:") and engine.split(":", 1)[1] in system_names()
    assert callable(resolve_engine_factory(engine))


# -- Ray address (item 5) -------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_fails_with_one_line(monkeypatch, tmp_path):
    from exitflow.pipeline.live.runtime.ray import connect as ray_connect
    from exitflow.pipeline.live.runtime.ray.connect import probe_ray_address

    monkeypatch.setattr(ray_connect, "running_gcs_addresses", lambda: [])  # whatever Ray runs on this machine

    with pytest.raises(LiveRuntimeError, match=r"cannot reach Ray at 127\.0\.0\.1:\d+ .*ray.connect_timeout_s") as e:
        probe_ray_address(f"127.0.0.1:{closed_port()}", timeout_s=2.0)
    assert "\n" not in str(e.value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(LiveRuntimeError, match="no Ray cluster runs here"):
        probe_ray_address("auto", timeout_s=1.0)
    with pytest.raises(LiveRuntimeError, match="HOST:PORT"):
        probe_ray_address("nonsense", timeout_s=1.0)
    monkeypatch.setattr(ray_connect, "running_gcs_addresses", lambda: ["10.0.0.1:1", "10.0.0.2:2"])
    with pytest.raises(LiveRuntimeError, match="several Ray instances"):
        probe_ray_address("auto", timeout_s=1.0)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)  # never accepted: room for every probe in the backlog
    try:
        port = srv.getsockname()[1]
        assert probe_ray_address(f"127.0.0.1:{port}", timeout_s=2.0) == f"127.0.0.1:{port}"
        monkeypatch.setattr(ray_connect, "running_gcs_addresses", lambda: [f"127.0.0.1:{port}"])
        assert probe_ray_address("auto", timeout_s=2.0) == f"127.0.0.1:{port}"  # the one running here
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        assert probe_ray_address("auto", timeout_s=2.0) == f"127.0.0.1:{port}"
    finally:
        srv.close()


# -- peers (item 8) -------------------------------------------------------------------------------
def test_pcm_udp_drops_datagrams_from_peers_not_allowed():
    port = closed_port()
    src = PcmSocketSource("127.0.0.1", port, protocol="udp", sample_rate_hz=16000, chunk_ms=10, allowed_peers=("10.9.9.9",))
    assert src.read() is None  # connects (binds)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(3):
            tx.sendto(np.zeros(160, "<i2").tobytes(), ("127.0.0.1", port))
        for _ in range(20):
            assert src.read() is None
            if src.dropped.get("peer_refused", 0) == 3:
                break
    finally:
        tx.close()
        src.close()
    assert src.dropped["peer_refused"] == 3 and src.messages == 0


def test_tcp_peer_outside_allowed_peers_fails_the_source_with_a_clear_error():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        src = PcmSocketSource("127.0.0.1", srv.getsockname()[1], sample_rate_hz=16000, allowed_peers=("10.9.9.9",))
        assert src.read() is None
        assert src.state == "failed" and "not in allowed_peers" in (src.last_error or "")
    finally:
        srv.close()


# -- the driver's accounting (no Ray: the pieces the loop calls) ----------------------------------
def make_pipeline(tmp_path, **kwargs):
    from exitflow.pipeline.config import StreamConfig
    from exitflow.pipeline.live.runtime.ray.pipeline import RayPipeline

    class Src:
        modality = "image"

    return RayPipeline(StreamConfig(circuit_breaker_s=5.0), RuleEngine, sources={"cam": Src()},
                        decision_log=tmp_path / "log.jsonl", **kwargs)


def test_driver_keeps_only_recent_decisions_and_counts_the_rest(tmp_path):
    from exitflow.pipeline.live.core.failures import failed_decision

    pipe = make_pipeline(tmp_path, keep_decisions=100)
    for i in range(5000):
        sample = Sample(i, i * MS, {"text": "x"})
        d = failed_decision(sample, "engine: RuntimeError: boom") if i % 100 == 42 else RuleEngine().process(sample)
        pipe._emit(d, sample)
    pipe.decision_log.close()
    assert len(pipe.decisions) == 100 and pipe.decisions[-1].sample_id == 4999
    assert (pipe.decisions_total, pipe.failed_total) == (5000, 50)
    snap = pipe.snapshot()
    assert snap["decisions"] == 4950 and snap["failed"] == 50 and snap["failures"] == {"engine:RuntimeError": 50}
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 5000


def test_driver_loop_survives_a_broken_turn_and_the_breaker_stops_a_dead_engine(tmp_path, monkeypatch):
    import threading

    from exitflow.pipeline.live.core.failures import failed_decision

    pipe = make_pipeline(tmp_path)
    stop = threading.Event()
    turns = {"n": 0}

    def step():
        turns["n"] += 1
        if turns["n"] == 3:
            stop.set()
        raise KeyError("a bug in one turn")

    monkeypatch.setattr(pipe, "step", step)
    pipe.run(stop=stop)  # returns normally: the broken turns are counted
    assert pipe.stats.drops["driver"] == {"driver:KeyError": 3}
    pipe.breaker = CircuitBreaker(window_s=1.0, min_failures=3)
    clock = {"ns": 0}
    monkeypatch.setattr(time, "monotonic_ns", lambda: clock["ns"])
    with pytest.raises(CircuitOpenError, match="every sample failed"):
        for i in range(10):
            clock["ns"] = i * 400_000_000
            sample = Sample(i, 0, {"text": "x"})
            pipe._emit(failed_decision(sample, "engine: RuntimeError: dead"), sample)


class BuggySource(Source):
    """A custom source that returns garbage: not a message, a message with a broken meta, a good one."""

    modality = "text"

    def __init__(self):
        super().__init__("buggy", "text")
        self.n = 0

    def _open(self):
        pass

    def _read_raw(self):
        self.n += 1
        time.sleep(0.002)
        if self.n % 3 == 0:
            return {"text": "a dict, not a message"}
        if self.n % 3 == 1:
            msg = self.new_message("ok")
            msg.meta = None
            return msg
        return self.new_message(f"line {self.n}")


def test_a_custom_source_returning_garbage_is_counted_and_keeps_running():
    worker = SourceWorker(BuggySource, queue_size=64)
    got = []
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and len(got) < 5:
            got += worker.drain()
            time.sleep(0.01)
        health = worker.health()
    finally:
        worker.stop()
    assert len(got) >= 5 and all(isinstance(m, SensorMessage) for m in got)
    assert health["dropped"]["not_a_message"] >= 5
