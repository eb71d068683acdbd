"""Live throughput of the streaming layer (not a test).

Camera 30 fps 640x480 (MJPEG over HTTP from ffmpeg, the real GRID clip scaled up) + 16 kHz
PCM over TCP (same clip) + text at 2 Hz over TCP, through Ray source actors -> sync ->
preprocess -> a light rule engine, for ``--duration`` seconds. Prints achieved fps per source,
drops by reason, p50/p95/p99 latency per stage and end to end, and CPU: the pipeline's own
processes (driver + Ray + workers + ffmpeg, in % of one core) and the whole machine (all users). The engine is deliberately
cheap so the figures measure the streaming layer, not a model.

    PYTHONPATH=. .venv/bin/python benchmarks/live_throughput.py --duration 60 --out runs/live_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exitflow.pipeline.config import RayConfig, SourceConfig, StreamConfig  # noqa: E402
from exitflow.pipeline.data.roots import SHARED_DATA  # noqa: E402
from exitflow.pipeline.live.runtime.rule_engine import build_rule_engine  # noqa: E402
from exitflow.pipeline.live.sources.loopback import free_port, serve_clip  # noqa: E402

GRID_CLIP = SHARED_DATA / Path("grid_av_samples/mpg/id2_vcd_swwp2s.mpg")
WORDS = "set white with p two soon".split()


def _cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system



def serve_text(port_holder: list[int], stop: threading.Event, rate_hz: float) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    port_holder.append(srv.getsockname()[1])
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        with conn:
            i = 0
            while not stop.is_set():
                try:
                    conn.sendall((WORDS[i % len(WORDS)] + "\n").encode())
                except OSError:
                    break
                i += 1
                time.sleep(1.0 / rate_hz)
    srv.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs given to Ray")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg is needed: apt-get install -y ffmpeg")

    import ray

    from exitflow.pipeline.live.runtime.ray.pipeline import RayPipeline, start_ray

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    video_port, audio_port = free_port(), free_port()
    served = serve_clip(GRID_CLIP, video_port, audio_port, size=(args.width, args.height), fps=args.fps)
    video, audio = served.video, served.audio
    stop, text_port = threading.Event(), []
    threading.Thread(target=serve_text, args=(text_port, stop, 2.0), daemon=True).start()
    while not text_port:
        time.sleep(0.01)
    stream = StreamConfig(
        sources=(
            SourceConfig(
                name="camera",
                kind="camera",
                uri=f"http://127.0.0.1:{video_port}/cam.mjpg",
                gray=False,
                queue_size=8,
            ),
            SourceConfig(
                name="mic", kind="pcm_tcp", uri=f"127.0.0.1:{audio_port}", chunk_ms=100, queue_size=16
            ),
            SourceConfig(name="text", kind="text_tcp", uri=f"127.0.0.1:{text_port[0]}", queue_size=8),
        ),
        slop_ms=60.0,
        audio_window_s=1.0,
        audio_rate_hz=16000,
        engine_queue_size=4,
        max_in_flight=2,
        engine_num_cpus=1.0,
    )
    start_ray(RayConfig(num_cpus=args.num_cpus, namespace="exitflow-bench"))
    pipe = RayPipeline(stream, build_rule_engine)
    me = psutil.Process()
    try:
        pipe.start()
        pipe.wait_ready(timeout_s=120)
        pipe.run(duration_s=3.0)  # warm-up: connections up, queues flowing
        warm = pipe.snapshot()
        cpu0 = psutil.cpu_times()
        tree = [me, *me.children(recursive=True)]  # driver, Ray's raylet/GCS/workers, ffmpeg
        tree0 = {p.pid: _cpu_s(p) for p in tree}
        t0 = time.monotonic()
        pipe.stats.latency_ms.clear()
        pipe.run(duration_s=args.duration)
        elapsed_s = time.monotonic() - t0
        cpu1 = psutil.cpu_times()
        tree1 = {p.pid: _cpu_s(p) for p in tree}
        load_1m = os.getloadavg()[0]
        snap = pipe.snapshot()
    finally:
        pipe.shutdown()
        ray.shutdown()
        stop.set()
        for proc in (video, audio):
            proc.kill()
            proc.wait(5)
    busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system) + (cpu1.nice - cpu0.nice)
    total = busy + (cpu1.idle - cpu0.idle) + (cpu1.iowait - cpu0.iowait)
    achieved = {
        name: (snap["messages"].get(name, 0) - warm["messages"].get(name, 0)) / elapsed_s
        for name in snap["messages"]
    }
    figures = {
        "duration_s": round(elapsed_s, 1),
        "camera": f"{args.width}x{args.height}@{args.fps} MJPEG over HTTP",
        "achieved_msgs_per_s": {k: round(v, 2) for k, v in achieved.items()},
        "decisions_per_s": round((snap["decisions"] - warm["decisions"]) / elapsed_s, 2),
        "source_drops": {
            n: {**s.get("dropped", {}), **{f"queue:{k}": v for k, v in s["queue"]["dropped"].items()}}
            for n, s in snap["sources"].items()
        },
        "sync": snap["sync"],
        "engine_queue_drops": snap["engine_queue"]["dropped"],
        "latency_ms": {k: {q: round(v, 2) for q, v in p.items()} for k, p in snap["latency_ms"].items()},
        "pipeline_cpu_percent_of_one_core": round(
            100.0 * sum(tree1[pid] - tree0[pid] for pid in tree0 if pid in tree1) / elapsed_s, 1
        ),
        "machine_cpu_percent_all_users": round(100.0 * busy / total, 1) if total else None,
        "load_average_1m": round(load_1m, 2),
        "cpu_count": psutil.cpu_count(),
        "driver_rss_mib": round(me.memory_info().rss / 2**20, 1),
    }
    print(json.dumps(figures, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
