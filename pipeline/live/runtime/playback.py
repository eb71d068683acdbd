"""The replay runtime: an MCAP recording through sync -> preprocess -> engine in event time, streaming.

The recorded ``timestamp_ns`` of every message is the clock: the synchronizer is polled with
event time, never the wall clock, so pacing (``realtime`` at ``rate``, or ``fast``) changes
only how long a replay takes, not which samples it forms. With a deterministic engine (e.g. a
replayed power trace instead of a live meter) two replays give the same decisions; only the
wall-clock ``latency_ms`` differs, which :func:`decision_log_key` leaves out.

Messages come one chunk at a time through the chunk index (:class:`~exitflow.pipeline.live.recording.reader.Recording`), so
memory does not grow with the file; ``start_s``/``end_s`` seek without reading the chunks
before, ``topics`` reads only those channels. Damaged chunks are skipped and counted
(:attr:`ReplaySummary.read`). The CLI is ``exitflow replay FILE.mcap [--realtime | --fast]
[--rate R] [--start S] [--end S] [--topics T,...]``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from exitflow.pipeline.errors import DataError
from exitflow.pipeline.live.core.failures import describe_error, failed_decision
from exitflow.pipeline.live.core.sync import Synchronizer
from exitflow.pipeline.live.recording.mcap_reader import ReadReport
from exitflow.pipeline.live.recording.reader import Recording, sensor_topics
from exitflow.pipeline.live.runtime.preprocess import preprocess_sample
from exitflow.pipeline.messages import Decision, Sample


class Engine(Protocol):
    """What a replay needs from an engine (the project's inference engines implement it)."""

    def process(self, sample: Sample) -> Decision: ...

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> None: ...


def decision_log_key(decision: Decision | dict[str, Any]) -> dict[str, Any]:
    """A decision as a JSON dict without the wall-clock ``latency_ms`` (for replay comparisons)."""
    data = decision.to_json_dict() if isinstance(decision, Decision) else dict(decision)
    data.pop("latency_ms", None)
    return data


@dataclass
class ReplaySummary:
    """What one replay did.

    Attributes:
        messages: Sensor messages fed to the synchronizer.
        decisions: Decisions made (failed ones included).
        failed: Failed decisions.
        missing: Decisions with a modality missing.
        correct: Decisions whose prediction equals their label.
        labelled: Decisions with a label.
        skipped_records: Records that did not decode, by reason.
        read: The reader's report: damaged chunks, messages and time ranges lost.
        wall_s: Seconds the replay took.
    """

    messages: int = 0
    decisions: int = 0
    failed: int = 0
    missing: int = 0
    correct: int = 0
    labelled: int = 0
    skipped_records: dict[str, int] = field(default_factory=dict)
    read: ReadReport = field(default_factory=ReadReport)
    wall_s: float = 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def lost_data(self) -> bool:
        return self.read.damaged or bool(self.skipped_records)


def _check(mode: str, rate: float, start_s: float, end_s: float | None) -> None:
    if mode not in ("realtime", "fast"):
        raise ValueError(f"mode must be 'realtime' or 'fast', got {mode!r}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number > 0, got {rate}")
    if not (math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"start_s must be a finite number >= 0, got {start_s}")
    if end_s is not None and not (math.isfinite(end_s) and end_s > start_s):
        raise ValueError(f"end_s must be a finite number > start_s ({start_s}), got {end_s}")


def replay_stream(
    path: str | Path,
    engine: Engine,
    synchronizer: Synchronizer,
    mode: str = "fast",
    rate: float = 1.0,
    start_s: float = 0.0,
    end_s: float | None = None,
    topics: list[str] | None = None,
    preprocess: Callable[[Sample], Sample] | None = preprocess_sample,
    on_decision: Callable[[Decision], None] | None = None,
    decisions_path: str | Path | None = None,
) -> ReplaySummary:
    """Run the recorded sensor messages through ``synchronizer`` and ``engine`` in event time.

    Nothing is kept per message or per decision: decisions go to ``on_decision`` and/or
    ``decisions_path`` (JSON lines) as they are made.

    Args:
        path: An MCAP file written by :class:`~.recording.RecordingWriter` (either format).
        engine: Object with ``process(sample) -> Decision``.
        synchronizer: A fresh synchronizer (same settings as the live run for the same samples).
        mode: ``"realtime"`` (sleep to keep event-time spacing divided by ``rate``) or ``"fast"``.
        rate: Speed factor for ``realtime``.
        start_s: Start this many seconds after the recording's first message.
        end_s: Stop this many seconds after it (None: the end).
        topics: Only these sensor topics (``/sensor/<source>``); None: every sensor topic.
        preprocess: Raw payloads -> model inputs; None passes raw payloads.
        on_decision: Called with every decision in order.
        decisions_path: Write the decisions as JSON lines there.

    Raises:
        ValueError: for an unknown mode, a rate <= 0, a bad start/end.
        DataError: when the file is not a readable recording or holds no sensor messages.
    """
    _check(mode, rate, start_s, end_s)
    summary = ReplaySummary()
    out_file = None
    if decisions_path is not None:
        out = Path(decisions_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out_file = out.open("w", encoding="utf-8")

    def emit(decision: Decision) -> None:
        summary.decisions += 1
        summary.failed += bool(getattr(decision, "error", None))
        summary.missing += bool(decision.missing)
        if decision.label is not None:
            summary.labelled += 1
            summary.correct += decision.prediction == decision.label
        if out_file is not None:
            out_file.write(json.dumps(decision.to_json_dict()) + "\n")
        if on_decision is not None:
            on_decision(decision)

    def run(samples: list[Sample]) -> None:
        for sample in samples:
            try:
                emit(engine.process(preprocess(sample) if preprocess else sample))
            except Exception as e:  # noqa: BLE001 - one sample's failure is a failed decision, not the end
                emit(failed_decision(sample, describe_error("engine", e)))

    wall0 = time.monotonic()
    try:
        with Recording(path) as rec:
            t0 = rec.start_time_ns()
            if t0 is None and rec.file.indexed:
                raise DataError(f"{path} holds no messages; record one with: exitflow record OUT.mcap")
            # no readable chunk in a cut file: read on anyway, so the damage is counted and reported
            start_ns = None if t0 is None else t0 + int(start_s * 1e9)
            end_ns = None if t0 is None or end_s is None else t0 + int(end_s * 1e9)
            wanted = topics if topics is not None else sensor_topics(rec)
            first_ns: int | None = None
            for event in rec.events(wanted, start_ns, end_ns, summary.skipped_records):
                msg = event.message
                if msg is None:
                    continue
                summary.messages += 1
                if mode == "realtime":
                    first_ns = event.log_time_ns if first_ns is None else first_ns
                    delay_s = (event.log_time_ns - first_ns) / 1e9 / rate - (time.monotonic() - wall0)
                    if delay_s > 0:
                        time.sleep(delay_s)
                run(synchronizer.poll(msg.timestamp_ns))
                synchronizer.push(msg)
            run(synchronizer.flush())
            summary.read = rec.report
    finally:
        if out_file is not None:
            out_file.close()
    if summary.messages == 0 and not summary.read.damaged:
        raise DataError(
            f"{path} holds no sensor messages{' in that time range or on those topics' if start_s or end_s or topics else ''}; "
            "record one with: exitflow record OUT.mcap"
        )
    summary.wall_s = time.monotonic() - wall0
    return summary


def replay_recording(
    path: str | Path,
    engine: Engine,
    synchronizer: Synchronizer,
    mode: str = "fast",
    rate: float = 1.0,
    start_s: float = 0.0,
    preprocess: Callable[[Sample], Sample] | None = preprocess_sample,
    decisions_path: str | Path | None = None,
    end_s: float | None = None,
    topics: list[str] | None = None,
) -> list[Decision]:
    """:func:`replay_stream` that also returns the decisions in order (for tests and short files)."""
    decisions: list[Decision] = []
    replay_stream(path, engine, synchronizer, mode, rate, start_s, end_s, topics, preprocess,
                  decisions.append, decisions_path)
    return decisions
