"""Fault injection with counts (not a test): kill a source actor N times and drop a source's
connection M times during one live run, and count what the pipeline did.

Sources (GRID loopback, as in ``configs/grid_live.yaml``): ``cam`` = the GRID clip's video as
a paced, looped file (the trigger); ``mic`` = its audio as 16 kHz PCM over TCP from ffmpeg;
``txt`` = the clip's words over TCP from a server in this script that hangs up on the client
every ``--disconnect-every-s`` seconds. The driver loop runs the light rule engine. Meanwhile
the camera's Ray actor is killed (``ray.kill(..., no_restart=False)``; Ray restarts it) each
time it is back, until ``--kills``; the text server hangs up ``--disconnects`` times.

Counted: kills and hang-ups done; ``actor_down`` / ``actor_up`` / ``disconnected`` /
``reconnected`` events in the JSONL decision log; decisions in total, during camera outages
(image missing: the other modalities keep deciding) and the longest gap between decisions;
driver crashes (an exception out of the loop: the goal is 0).

    PYTHONPATH=. .venv/bin/python benchmarks/fault_injection.py --kills 100 --disconnects 100 --out runs/fault_injection.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray

from exitflow.pipeline.config import RayConfig, SourceConfig, StreamConfig
from exitflow.pipeline.data.roots import SHARED_DATA
from exitflow.pipeline.live.runtime.ray.pipeline import RayPipeline, start_ray
from exitflow.pipeline.live.runtime.rule_engine import build_rule_engine
from exitflow.pipeline.live.sources.loopback import free_port, loopback_listener

REPO = Path(__file__).resolve().parents[1]
WORDS = "set white with p two soon".split()



class HangingUpTextServer:
    """Sends words at ``rate_hz`` to one client at a time and hangs up every ``every_s`` seconds,
    ``limit`` times in all (then stays connected)."""

    def __init__(self, every_s: float, limit: int, rate_hz: float = 10.0):
        self.srv = loopback_listener()
        self.port = self.srv.getsockname()[1]
        self.every_s, self.limit, self.period_s = every_s, limit, 1.0 / rate_hz
        self.hangups = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                start, i = time.monotonic(), 0
                while not self.stop.is_set():
                    if self.hangups < self.limit and time.monotonic() - start >= self.every_s:
                        self.hangups += 1
                        break  # close: the source sees the peer hang up
                    try:
                        conn.sendall((WORDS[i % len(WORDS)] + "\n").encode())
                    except OSError:
                        break
                    i += 1
                    time.sleep(self.period_s)

    def close(self) -> None:
        self.stop.set()
        self.srv.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--disconnects", type=int, default=100)
    parser.add_argument("--disconnect-every-s", type=float, default=2.0)
    parser.add_argument("--kill-after-up-s", type=float, default=0.5, help="wait after the actor is back")
    parser.add_argument("--max-minutes", type=float, default=12.0, help="stop injecting after this")
    parser.add_argument("--out", default="runs/fault_injection.json")
    parser.add_argument("--decision-log", default="runs/fault_injection-decisions.jsonl")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg is needed: apt-get install -y ffmpeg")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    logging.basicConfig(level=logging.ERROR)

    clip = SHARED_DATA / "grid_av_samples" / "mpg" / "id2_vcd_swwp2s.mpg"
    audio_port = free_port()
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
         "-vn", "-ac", "1", "-ar", "16000", "-f", "s16le", f"tcp://127.0.0.1:{audio_port}?listen=1"]
    )
    text = HangingUpTextServer(args.disconnect_every_s, args.disconnects)
    stream = StreamConfig(
        sources=(
            SourceConfig(name="cam", kind="camera", uri=str(clip), loop=True, queue_size=8),
            SourceConfig(name="mic", kind="pcm_tcp", uri=f"127.0.0.1:{audio_port}", chunk_ms=100, queue_size=16),
            SourceConfig(name="txt", kind="text_tcp", uri=f"127.0.0.1:{text.port}", queue_size=8, max_rate_hz=20),
        ),
        slop_ms=60.0,
        trigger_timeout_ms=400.0,
        fallback_hz=5.0,
        text_max_age_s=3.0,
        max_restarts=-1,  # restart the killed actor every time
        reconnect_initial_s=0.1,
        reconnect_max_s=1.0,
        engine_num_cpus=0.5,
        live_view=False,
    )
    start_ray(RayConfig(num_cpus=4, namespace="exitflow-faults"))
    log_path = REPO / args.decision_log
    decision_times: list[tuple[int, bool]] = []  # (driver ns, image missing)
    pipe = RayPipeline(
        stream,
        build_rule_engine,
        decision_log=log_path,
        on_decision=lambda d: decision_times.append((time.monotonic_ns(), "image" in d.missing)),
    )
    kills, crashes, kill_ns = 0, 0, 0
    kill_times: list[int] = []
    crash_errors: list[str] = []
    t0 = time.monotonic()
    try:
        pipe.start()
        pipe.wait_ready(timeout_s=180)
        pipe.run(duration_s=5.0)  # warm-up: every source connected
        t_inject = time.monotonic()
        t_inject_ns = time.monotonic_ns()
        end = t_inject + args.max_minutes * 60.0
        up_since = time.monotonic()
        while time.monotonic() < end and (kills < args.kills or text.hangups < args.disconnects):
            try:
                pipe.step()
            except Exception as e:  # noqa: BLE001 - what this benchmark counts (the goal is 0)
                crashes += 1
                crash_errors.append(f"{type(e).__name__}: {e}"[:200])
            cam = pipe.source_state("cam")
            if cam["actor"] != "alive" or cam["restarts"] < kills:
                up_since = time.monotonic()  # not back yet (no message from the new incarnation)
            elif kills < args.kills and time.monotonic() - up_since >= args.kill_after_up_s:
                ray.kill(pipe.source_actors["cam"], no_restart=False)
                kills += 1
                kill_ns = time.monotonic_ns()
                kill_times.append(kill_ns)
        injected_s = time.monotonic() - t_inject
        settle_end = time.monotonic() + 30.0  # let the last restart and reconnect land
        while time.monotonic() < settle_end and pipe.source_state("cam")["restarts"] < kills:
            pipe.step()
        pipe.run(duration_s=2.0)
        snap = pipe.snapshot()
    finally:
        pipe.shutdown()
        ray.shutdown()
        text.close()
        ffmpeg.kill()
        ffmpeg.wait(5)
    events = Counter()
    logged_decisions = 0
    for line in log_path.read_text().splitlines():
        obj = json.loads(line)
        if "outage" in obj:
            events[f"{obj['outage']['source']}:{obj['outage']['event']}"] += 1
        else:
            logged_decisions += 1
    stamps = [t for t, _ in decision_times if t >= t_inject_ns]  # from the first injection on
    gaps = [((a - t_inject_ns) / 1e9, (b - a) / 1e9) for a, b in zip(stamps, stamps[1:], strict=False)]
    gaps_s = [g for _, g in gaps]
    window_s = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else 0.0
    figures: dict[str, Any] = {
        "kills_done": kills,
        "disconnects_done": text.hangups,
        "injection_seconds": round(injected_s, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
        "driver_crashes": crashes,
        "crash_errors": crash_errors[:5],
        "outage_events_in_decision_log": dict(sorted(events.items())),
        "camera_restarts_seen": snap["sources"]["cam"]["actor_restarts"],
        "text_reconnects": snap["sources"]["txt"].get("reconnects"),
        "decisions_total": pipe.decisions_total,
        "decisions_logged": logged_decisions,
        "failed_decisions": pipe.failed_total,
        "decisions_with_image_missing": sum(1 for _, m in decision_times if m),
        "decisions_per_s_during_injection": round(len(stamps) / window_s, 2) if window_s else None,
        "longest_gap_between_decisions_s": round(max(gaps_s), 2) if gaps_s else None,
        "gaps_over_1s_at_s": [(round(t, 1), round(g, 2)) for t, g in gaps if g > 1.0][:20],
        "kill_cycle_s_mean": round((kill_times[-1] - kill_times[0]) / 1e9 / (len(kill_times) - 1), 2)
        if len(kill_times) > 1 else None,
        "last_kill_to_end_s": round((time.monotonic_ns() - kill_ns) / 1e9, 1) if kill_ns else None,
        "driver_drops": snap["drops"].get("driver", {}),
        "sync_missing": snap["sync"]["missing"],
    }
    print(json.dumps(figures, indent=1))
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    return 0 if crashes == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
