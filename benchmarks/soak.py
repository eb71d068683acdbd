"""Soak: a long live run over the GRID loopback sources, sampling the RSS of every process (not a test).

The sources of ``configs/grid_live.yaml`` (the GRID clip's video as a paced, looped file; its
audio as 16 kHz PCM over TCP, served by ffmpeg on loopback; its word alignment as timed JSONL)
run through Ray source actors -> sync -> preprocess -> the light rule engine for ``--minutes``;
decisions stream to a JSONL decision log. Every ``--every-s`` seconds the RSS of the driver and
of each process under it (Ray's GCS and raylet, the source and engine actors' workers, ffmpeg)
is sampled with psutil. At the end (and after every sample, so a cut run keeps its figures) it
writes the samples and, per process, the least-squares RSS slope in MiB per minute, over the
whole run and after ``--warmup-min`` minutes.

    nice -n 10 .venv/bin/python benchmarks/soak.py --minutes 60 --out runs/soak.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray

from exitflow.pipeline.config import load_config
from exitflow.pipeline.live.run import resolve_source_paths
from exitflow.pipeline.live.runtime.ray.pipeline import RayPipeline, start_ray
from exitflow.pipeline.live.runtime.rule_engine import build_rule_engine
from exitflow.pipeline.live.sources.loopback import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "grid_live.yaml"



def process_label(proc: psutil.Process, driver_pid: int) -> str:
    """A stable, readable name: driver, gcs_server, raylet, ffmpeg, ray::SourceWorker (pid)..."""
    if proc.pid == driver_pid:
        return "driver"
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        return f"gone ({proc.pid})"
    title = " ".join(cmd) if cmd else name
    if title.startswith("ray::"):
        return f"{title.split('.')[0].split()[0]} ({proc.pid})"
    for known in ("gcs_server", "raylet", "ffmpeg", "log_monitor", "dashboard", "runtime_env", "monitor.py"):
        if known in title:
            return f"{known.removesuffix('.py')} ({proc.pid})"
    return f"{name} ({proc.pid})"


def slope_mib_per_min(t_min: list[float], rss_mib: list[float]) -> float | None:
    if len(t_min) < 3 or t_min[-1] - t_min[0] <= 0:
        return None
    return float(np.polyfit(np.asarray(t_min), np.asarray(rss_mib), 1)[0])


def summarize(samples: dict[int, dict[str, Any]], warmup_min: float) -> dict[str, Any]:
    out = {}
    for pid, rec in samples.items():
        t, rss = rec["t_min"], rec["rss_mib"]
        late = [(a, b) for a, b in zip(t, rss, strict=True) if a >= warmup_min]
        out[rec["label"]] = {
            "pid": pid,
            "n": len(t),
            "first_mib": round(rss[0], 1),
            "last_mib": round(rss[-1], 1),
            "max_mib": round(max(rss), 1),
            "span_min": round(t[-1] - t[0], 2),
            "slope_mib_per_min": None if (s := slope_mib_per_min(t, rss)) is None else round(s, 4),
            "slope_after_warmup_mib_per_min": (
                None if (s2 := slope_mib_per_min([a for a, _ in late], [b for _, b in late])) is None else round(s2, 4)
            ),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every-s", type=float, default=20.0, help="RSS sampling period")
    parser.add_argument("--warmup-min", type=float, default=5.0, help="slope also reported after this")
    parser.add_argument("--out", default="runs/soak.json")
    parser.add_argument("--decision-log", default="runs/soak-decisions.jsonl")
    args = parser.parse_args()
    if not args.minutes > 0 or not args.every_s > 0:
        sys.exit("--minutes and --every-s must be > 0")
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg is needed: apt-get install -y ffmpeg")

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(CONFIG)
    audio_port = free_port()
    sources = tuple(
        dataclasses.replace(s, uri=f"127.0.0.1:{audio_port}") if s.kind == "pcm_tcp" else s
        for s in resolve_source_paths(cfg)
    )
    clip = next(s.uri for s in sources if s.kind == "camera")
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", clip,
         "-vn", "-ac", "1", "-ar", "16000", "-f", "s16le", f"tcp://127.0.0.1:{audio_port}?listen=1"]
    )
    stream = dataclasses.replace(cfg.stream, sources=sources, live_view=False)
    start_ray(dataclasses.replace(cfg.ray, num_cpus=4))
    pipe = RayPipeline(stream, build_rule_engine, cfg=cfg, decision_log=REPO / args.decision_log)
    me = psutil.Process()
    samples: dict[int, dict[str, Any]] = {}
    out_path = REPO / args.out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def sample_rss() -> None:
        t_min = (time.monotonic() - t0) / 60.0
        for proc in [me, *me.children(recursive=True)]:
            try:
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            rec = samples.setdefault(proc.pid, {"label": process_label(proc, me.pid), "t_min": [], "rss_mib": []})
            rec["t_min"].append(round(t_min, 4))
            rec["rss_mib"].append(round(rss, 2))

    def write(final: bool) -> dict[str, Any]:
        snap = pipe.snapshot()
        result = {
            "started_utc": started_utc,
            "minutes_run": round((time.monotonic() - t0) / 60.0, 2),
            "final": final,
            "config": str(CONFIG.relative_to(REPO)),
            "decisions_total": pipe.decisions_total,
            "failed_decisions": pipe.failed_total,
            "messages": snap["messages"],
            "outage_events": snap["outage_events"],
            "sync_dropped": snap["sync"]["dropped"],
            "slopes": summarize(samples, args.warmup_min),
            "samples": {rec["label"]: {"t_min": rec["t_min"], "rss_mib": rec["rss_mib"]} for rec in samples.values()},
        }
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out_path)
        return result

    try:
        pipe.start()
        pipe.wait_ready(timeout_s=180)
        end = t0 + args.minutes * 60.0
        while time.monotonic() < end:
            pipe.run(duration_s=min(args.every_s, max(0.0, end - time.monotonic())))
            sample_rss()
            result = write(final=False)
            print(
                f"[{result['minutes_run']:6.1f} min] decisions={pipe.decisions_total} "
                + " ".join(f"{k}={v['last_mib']:.0f}MiB" for k, v in result["slopes"].items()),
                flush=True,
            )
    finally:
        result = write(final=True)
        pipe.shutdown()
        ray.shutdown()
        ffmpeg.kill()
        ffmpeg.wait(5)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
