"""Replay an MCAP recording through sync -> preprocess -> engine in event time.

The recorded ``timestamp_ns`` of every message is the clock: the synchronizer is polled with
event time, never the wall clock, so pacing (``realtime`` at ``rate``, or ``fast``) changes
only how long a replay takes, not which samples it forms. With a deterministic engine (e.g. a
replayed power trace instead of a live meter) two replays give the same decisions; only the
wall-clock ``latency_ms`` differs, which :func:`decision_log_key` leaves out. The lead exposes
this as ``exitflow replay FILE.mcap [--realtime | --fast] [--rate R] [--start S]``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from exitflow.pipeline.errors import DataError
from exitflow.pipeline.live.failures import describe_error, failed_decision
from exitflow.pipeline.live.preprocess import preprocess_sample
from exitflow.pipeline.live.recording import read_recording
from exitflow.pipeline.live.sync import Synchronizer
from exitflow.pipeline.messages import Decision, Sample


class Engine(Protocol):
    """What the live pipeline needs from an engine (pipeline/engine.py implements it)."""

    def process(self, sample: Sample) -> Decision: ...

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> None: ...


def decision_log_key(decision: Decision | dict[str, Any]) -> dict[str, Any]:
    """A decision as a JSON dict without the wall-clock ``latency_ms`` (for replay comparisons)."""
    data = decision.to_json_dict() if isinstance(decision, Decision) else dict(decision)
    data.pop("latency_ms", None)
    return data


def replay_recording(
    path: str | Path,
    engine: Engine,
    synchronizer: Synchronizer,
    mode: str = "fast",
    rate: float = 1.0,
    start_s: float = 0.0,
    preprocess: Callable[[Sample], Sample] | None = preprocess_sample,
    decisions_path: str | Path | None = None,
) -> list[Decision]:
    """Run every recorded sensor message through ``synchronizer`` and ``engine`` in event time.

    Args:
        path: An MCAP file written by :class:`~pipeline.recording.RecordingWriter`.
        engine: Object with ``process(sample) -> Decision``.
        synchronizer: A fresh synchronizer (same settings as the live run for the same samples).
        mode: ``"realtime"`` (sleep to keep event-time spacing divided by ``rate``) or ``"fast"``.
        rate: Speed factor for ``realtime``.
        start_s: Skip the first ``start_s`` seconds of the recording.
        preprocess: Raw payloads -> model inputs; None passes raw payloads.
        decisions_path: Write the decisions as JSON lines there.

    Returns:
        The decisions in order.

    Raises:
        ValueError: for an unknown mode or a rate <= 0.
        DataError: when the file holds no sensor messages.
    """
    if mode not in ("realtime", "fast"):
        raise ValueError(f"mode must be 'realtime' or 'fast', got {mode!r}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number > 0, got {rate}")
    if not (math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"start_s must be a finite number >= 0, got {start_s}")
    skipped: dict[str, int] = {}
    messages = [ev.message for ev in read_recording(path, skipped) if ev.message is not None]
    if not messages:
        raise DataError(
            f"{path} holds no sensor messages; record one with: exitflow record --config X out.mcap"
        )
    messages.sort(key=lambda m: (int(m.timestamp_ns), str(m.source), int(m.seq)))
    t0_ns = messages[0].timestamp_ns + int(start_s * 1e9)
    decisions: list[Decision] = []

    def run(samples: list[Sample]) -> None:
        for sample in samples:
            try:
                decisions.append(engine.process(preprocess(sample) if preprocess else sample))
            except Exception as e:  # noqa: BLE001 - one sample's failure is a failed decision, not the end
                decisions.append(failed_decision(sample, describe_error("engine", e)))

    wall0 = time.monotonic()
    for msg in messages:
        if msg.timestamp_ns < t0_ns:
            continue
        if mode == "realtime":
            due_s = (msg.timestamp_ns - t0_ns) / 1e9 / rate
            delay_s = due_s - (time.monotonic() - wall0)
            if delay_s > 0:
                time.sleep(delay_s)
        run(synchronizer.poll(msg.timestamp_ns))
        synchronizer.push(msg)
    run(synchronizer.flush())
    if decisions_path is not None:
        out = Path(decisions_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for d in decisions:
                f.write(json.dumps(d.to_json_dict()) + "\n")
    return decisions


def recorded_modalities(path: str | Path) -> list[str]:
    """The sorted modalities of the sensor messages in a recording."""
    found = {event.message.modality for event in read_recording(path) if event.message is not None}
    if not found:
        raise DataError(f"{path} holds no sensor messages")
    return sorted(found)
