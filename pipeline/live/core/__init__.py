"""Live pipeline, shared core: what every later room of :mod:`exitflow.pipeline.live` builds on.

One time base (:mod:`.clocks`), the synchronizer that aligns messages into samples (:mod:`.sync`,
its input checks in :mod:`.sync_input`), bounded queues and the in-flight limiter (:mod:`.queues`),
rolling statistics (:mod:`.stats`), per-sample failure isolation and the run's errors
(:mod:`.failures`), reconnect backoff (:mod:`.backoff`), and the endpoints the driver talks to
(:mod:`.endpoints`: source factories, sinks, the JSONL decision log). Imports nothing of ``live``
outside ``core``; no sensor library, no MCAP, no Ray.
"""

from exitflow.pipeline.live.core.backoff import Backoff
from exitflow.pipeline.live.core.clocks import ClockBook, ClockProbe, SourceClock
from exitflow.pipeline.live.core.endpoints import (
    DecisionLog,
    LiveSink,
    SourceFactory,
    modality_of,
    source_modality,
)
from exitflow.pipeline.live.core.failures import (
    CircuitBreaker,
    CircuitOpenError,
    FailedDecision,
    LiveRuntimeError,
    OutageEvent,
    describe_error,
    failed_decision,
)
from exitflow.pipeline.live.core.queues import BoundedQueue, Empty, InFlightLimiter
from exitflow.pipeline.live.core.stats import LiveStats
from exitflow.pipeline.live.core.sync import Synchronizer, make_synchronizer
from exitflow.pipeline.live.core.sync_input import AudioWindow, SyncStats

__all__ = [
    "AudioWindow",
    "Backoff",
    "BoundedQueue",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClockBook",
    "ClockProbe",
    "DecisionLog",
    "Empty",
    "FailedDecision",
    "InFlightLimiter",
    "LiveRuntimeError",
    "LiveSink",
    "LiveStats",
    "OutageEvent",
    "SourceClock",
    "SourceFactory",
    "SyncStats",
    "Synchronizer",
    "describe_error",
    "failed_decision",
    "make_synchronizer",
    "modality_of",
    "source_modality",
]
