"""Bytes per second of a recording of the GRID live sources: the v1 format against the current one.

The messages are the kind ``configs/grid_live.yaml`` produces, made without Ray or sockets so
every format gets exactly the same input: GRID video as 8-bit grey frames at 25 fps (as the
camera source delivers them with ``gray: true``), its sound as 16 kHz mono 100 ms chunks (float32,
as the PCM source delivers them, decoded by ffmpeg), the word alignment as text, and one decision
per frame. The 11 GRID clips under ``shared/data/grid_av_samples/mpg`` are played one after the
other (33 s) rather than one clip looped: a looped 3 s clip repeats inside one zstd chunk and
would flatter compression. Each format is written with the default chunk
size and zstd, and the file size is divided by the recorded seconds.

    PYTHONPATH=.. python benchmarks/recording_size.py --seconds 25 --out runs/recording_size.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from mcap.writer import CompressionType, Writer

from exitflow.pipeline.live.recording.v1 import SENSOR_ENCODING, encode_sensor_message
from exitflow.pipeline.live.recording.writer import RecordingWriter
from exitflow.pipeline.messages import Decision, SensorMessage

REPO = Path(__file__).resolve().parent.parent
CLIPS = sorted((REPO.parent / "shared/data/grid_av_samples/mpg").glob("*.mpg"))
WORDS = REPO / "configs/grid_swwp2s_words.jsonl"
MS = 1_000_000


def grid_messages(seconds: float, t0_ns: int = 10**12) -> list[Any]:
    """Sensor messages and decisions of ``seconds`` of the GRID clips one after the other, in time order."""
    frames: list[np.ndarray] = []
    pcm = b""
    for clip in CLIPS:
        cap = cv2.VideoCapture(str(clip))
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
            n += 1
        cap.release()
        clip_pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-vn", "-ac", "1", "-ar", "16000",
                                   "-f", "s16le", "-"], capture_output=True, check=True).stdout
        pcm += clip_pcm[: n * 640 * 2].ljust(n * 640 * 2, b"\0")  # 640 samples per 40 ms frame
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    words = [json.loads(line) for line in WORDS.read_text().splitlines() if line.strip()]
    clip_s = 3.0
    out: list[tuple[int, Any]] = []
    for i in range(int(seconds * 25)):
        t = t0_ns + i * 40 * MS
        out.append((t, SensorMessage("image", "camera0", t, frames[i % len(frames)], seq=i)))
        out.append((t + 70 * MS, Decision(sample_id=i, prediction=i % 10, system="exitflow",
                                          order=["image", "audio", "text"], exits={"image": 1, "audio": 0},
                                          macs=9_432_819, latency_ms={"engine": 20.0, "total": 80.0},
                                          energy_mj=89.5, energy_source="psutil:estimate(host)", estimated=True,
                                          lam=0.01, timestamp_ns=t)))
    chunk = 1600
    for k in range(int(seconds * 10)):
        start = (k * chunk) % max(1, len(audio) - chunk)
        t = t0_ns + (k + 1) * 100 * MS
        out.append((t, SensorMessage("audio", "mic0", t, audio[start : start + chunk].copy(), seq=k,
                                     sample_rate_hz=16000)))
    loops = int(seconds / clip_s) + 1
    n = 0
    for loop in range(loops):
        for w in words:
            t_s = loop * clip_s + float(w["t_s"])
            if t_s < seconds:
                t = t0_ns + int(t_s * 1e9)
                out.append((t, SensorMessage("text", "words", t, str(w["text"]), seq=n)))
                n += 1
    out.sort(key=lambda x: x[0])
    return [m for _, m in out]


def write_v1(path: Path, items: list[Any]) -> None:
    """The first format, as ``RecordingWriter`` wrote it before schemas (1 MiB zstd chunks)."""
    with path.open("wb") as f:
        w = Writer(f, chunk_size=1 << 20, compression=CompressionType.ZSTD)
        w.start(profile="exitflow", library="exitflow")
        channels: dict[str, int] = {}
        for item in items:
            if isinstance(item, SensorMessage):
                topic, enc = "/sensor/" + item.source, SENSOR_ENCODING
                data, t = encode_sensor_message(item), item.timestamp_ns
            else:
                topic, enc = "/decisions", "json"
                data, t = json.dumps(item.to_json_dict()).encode(), int(item.timestamp_ns) + 70 * MS
            if topic not in channels:
                channels[topic] = w.register_channel(topic=topic, message_encoding=enc, schema_id=0)
            w.add_message(channels[topic], log_time=t, data=data, publish_time=t)
        w.finish()


def write_v2(path: Path, items: list[Any], **options: Any) -> None:
    w = RecordingWriter(path, flush_interval_s=0, **options)
    for item in items:
        if isinstance(item, SensorMessage):
            w.write_message(item)
        else:
            w.write_decision(item, int(item.timestamp_ns) + 70 * MS)
    w.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    items = grid_messages(args.seconds)
    variants: dict[str, dict[str, Any]] = {
        "v2 jpeg q75 full size": {"jpeg_quality": 75},
        "v2 jpeg q75 max side 180": {"jpeg_quality": 75, "image_max_side_px": 180},
        "v2 jpeg q50 full size": {"jpeg_quality": 50},
        "v2 jpeg q90 full size": {"jpeg_quality": 90},
        "v2 raw (foxglove.RawImage)": {"image_format": "raw"},
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        v1 = Path(tmp) / "v1.mcap"
        write_v1(v1, items)
        base = v1.stat().st_size / args.seconds
        results.append({"format": "v1 (exitflow.sensor.v1, raw frames, float32 audio)", "bytes": v1.stat().st_size,
                        "bytes_per_s": base, "times_smaller": 1.0})
        for name, options in variants.items():
            path = Path(tmp) / "v2.mcap"
            write_v2(path, items, **options)
            size = path.stat().st_size
            results.append({"format": name, "bytes": size, "bytes_per_s": size / args.seconds,
                            "times_smaller": base / (size / args.seconds)})
    report = {"seconds": args.seconds, "messages": len(items), "results": results}
    for r in results:
        print(f"{r['format']:<52} {r['bytes']:>12,} B  {r['bytes_per_s'] / 1024:>9.1f} KiB/s  {r['times_smaller']:.1f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
