"""The live runtime on Ray: a real GRID clip served by ffmpeg over loopback, and a killed source actor.

One local Ray instance is shared by the whole module (Ray is slow to start on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from exitflow.pipeline.config import RayConfig, SourceConfig, StreamConfig  # noqa: E402
from exitflow.pipeline.data.roots import SHARED_DATA  # noqa: E402
from exitflow.pipeline.live.recording.reader import read_recording  # noqa: E402
from exitflow.pipeline.live.recording.writer import RecordingWriter  # noqa: E402
from exitflow.pipeline.live.runtime.ray.pipeline import RayPipeline, start_ray  # noqa: E402
from exitflow.pipeline.live.runtime.rule_engine import RuleEngine as ProjectRuleEngine  # noqa: E402
from exitflow.pipeline.live.sources.loopback import free_port, loopback_listener, serve_clip  # noqa: E402
from exitflow.pipeline.messages import Decision, Sample  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GRID = SHARED_DATA / Path("grid_av_samples")
GRID_CLIP = GRID / "mpg" / "bbaf2n.mpg"
needs_grid = pytest.mark.skipif(not GRID_CLIP.exists(), reason="GRID clips not found under ../shared/data")
needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None,
    reason="ffmpeg not installed (apt-get install -y ffmpeg; see .ci/apt-packages.txt)",
)


class RuleEngine(ProjectRuleEngine):
    """The project's rule engine, refusing inputs that are not model-ready (28x28 image, 112x112 spectrogram)."""

    def process(self, sample: Sample) -> Decision:
        present = sample.present()
        if "image" in present:
            image = sample.payloads["image"]
            if image.shape != (1, 28, 28) or not np.isfinite(image).all():
                raise ValueError(f"bad image input {image.shape}")
        if "audio" in present and sample.payloads["audio"].shape != (1, 112, 112):
            raise ValueError(f"bad audio input {sample.payloads['audio'].shape}")
        return super().process(sample)


@pytest.fixture(scope="module")
def ray_local():
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)  # workers import tests.*
    started = start_ray(RayConfig(num_cpus=4, namespace="exitflow-test"))
    yield
    if started:
        ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old



class TextServer:
    """Sends the clip's words on a loopback TCP socket at ``rate_hz`` to every client."""

    def __init__(self, words: list[str], rate_hz: float = 2.0):
        self.srv = loopback_listener()
        self.port = self.srv.getsockname()[1]
        self.words, self.period_s, self.stop = words, 1.0 / rate_hz, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn):
        with conn:
            i = 0
            while not self.stop.is_set():
                try:
                    conn.sendall((self.words[i % len(self.words)] + "\n").encode())
                except OSError:
                    return
                i += 1
                time.sleep(self.period_s)

    def close(self):
        self.stop.set()
        self.srv.close()


def run_until(pipe: RayPipeline, condition, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        pipe.step()
        if condition():
            return True
    return False


@pytest.mark.network
@pytest.mark.slow
@needs_ffmpeg
@needs_grid
def test_grid_clip_over_loopback_flows_through_ray_actors_to_decisions(ray_local, tmp_path):
    video_port, audio_port = free_port(), free_port()
    served = serve_clip(GRID_CLIP, video_port, audio_port)
    video, audio = served.video, served.audio
    text = TextServer("bin blue at f two now".split(), rate_hz=2.0)
    stream = StreamConfig(
        sources=(
            SourceConfig(
                name="cam", kind="camera", uri=f"http://127.0.0.1:{video_port}/cam.mjpg", queue_size=8
            ),
            SourceConfig(
                name="mic", kind="pcm_tcp", uri=f"127.0.0.1:{audio_port}", chunk_ms=100, queue_size=8
            ),
            SourceConfig(name="txt", kind="text_tcp", uri=f"127.0.0.1:{text.port}", queue_size=8),
        ),
        slop_ms=60.0,
        audio_window_s=1.0,
        audio_rate_hz=16000,
        engine_queue_size=4,
        max_in_flight=2,
        engine_num_cpus=0.5,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.5,
    )
    recorder = RecordingWriter(tmp_path / "live.mcap", chunk_size_bytes=256 * 1024)
    pipe = RayPipeline(stream, RuleEngine, recorder=recorder, keep_decisions=100_000, keep_received=100_000)
    try:
        pipe.start()
        pipe.wait_ready(timeout_s=90)
        run_until(pipe, lambda: len(pipe.decisions) >= 1, timeout_s=30)

        def enough() -> bool:  # counts, not a fixed duration: a loaded machine only takes longer
            msgs = pipe.snapshot()["messages"]
            full = sum(1 for d in pipe.decisions if not d.missing)
            return (msgs.get("cam", 0) >= 60 and msgs.get("mic", 0) >= 25 and msgs.get("txt", 0) >= 5
                    and len(pipe.decisions) >= 60 and full >= 20)

        run_until(pipe, enough, timeout_s=90)
        snap = pipe.snapshot()
    finally:
        pipe.shutdown()
        text.close()
        for proc in (video, audio):
            proc.kill()
            proc.wait(5)
    msgs = snap["messages"]
    assert msgs.get("cam", 0) >= 60, snap  # ~25 fps for > 5 s
    assert msgs.get("mic", 0) >= 25, snap  # 10 chunks/s
    assert msgs.get("txt", 0) >= 5, snap  # 2 Hz
    full = [d for d in pipe.decisions if not d.missing]
    assert len(pipe.decisions) >= 60 and len(full) >= 20, snap
    align = snap["max_abs_alignment_ms"]
    assert align["image"] == 0.0 and align["audio"] <= stream.slop_ms, align
    for name, src in snap["sources"].items():
        assert src["queue"]["high_water"] <= src["queue"]["maxsize"], name
    assert snap["engine_queue"]["high_water"] <= stream.engine_queue_size
    assert pipe.limiter.high_water <= stream.max_in_flight
    assert "end_to_end" in snap["latency_ms"]
    recorded = {
        (e.message.source, e.message.seq) for e in read_recording(tmp_path / "live.mcap") if e.message
    }
    assert recorded == {(s, q) for s, q, _ in pipe.received}


@pytest.mark.slow
@needs_grid
def test_killed_source_actor_restarts_while_the_other_modalities_keep_flowing(ray_local, tmp_path):
    lines = tmp_path / "ops.txt"
    # 10 lines/s for 400 s: the text must outlast actor start-up, the kill and the restart, or no
    # modality is left flowing to carry image-missing decisions
    lines.write_text("".join(f"operator line {i}\n" for i in range(4000)))
    # the camera reads a copy that the test hides across the kill: an idle machine restarts an actor
    # faster than the sync's trigger timeout, so only a real outage is sure to be seen
    clip = tmp_path / "clip.mpg"
    shutil.copyfile(GRID_CLIP, clip)
    stream = StreamConfig(
        sources=(
            SourceConfig(name="cam", kind="camera", uri=str(clip), loop=True, queue_size=8),
            SourceConfig(name="txt", kind="text_file", uri=str(lines), line_rate_hz=10.0, queue_size=8),
        ),
        slop_ms=60.0,
        trigger_timeout_ms=400.0,
        fallback_hz=5.0,
        engine_num_cpus=0.5,
        max_restarts=2,
        text_max_age_s=2.0,
    )
    recorder = RecordingWriter(tmp_path / "fault.mcap", chunk_size_bytes=64 * 1024)
    log_path = tmp_path / "decisions.jsonl"
    pipe = RayPipeline(
        stream, RuleEngine, recorder=recorder, decision_log=log_path, keep_decisions=100_000, keep_received=100_000
    )
    try:
        pipe.start()
        pipe.wait_ready(timeout_s=90)
        assert run_until(pipe, lambda: sum(s == "cam" for s, _, _ in pipe.received) >= 20, timeout_s=30)
        before_kill = list(pipe.received)
        decisions_before = len(pipe.decisions)
        hidden = clip.rename(tmp_path / "clip.hidden")  # the running actor keeps its open handle
        ray.kill(pipe.source_actors["cam"], no_restart=False)
        kill_ns = time.monotonic_ns()

        def image_missing_after_kill():
            return any("image" in d.missing for d in list(pipe.decisions)[decisions_before:])

        assert run_until(pipe, image_missing_after_kill, timeout_s=60), (
            f"no decision marked image missing: {pipe.snapshot()['sources']}"
        )

        hidden.rename(clip)  # the camera returns

        def camera_back():  # frames from a new incarnation of the camera actor
            restarted = pipe.snapshot()["sources"]["cam"]["actor_restarts"] >= 1
            return restarted and sum(s == "cam" and ts > kill_ns for s, _, ts in pipe.received) >= 10

        assert run_until(pipe, camera_back, timeout_s=60), (
            f"camera actor did not come back: {pipe.snapshot()['sources']}"
        )
        run_until(pipe, lambda: False, timeout_s=1.0)
        after = list(pipe.decisions)[decisions_before:]
        snap = pipe.snapshot()
    finally:
        pipe.shutdown()
    missing_image = [d for d in after if "image" in d.missing]
    assert missing_image and all("text" not in d.missing for d in missing_image)  # text kept flowing
    assert snap["sources"]["cam"]["actor_restarts"] == 1
    assert sum(s == "cam" and ts > kill_ns for s, _, ts in pipe.received) >= 10  # frames flow again
    assert any(not d.missing for d in after[-5:]), "full samples did not resume after the restart"
    assert snap["sources"]["cam"]["actor_failures"] >= 1
    # the outage is in the decision log, between the decisions: down, then up again
    events = [json.loads(line)["outage"] for line in log_path.read_text().splitlines() if '"outage"' in line]
    kinds = [(e["source"], e["event"]) for e in events]
    assert ("cam", "actor_down") in kinds and ("cam", "actor_up") in kinds, kinds
    assert kinds.index(("cam", "actor_down")) < kinds.index(("cam", "actor_up"))
    assert snap["outage_events"]["actor_down"] >= 1
    recorded = {
        (e.message.source, e.message.seq, e.message.timestamp_ns)
        for e in read_recording(tmp_path / "fault.mcap")
        if e.message
    }
    assert set(before_kill) <= recorded  # every message received before the kill was recorded


def test_live_view_renders_a_snapshot_with_every_section():
    from rich.console import Console

    from exitflow.pipeline.live.core.stats import LiveStats
    from exitflow.pipeline.live.views.terminal import render

    stats = LiveStats()
    stats.observe_latency("end_to_end", 70.0)
    stats.observe_latency("end_to_end", 90.0)
    stats.observe_failure("engine: RuntimeError: CUDA out of memory")
    stats.observe_decision(
        Decision(
            sample_id=0,
            prediction=1,
            system="t",
            exits={"image": 2},
            missing=["audio"],
            energy_mj=3.5,
            energy_source="rapl",
            estimated=False,
            lam=0.1,
        )
    )
    snap = {
        "sources": {
            "cam": {
                "modality": "image",
                "state": "reconnecting",
                "fps": 24.5,
                "messages": 10,
                "reconnects": 1,
                "actor_restarts": 0,
                "dropped": {"wrong_shape": 2},
                "queue": {"dropped": {"drop_oldest": 3}},
                "last_error": "connect failed",
            }
        },
        "sync": {
            "emitted": 5,
            "dropped": {"non_monotonic": 1},
            "unmatched": {},
            "missing": {"audio": {"no_data": 1}},
        },
        "engine_queue": {"size": 1, "maxsize": 4, "policy": "drop_oldest", "dropped": {}},
        "budget": {"mj_per_sample": 12.5},
        "outage_events": {"actor_down": 1, "actor_up": 1},
        "recent_outages": ["cam actor_down (ActorDiedError)", "cam actor_up (restart 1)"],
        "preprocess_drops": {"audio:AudioInputError": 4},
        **stats.summary(),
    }
    console = Console(record=True, width=160)
    console.print(render(snap))
    text = console.export_text()
    for needle in (
        "reconnecting",
        "24.5",
        "wrong_shape=2",
        "queue:drop_oldest=3",
        "non_monotonic=1",
        "2:1",
        "3.50 mJ from rapl",
        "mj_per_sample=12.5",
        "end_to_end",
        "89.8",
        "failed samples",
        "engine:RuntimeError=1",
        "actor_down=1",
        "cam actor_up (restart 1)",
        "audio:AudioInputError=4",
    ):
        assert needle in text, needle


class SyntheticCamera:
    """A source factory (importable by the actor): gray 32x32 frames at ~100 fps, forever."""

    modality = "image"

    def __call__(self):
        from exitflow.pipeline.live.sources import Source

        class Frames(Source):
            def _open(self):
                self.i = 0

            def _read_raw(self):
                time.sleep(0.01)
                self.i += 1
                return self.new_message(np.full((32, 32), self.i % 256, np.uint8))

        return Frames("synth", "image")


class OnePercentFailingEngine(RuleEngine):
    """Raises a simulated CUDA out-of-memory error on 1 % of the samples (sample_id % 100 == 42)."""

    def process(self, sample: Sample) -> Decision:
        if sample.sample_id % 100 == 42:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return super().process(sample)


@pytest.mark.slow
def test_engine_failing_on_one_percent_of_samples_leaves_the_other_99_percent_decided(ray_local, tmp_path):
    stream = StreamConfig(engine_num_cpus=0.5, engine_queue_size=64, engine_queue_policy="block", max_in_flight=4,
                          circuit_breaker_s=5.0)
    log_path = tmp_path / "decisions.jsonl"
    pipe = RayPipeline(stream, OnePercentFailingEngine, sources={"synth": SyntheticCamera()},
                        decision_log=log_path, keep_decisions=100_000)
    try:
        pipe.start()
        pipe.wait_ready(timeout_s=90)
        assert run_until(pipe, lambda: pipe.decisions_total >= 400, timeout_s=120), pipe.snapshot()
    finally:
        pipe.shutdown()  # also collects the decisions still in flight
    snap = pipe.snapshot()
    decisions = list(pipe.decisions)
    failed = [d for d in decisions if getattr(d, "error", None)]
    good = [d for d in decisions if not getattr(d, "error", None)]
    assert failed and all(d.sample_id % 100 == 42 for d in failed)
    assert all(d.sample_id % 100 != 42 for d in good) and len(good) >= 0.97 * len(decisions)
    assert all(d.error.startswith("engine: RuntimeError: CUDA out of memory") for d in failed)
    assert snap["failed"] == snap["failed_decisions"] == len(failed) == snap["failures"]["engine:RuntimeError"]
    assert snap["decisions"] == len(good)
    logged = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(logged) == len(decisions) and sum(1 for d in logged if d.get("error")) == len(failed)


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only(ray_local):
    import psutil

    @ray.remote(num_cpus=0)
    def pid() -> int:
        return os.getpid()

    ray.get(pid.remote(), timeout=60)  # at least one worker is up
    me = psutil.Process()
    listening = set()
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        listening |= {(c.laddr.ip, proc.pid) for c in conns if c.status == psutil.CONN_LISTEN}
    assert listening, "no Ray listener found"
    exposed = {ip for ip, _ in listening if ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")}
    assert not exposed, f"Ray listens beyond loopback on {sorted(exposed)}"


@pytest.mark.slow
def test_a_killed_engine_actor_is_an_outage_in_the_log_and_the_run_goes_on(ray_local, tmp_path):
    stream = StreamConfig(engine_num_cpus=0.5, max_restarts=2, circuit_breaker_s=120.0)
    log_path = tmp_path / "decisions.jsonl"
    pipe = RayPipeline(stream, RuleEngine, sources={"synth": SyntheticCamera()}, decision_log=log_path)
    try:
        pipe.start()
        pipe.wait_ready(timeout_s=90)
        assert run_until(pipe, lambda: pipe.decisions_total >= 20, timeout_s=60)
        ray.kill(pipe.engine, no_restart=False)
        assert run_until(pipe, lambda: pipe.outage_counts["actor_down"] >= 1, timeout_s=60), pipe.snapshot()
        good_before = pipe.stats.decisions
        assert run_until(pipe, lambda: pipe.stats.decisions >= good_before + 20, timeout_s=90), pipe.snapshot()
    finally:
        pipe.shutdown()
    events = [json.loads(line)["outage"] for line in log_path.read_text().splitlines() if '"outage"' in line]
    assert [(e["source"], e["event"]) for e in events][:2] == [("engine", "actor_down"), ("engine", "actor_up")]
    failed = [d for d in pipe.decisions if getattr(d, "error", None)]
    assert failed and all(d.error.startswith(("engine_unavailable:", "engine_call:")) for d in failed)


@pytest.mark.slow
def test_the_ray_runtime_decides_a_recording_as_the_offline_replay_and_the_local_runtime_do(ray_local):
    """Same recording, clocks an hour off both ways, source actors in their own processes: the same
    decisions as the offline replay (which the local runtime matches too, tests/pipeline/test_live_local.py)."""
    from exitflow.pipeline.live.runtime.rule_engine import RuleEngine as Rules
    from tests.pipeline.test_live_local import (
        offline_decisions,
        recorded_segment,
        recorded_sources,
        replay_stream_config,
        same_decisions,
    )

    origin, end = recorded_segment()
    offline, ties = offline_decisions(origin, end)
    start = time.monotonic_ns() + 25_000_000_000  # actors start (and read the file) well before
    decided: list[Decision] = []
    pipe = RayPipeline(replay_stream_config(), Rules, sources=recorded_sources(start, origin, end),
                        on_decision=decided.append)
    try:
        pipe.start()
        pipe.wait_ready(timeout_s=90)
        assert time.monotonic_ns() < start - 2_000_000_000, "actors took too long to start for this test's timeline"
        deadline = time.monotonic() + 60
        while len(decided) < len(offline) and time.monotonic() < deadline:
            pipe.step()
        snap = pipe.snapshot()
    finally:
        pipe.shutdown()
    same_decisions(sorted(decided, key=lambda d: d.sample_id), offline, ties)
    assert snap["runtime"] == "ray" and set(snap["clock_skewed"]) == {"camera0", "mic0"}
