"""Fuzz the live input path with >= 10,000 generated sensor messages and print the counts (not a test).

The strategies of ``tests/pipeline/test_live_fuzz.py`` (corrupt JPEG bytes, arrays of any
shape/dtype, NaN/inf audio, other sample rates, empty and 1 MB text, duplicate, backwards,
negative and non-integer timestamps) drive, in batches, every stage a message meets:

- sources' parsing: ``CameraSource.decode_frame`` / ``check_frame``, PCM bytes into
  ``PcmSocketSource`` (other rates resampled), text bytes into ``TextSocketSource``;
- the synchronizer (push + poll + flush, triggers rotating over the modalities);
- preprocess + the engine actor's ``process`` on every sample the synchronizer emits;
- the recording codec: each accepted message is encoded, a byte flipped, and decoded again.

An exception that escapes any stage is an *escape* and is counted by stage and type (the goal
is 0); everything refused must be counted with a reason, which the script checks per batch.

    PYTHONPATH=. .venv/bin/python benchmarks/fuzz_stream.py --messages 10000 --out runs/fuzz_stream.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.pipeline.test_live_fuzz import (  # noqa: E402
    FakeSocket,
    _jpeg,
    feed_sync,
    refused_count,
    sensor_streams,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="sensor messages to generate (at least)")
    parser.add_argument("--batch", type=int, default=20, help="messages per generated stream")
    parser.add_argument("--out", default=None, help="write the counts as JSON here")
    args = parser.parse_args()
    if args.messages < 1 or args.batch < 1:
        sys.exit("--messages and --batch must be >= 1")
    logging.disable(logging.WARNING)  # the pipeline logs every refused message; counted here instead

    from exitflow.pipeline.live.core.sync import Synchronizer
    from exitflow.pipeline.live.recording.v1 import decode_sensor_message, encode_sensor_message
    from exitflow.pipeline.live.runtime.rule_engine import RuleEngine
    from exitflow.pipeline.live.runtime.workers import EngineWorker
    from exitflow.pipeline.live.sources import CameraSource, PcmSocketSource, TextSocketSource

    counts: Counter[str] = Counter()
    sync_drops: Counter[str] = Counter()
    source_drops: Counter[str] = Counter()
    escapes: Counter[str] = Counter()
    worker = EngineWorker(RuleEngine)
    triggers = ["image", "audio", "text"]
    t0 = time.monotonic()

    def guard(stage: str, fn, *a):  # noqa: ANN001, ANN202 - a tiny local helper
        try:
            return fn(*a)
        except Exception as e:  # noqa: BLE001 - what this benchmark counts
            escapes[f"{stage}:{type(e).__name__}"] += 1
            return None

    def sources_stage(msg) -> None:  # noqa: ANN001
        payload = msg.payload
        if msg.modality == "image":
            cam = CameraSource("0", "cam", gray=True)
            if isinstance(payload, np.ndarray):
                data = bytearray(_jpeg(int(payload.size) % 97))
                if payload.size:
                    data[int(payload.size) % len(data)] ^= 0xFF  # corrupt one byte
                guard("camera.decode_frame", cam.decode_frame, bytes(data))
                guard("camera.check_frame", cam.check_frame, payload)
            source_drops.update({f"camera:{k}": v for k, v in cam.dropped.items()})
        elif msg.modality == "audio" and isinstance(payload, np.ndarray):
            rate = msg.sample_rate_hz if msg.sample_rate_hz in (8000, 16000, 44100) else 16000
            src = PcmSocketSource("127.0.0.1", 1, fmt="f32le", sample_rate_hz=rate, target_rate_hz=16000, chunk_ms=10)
            raw = payload.real if np.iscomplexobj(payload) else payload
            with np.errstate(all="ignore"):
                src._sock = FakeSocket([raw.astype(np.float32).tobytes()[:8192]])
            src.state = "connected"
            for _ in range(8):
                guard("pcm.read", src.read)
            source_drops.update({f"pcm:{k}": v for k, v in src.dropped.items()})
        elif isinstance(payload, str):
            src = TextSocketSource("127.0.0.1", 1, "txt", max_rate_hz=None)
            src._sock = FakeSocket([payload.encode("utf-8", "surrogateescape")[: 1 << 21], b"\n", b""])
            src.state = "connected"
            for _ in range(6):
                guard("text.read", src.read)
            source_drops.update({f"text:{k}": v for k, v in src.dropped.items()})

    def codec_stage(msg) -> None:  # noqa: ANN001
        try:
            data = bytearray(encode_sensor_message(msg))
        except (TypeError, ValueError, OverflowError):
            counts["codec_refused_to_encode"] += 1
            return
        data[len(data) // 2] ^= 0x5A  # a damaged record
        try:
            decode_sensor_message(bytes(data))
            counts["codec_damaged_decoded"] += 1
        except ValueError:
            counts["codec_damaged_refused"] += 1
        except Exception as e:  # noqa: BLE001
            escapes[f"codec.decode:{type(e).__name__}"] += 1

    @settings(max_examples=max(1, -(-args.messages // args.batch)), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(sensor_streams(min_size=args.batch, max_size=args.batch))
    def run_batch(messages) -> None:  # noqa: ANN001
        counts["batches"] += 1
        counts["messages"] += len(messages)
        trigger = triggers[counts["batches"] % 3]
        sync = Synchronizer(("image", "audio", "text"), trigger=trigger, slop_ns=60_000_000, audio_window_s=0.1)
        for msg in messages:
            sources_stage(msg)
        emitted: list = []
        result = guard("sync", feed_sync, sync, messages, 3, emitted)
        if result is not None:
            accepted, refused = result
            counts["sync_accepted"] += accepted
            counts["sync_refused"] += refused
            if refused_count(sync) != refused:
                counts["uncounted_refusals"] += abs(refused_count(sync) - refused)
            sync_drops.update(sync.stats.dropped)
        for sample in emitted:
            counts["samples"] += 1
            out = guard("engine_worker.process", worker.process, sample)
            if out is not None:
                counts["failed_decisions" if out[2] else "decisions"] += 1
        for msg in messages:
            if isinstance(msg.timestamp_ns, int) and 0 <= msg.timestamp_ns < 2**63:
                codec_stage(msg)

    run_batch()
    elapsed_s = time.monotonic() - t0
    figures = {
        "messages": counts["messages"],
        "batches": counts["batches"],
        "escaped_exceptions": sum(escapes.values()),
        "escapes_by_stage": dict(escapes),
        "uncounted_refusals": counts["uncounted_refusals"],
        "sync": {"accepted": counts["sync_accepted"], "refused": counts["sync_refused"],
                 "drops_by_reason": dict(sorted(sync_drops.items()))},
        "source_drops_by_reason": dict(sorted(source_drops.items())),
        "samples_emitted": counts["samples"],
        "decisions": counts["decisions"],
        "failed_decisions": counts["failed_decisions"],
        "preprocess_drops": dict(worker.preprocess_drops),
        "codec": {k[6:]: v for k, v in counts.items() if k.startswith("codec_")},
        "seconds": round(elapsed_s, 1),
    }
    print(json.dumps(figures, indent=1))
    if args.out:
        out = REPO / args.out if not Path(args.out).is_absolute() else Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=1))
    return 0 if not escapes and not counts["uncounted_refusals"] else 1


if __name__ == "__main__":
    sys.exit(main())
