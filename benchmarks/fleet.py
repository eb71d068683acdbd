"""Fleet benchmark: R simulated robots, each with its own clock, against one shared engine (not a test).

By default (``--robot-kind digits``) every robot is one cheap source streaming what the model was
made for: AV-MNIST digits as frames at ``--fps``, the test speaker's spoken digits as 16 kHz PCM,
the labels on a side topic (live accuracy). ``--robot-kind grid`` streams a real GRID clip over
loopback instead: its video as HTTP MJPEG and its sound as PCM over TCP (two ffmpeg servers, paced
to real time and looped; the clip is first repeated into one long file, see :func:`long_clip`),
plus the clip's words as timed text (JSONL, paced). Each robot's sources stamp with a
clock ``--clock-skew-s`` off in its own direction (robot i: +X, -X, +X/2, -X/2, ...); the driver
measures each offset by round trips and corrects it. All robots share ONE engine with the real
model (``stream.engine`` of ``--config``, the default CNN checkpoints): in-process for
``--runtime local`` (one process, one preprocessing thread and one engine thread for the fleet),
for ``--runtime ray`` the shared batched inference service of ``pipeline/live/runtime/ray/service.py``
(replicas that batch samples across robots, every sample keeping its own exits; ``--engine-actor``
uses one plain engine actor instead).

With the service, the robots' pipelines share one client in this process: samples of several
robots that are ready together go to the service as ONE micro-batch call (``--gather-ms``,
``--no-gather``; ``samples_per_call`` in the JSON). After ``--warmup-s`` the counters are zeroed
and the run is measured for ``--duration`` seconds. The acceptance runs of issue 26:

    .venv/bin/python benchmarks/fleet.py --robots 1 --fps 30 --duration 60 --runtime local \
        --json runs/fleet_local_30fps.json                       # 1 robot, 30 fps: p99 <= 50 ms
    .venv/bin/python benchmarks/fleet.py --robots 3 --fps 10 --clock-skew-s 3600 --duration 60 \
        --runtime ray --json runs/fleet_ray_3_skew.json          # clocks +-1 h: p99 <= 100 ms
    .venv/bin/python benchmarks/fleet.py --robots 8 --fps 10 --duration 30 --runtime ray

JSON: ``{"robots": [{"name", "offered_hz", "decisions_hz", "e2e_ms_p50", "e2e_ms_p95",
"e2e_ms_p99", "drops": {reason: count}}], "batch_size_mean", "macs_per_sample", "cpu_percent",
"runtime"}`` plus the context (machine load, clock skews, per-stage latency). ``offered_hz`` is
the frames per second the robot's camera delivered (the sample trigger), ``decisions_hz`` the
successful decisions per second; ``cpu_percent`` is this run's processes (driver, ffmpeg, Ray
workers) in % of one core, ``machine_cpu_percent`` the whole machine (other users included).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # a 2-core machine: the engine thread takes one core

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exitflow.pipeline.config import SourceConfig, StreamConfig, load_config  # noqa: E402
from exitflow.pipeline.data.roots import SHARED_DATA  # noqa: E402
from exitflow.pipeline.live.runtime.driver import PipelineDriver  # noqa: E402
from exitflow.pipeline.live.runtime.gather import GatherSettings  # noqa: E402
from exitflow.pipeline.live.runtime.local import LocalEngine, LocalPipeline  # noqa: E402
from exitflow.pipeline.live.runtime.ray.pipeline import RayPipeline, engine_actor, start_ray  # noqa: E402
from exitflow.pipeline.live.runtime.ray.service import InferenceService, service_shutdown  # noqa: E402
from exitflow.pipeline.live.sources import SkewedSourceFactory  # noqa: E402
from exitflow.pipeline.live.sources.loopback import LoopbackClip, free_port, serve_clip  # noqa: E402
from exitflow.pipeline.live.sources.robot import DigitRobotFactory, DigitStream, digit_stream  # noqa: E402
from exitflow.pipeline.live.views.metrics import _flat_drops  # noqa: E402
from exitflow.pipeline.messages import Decision  # noqa: E402

GRID = SHARED_DATA / "grid_av_samples"
CLIP_SECONDS = 3.0  # GRID utterances are 3 s long


def clips() -> list[tuple[Path, list[str]]]:
    """(clip, words) for every GRID clip with a transcript."""
    out = []
    with open(GRID / "transcripts.csv", newline="") as f:
        for row in csv.DictReader(f):
            path = GRID / row["file"]
            if path.is_file():
                out.append((path, row["transcript"].split()))
    if not out:
        raise SystemExit(f"no GRID clips found under {GRID}")
    return out


def write_words(words: list[str], path: Path) -> Path:
    """The transcript as timed JSONL, one word every CLIP_SECONDS / (n + 1) seconds."""
    step = CLIP_SECONDS / (len(words) + 1)
    path.write_text("".join(json.dumps({"t_s": round((i + 1) * step, 3), "text": w}) + "\n" for i, w in enumerate(words)))
    return path


def skew_ns(index: int, skew_s: float) -> int:
    """Robot i's clock offset: +X, -X, +X/2, -X/2, +X/3, ..."""
    magnitude = skew_s / (index // 2 + 1)
    return int((magnitude if index % 2 == 0 else -magnitude) * 1e9)


@dataclasses.dataclass
class Robot:
    name: str
    served: LoopbackClip | None  # ffmpeg servers of a GRID robot; None for a digit robot
    sources: dict[str, Any]
    offset_ns: int
    pipe: Any = None
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    macs: list[int] = dataclasses.field(default_factory=list)
    measuring: bool = False

    def on_decision(self, decision: Decision) -> None:
        if self.measuring and not getattr(decision, "error", None):
            self.macs.append(int(decision.macs))


def long_clip(clip: Path, seconds: float, out: Path) -> Path:
    """``clip`` repeated (stream copy, no re-encoding) to last ``seconds``: ffmpeg's own loop
    (``-stream_loop``) pauses ~0.5 s at every restart and then bursts the frames it owes, which a
    real camera never does; one join every 3 s would dominate the drops."""
    repeats = max(1, math.ceil(seconds / CLIP_SECONDS))
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-stream_loop", str(repeats - 1),
                    "-i", str(clip), "-c", "copy", str(out)], check=True)
    return out


def make_robot(i: int, fps: float, skew_s: float, stream: StreamConfig, tmp: Path, seconds: float,
               chunk_ms: float) -> Robot:
    clip, words = clips()[i % len(clips())]
    vport, aport = free_port(), free_port()
    name = f"robot{i}"
    clip = long_clip(clip, seconds, tmp / f"{name}.mpg")
    served = serve_clip(clip, vport, aport, fps=fps, audio_rate_hz=stream.audio_rate_hz)
    offset = skew_ns(i, skew_s)
    specs = [
        SourceConfig(name=f"{name}-cam", kind="camera", uri=served.video_url, gray=True, queue_size=4),
        SourceConfig(name=f"{name}-mic", kind="pcm_tcp", uri=served.audio_address, chunk_ms=chunk_ms, queue_size=16),
        SourceConfig(name=f"{name}-words", kind="text_jsonl", uri=str(write_words(words, tmp / f"{name}.jsonl")),
                     realtime=True, loop=True, queue_size=8),
    ]
    sources = {s.name: SkewedSourceFactory(s, offset, stream.audio_rate_hz) for s in specs}
    return Robot(name, served, sources, offset)


def make_digit_robot(i: int, fps: float, skew_s: float, chunk_ms: float, media: DigitStream) -> Robot:
    """One source per robot (camera, microphone and labels, pre-encoded media shared by all robots)."""
    name, offset = f"robot{i}", skew_ns(i, skew_s)
    factory = DigitRobotFactory(name, media, fps=fps, chunk_ms=chunk_ms, start_item=7 * i, offset_ns=offset)
    return Robot(name, None, {name: factory}, offset)


def robot_counts(pipe: PipelineDriver, cam: str) -> dict[str, Any]:
    snap = pipe.snapshot()
    accuracy = snap.get("accuracy") or {}
    return {
        # a GRID robot's camera messages; a digit robot's one source also sends PCM and labels: the
        # frames that triggered a sample
        "frames": int(snap["sources"][cam].get("messages", 0)) if cam in snap["sources"]
        else int(snap["sync"].get("emitted", 0)),
        "labelled": int(accuracy.get("labelled", 0)),
        "correct": int(accuracy.get("correct", 0)),
        "shed": dict((snap.get("overload") or {}).get("shed", {})),
        "decided": int(snap["decisions"]),
        "drops": {f"{w}:{r}": n for (w, r), n in _flat_drops(snap).items()}
        | {f"failed:{k}": v for k, v in snap["failures"].items()},
        "snap": snap,
    }


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robots", type=int, default=1)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--clock-skew-s", type=float, default=0.0, help="robot clocks this far off (alternating sign)")
    parser.add_argument("--runtime", choices=("local", "ray"), default="local")
    parser.add_argument("--engine-actor", action="store_true",
                        help="ray: one plain engine actor (batch 1) instead of the shared batched service")
    parser.add_argument("--config", default=str(REPO / "config.yaml"), help="config whose stream.engine runs")
    parser.add_argument("--engine", default=None, help="override stream.engine (e.g. a rule engine)")
    parser.add_argument("--mic-chunk-ms", type=float, default=None,
                        help="PCM chunk length (default 50 for digit robots, 20 for GRID): a frame waits for the "
                        "chunk after it, so shorter is faster, but every chunk is a message the driver drains")
    parser.add_argument("--max-sample-age-ms", type=float, default=150.0,
                        help="stream.max_sample_age_ms: older samples are shed at dispatch (0: never)")
    parser.add_argument("--engine-queue", type=int, default=4, help="stream.engine_queue_size (drop_oldest)")
    parser.add_argument("--max-in-flight", type=int, default=2, help="stream.max_in_flight")
    parser.add_argument("--robot-kind", choices=("digits", "grid"), default="digits",
                        help="digits: one cheap source per robot streaming what the model was made for (AV-MNIST "
                        "digits, spoken digits, labels); grid: a GRID clip through two ffmpeg servers (a format example)")
    parser.add_argument("--gather-ms", type=float, default=2.0,
                        help="ray service: the longest a robot's sample waits to share a call with other robots' "
                        "while a call is in flight (samples of all robots gathered into one micro-batch call)")
    parser.add_argument("--no-gather", action="store_true",
                        help="ray service: one call per sample (the replica's @serve.batch still merges calls)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the figures here")
    args = parser.parse_args()
    if args.robots < 1 or args.fps <= 0 or args.duration <= 0:
        parser.error("--robots >= 1, --fps > 0 and --duration > 0 are required")

    if args.mic_chunk_ms is None:
        args.mic_chunk_ms = 50.0 if args.robot_kind == "digits" else 20.0
    cfg = load_config(args.config)
    engine_name = args.engine or cfg.stream.engine
    stream = dataclasses.replace(
        cfg.stream, sources=(), slop_ms=60.0, engine_queue_size=args.engine_queue, engine_queue_policy="drop_oldest",
        max_in_flight=args.max_in_flight, early_trigger=True, live_view=False, runtime=args.runtime,
        max_sample_age_ms=args.max_sample_age_ms or None,
    )
    tmp = Path(tempfile.mkdtemp(prefix="exitflow-fleet-"))
    seconds = args.warmup_s + args.duration + 300  # start-up (Ray, the model) included, generously
    if args.robot_kind == "digits":
        media = digit_stream(SHARED_DATA, n=30, hold_s=stream.audio_window_s, rate_hz=stream.audio_rate_hz)
        robots = [make_digit_robot(i, args.fps, args.clock_skew_s, args.mic_chunk_ms, media) for i in range(args.robots)]
    else:
        robots = [make_robot(i, args.fps, args.clock_skew_s, stream, tmp, seconds, args.mic_chunk_ms)
                  for i in range(args.robots)]
    me = psutil.Process()
    ray_started = False
    shared: Any = None
    try:
        t_load = time.monotonic()
        if args.runtime == "local":
            shared = LocalEngine(engine_name, cfg)
            for r in robots:
                r.pipe = LocalPipeline(stream, engine=shared, sources=dict(r.sources), on_decision=r.on_decision,
                                       keep_decisions=10)
        else:
            ray_started = start_ray(dataclasses.replace(cfg.ray, num_cpus=max(4, 2 + args.robots)))
            if not args.engine_actor:
                service_cfg = dataclasses.replace(cfg.service, name="exitflow-fleet-service")
                gather = GatherSettings(enabled=not args.no_gather, gather_ms=args.gather_ms,
                                        max_batch_size=service_cfg.max_batch_size)
                shared = InferenceService.start(engine_name, cfg, service=service_cfg, gather=gather)
                shared.wait_ready(timeout_s=300)
            else:
                shared = engine_actor(engine_name, stream, cfg, name="exitflow-fleet-engine")
                ray.get(shared.node_id.remote(), timeout=300)
            for r in robots:
                engine = shared.for_client(r.name) if isinstance(shared, InferenceService) else shared
                r.pipe = RayPipeline(stream, engine_name, cfg=cfg, sources=dict(r.sources), engine=engine,
                                      on_decision=r.on_decision, keep_decisions=10)
        for r in robots:
            r.pipe.start()
            r.pipe.wait_ready(timeout_s=300)
        load_s = time.monotonic() - t_load
        stop = threading.Event()
        threads = [threading.Thread(target=r.pipe.run, kwargs={"stop": stop}, daemon=True) for r in robots]
        for t in threads:
            t.start()
        time.sleep(args.warmup_s)
        procs = [me, *me.children(recursive=True)]
        cpu0, wall0 = cpu_seconds(procs), time.monotonic()
        psutil.cpu_percent(None)
        for r in robots:
            r.base = robot_counts(r.pipe, f"{r.name}-cam")
            r.pipe.stats.latency_ms.clear()
            r.measuring = True
        if args.runtime == "ray" and not args.engine_actor:
            service_base, gather_base = shared.stats(), shared.gather_stats()
        time.sleep(args.duration)
        for r in robots:
            r.measuring = False
        if args.runtime == "ray" and not args.engine_actor:
            service_end, gather_end = shared.stats(), shared.gather_stats()
            batches = service_end["batches"] - service_base["batches"]
            batch_size_mean = (service_end["items"] - service_base["items"]) / batches if batches else None
            calls = gather_end.get("calls", 0) - gather_base.get("calls", 0)
            samples_per_call = (gather_end.get("samples", 0) - gather_base.get("samples", 0)) / calls if calls else None
            replicas = service_end.get("replicas_running")
        else:
            batch_size_mean = 1.0  # one sample at a time: the in-process engine and the plain actor
            samples_per_call, replicas = None, None
        wall = time.monotonic() - wall0
        machine_cpu = psutil.cpu_percent(None)
        cpu = cpu_seconds(procs) - cpu0
        ends = {r.name: robot_counts(r.pipe, f"{r.name}-cam") for r in robots}
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        for r in robots:
            if r.pipe is not None:
                try:
                    r.pipe.shutdown()
                except Exception as e:  # noqa: BLE001 - the others still shut down
                    print(f"{r.name}: shutdown failed: {e}", file=sys.stderr)
            if r.served is not None:
                r.served.close()
        if args.runtime == "local" and shared is not None:
            shared.close()
        if ray_started:
            service_shutdown()  # Serve's applications and controller, then Ray

    rows = []
    macs: list[int] = []
    for r in robots:
        end, base = ends[r.name], r.base
        lat = end["snap"]["latency_ms"]
        e2e = lat.get("end_to_end", {})
        drops = {k: int(v - base["drops"].get(k, 0)) for k, v in end["drops"].items() if v - base["drops"].get(k, 0)}
        labelled, correct = end["labelled"] - base["labelled"], end["correct"] - base["correct"]
        offered, decided = end["frames"] - base["frames"], end["decided"] - base["decided"]
        rows.append({
            "name": r.name,
            "offered_hz": round(offered / wall, 2),
            "decisions_hz": round(decided / wall, 2),
            "decided_pct": round(100.0 * decided / offered, 1) if offered else None,
            "shed": {k: v - base["shed"].get(k, 0) for k, v in end["shed"].items() if v - base["shed"].get(k, 0)},
            "live_accuracy": round(correct / labelled, 3) if labelled else None,
            "labelled": labelled,
            "e2e_ms_p50": round(e2e.get("p50", float("nan")), 1),
            "e2e_ms_p95": round(e2e.get("p95", float("nan")), 1),
            "e2e_ms_p99": round(e2e.get("p99", float("nan")), 1),
            "drops": drops,
            "clock_offset_s": r.offset_ns / 1e9,
            "clock_skew_measured_ms": {n: s.get("clock", {}).get("skew_ms") for n, s in end["snap"]["sources"].items()},
            "stages_ms_p50_p99": {k: [round(v["p50"], 1), round(v["p99"], 1)] for k, v in lat.items()},
            "missing": end["snap"]["missing"],
        })
        macs += r.macs
    out = {
        "robots": rows,
        "batch_size_mean": None if batch_size_mean is None else round(batch_size_mean, 2),
        "samples_per_call": None if samples_per_call is None else round(samples_per_call, 2),
        "gather_ms": None if args.no_gather or args.runtime != "ray" else args.gather_ms,
        "service_replicas": replicas,
        "macs_per_sample": round(float(np.mean(macs)), 1) if macs else None,
        "cpu_percent": round(100.0 * cpu / wall, 1),
        "runtime": args.runtime,
        "machine_cpu_percent": machine_cpu,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": psutil.cpu_count(),
        "engine": engine_name,
        "fps": args.fps,
        "duration_s": round(wall, 1),
        "startup_s": round(load_s, 1),
        "clock_skew_s": args.clock_skew_s,
        "engine_queue_size": args.engine_queue,
        "max_in_flight": args.max_in_flight,
        "mic_chunk_ms": args.mic_chunk_ms,
        "max_sample_age_ms": args.max_sample_age_ms,
        "robot_kind": args.robot_kind,
        "overload": {r.name: ends[r.name]["snap"].get("overload") for r in robots},
    }
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
