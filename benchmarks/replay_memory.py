"""Peak memory of replaying a large recording: does it grow with the file?

Writes a recording of about ``--gib`` GiB: GRID video scaled to a colour VGA camera (640x480x3,
stored as ``foxglove.RawImage``, the biggest option, zstd chunks of 1 MiB) at 30 fps, 16 kHz
audio in 100 ms chunks and the word alignment as text, the 11 clips one after another, looped.
Then replays it in a fresh process (``replay_stream``: the default config's synchronizer, the
rule engine, the default preprocessing: resize + spectrogram), and reads that process's peak RSS
(``VmHWM`` of ``/proc/self/status``) at the end, next to its RSS right after the imports. The same for a recording
a tenth of the size, to see whether the peak depends on the size.

    PYTHONPATH=.. python benchmarks/replay_memory.py --gib 1.0 --out runs/replay_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from exitflow.pipeline.live.recording.writer import RecordingWriter
from exitflow.pipeline.messages import SensorMessage

REPO = Path(__file__).resolve().parent.parent
CLIPS = sorted((REPO.parent / "shared/data/grid_av_samples/mpg").glob("*.mpg"))
WORDS = ["bin", "blue", "at", "f", "two", "now", "lay", "red", "by", "c", "seven", "again"]
MS = 1_000_000

# VmHWM / VmRSS of the replaying process itself (ru_maxrss would carry the parent's peak over the fork)
CHILD = """
import json, sys, time
def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
from exitflow.pipeline.config import load_config
from exitflow.pipeline.live.runtime.playback import replay_stream
from exitflow.pipeline.live.runtime.rule_engine import RuleEngine
from exitflow.pipeline.live.core.sync import make_synchronizer
rss0 = status_kib("VmRSS")
cfg = load_config(None, ["stream.engine=exitflow.pipeline.live.runtime.rule_engine:build_rule_engine"])
t = time.monotonic()
s = replay_stream(sys.argv[1], RuleEngine(), make_synchronizer(cfg.stream, ["audio", "image", "text"]))
print(json.dumps({"rss_after_imports_kib": rss0, "peak_rss_kib": status_kib("VmHWM"),
                  "messages": s.messages, "decisions": s.decisions, "wall_s": time.monotonic() - t,
                  "chunks_read": s.read.chunks_read}))
"""


def clip_frames() -> list[np.ndarray]:
    frames = []
    for clip in CLIPS:
        cap = cv2.VideoCapture(str(clip))
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.resize(frame, (640, 480), interpolation=cv2.INTER_LINEAR))
        cap.release()
    return frames


def write(path: Path, target_bytes: int, frames: list[np.ndarray]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    w = RecordingWriter(path, image_format="raw", flush_interval_s=0)
    t0, i = 10**12, 0
    while path.stat().st_size < target_bytes:
        t = t0 + i * 33 * MS + i // 3 * MS  # 30 fps
        w.write_message(SensorMessage("image", "cam", t, frames[i % len(frames)], seq=i))
        if i % 3 == 0:
            audio = (rng.standard_normal(1600) * 0.05).astype(np.float32)
            w.write_message(SensorMessage("audio", "mic", t + MS, audio, seq=i // 3, sample_rate_hz=16000))
        if i % 15 == 0:
            w.write_message(SensorMessage("text", "words", t + 2 * MS, WORDS[(i // 15) % len(WORDS)], seq=i // 15))
        i += 1
    w.close()
    return {"bytes": path.stat().st_size, "frames": i, "seconds_of_recording": i / 30}


def replay(path: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env,
                         check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    frames = clip_frames()
    results = []
    with tempfile.TemporaryDirectory(dir=REPO / "runs") as tmp:
        for gib in (args.gib / 10, args.gib):
            path = Path(tmp) / f"big-{gib:.2f}.mcap"
            t = time.monotonic()
            info = write(path, int(gib * 2**30), frames)
            info["write_s"] = time.monotonic() - t
            info.update(replay(path))
            info["peak_rss_mib"] = info["peak_rss_kib"] / 1024
            info["rss_after_imports_mib"] = info["rss_after_imports_kib"] / 1024
            results.append(info)
            print(json.dumps(info))
            path.unlink()
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
