"""Per-sample failure isolation of the live pipeline: failed decisions, outage events, a circuit breaker,
and the errors that stop a run (:class:`CircuitOpenError`, :class:`LiveRuntimeError`).

One bad sample never ends a run. Whatever raises while a sample is decoded, preprocessed,
run through the engine or metered becomes a :class:`FailedDecision` (``prediction = -1``,
``system = "failed"``, ``error`` = ``"<stage>: <ExceptionType>: <message>"``) that is counted,
shown in the live view and written to the decision log like any other decision. Only when
*every* sample fails for ``window_s`` seconds in a row does :class:`CircuitBreaker` stop the
run, with one line naming the last error (a broken engine, not a bad sample).

:class:`OutageEvent` records a source going down or coming back (actor died or restarted,
stream disconnected or reconnected); the driver writes them to the decision log between the
decisions, so every outage is visible there.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.messages import Decision, Sample

MAX_ERROR_CHARS = 300
FAILED_SYSTEM = "failed"


class CircuitOpenError(ExitflowError):
    """Every sample failed for ``stream.circuit_breaker_s`` seconds; the run stops."""


class LiveRuntimeError(ExitflowError):
    """The live runtime cannot start (Ray unreachable, engine factory missing...)."""


@dataclass
class FailedDecision(Decision):
    """A sample that could not be decided; ``error`` says where and why (``stage: Type: message``)."""

    error: str = ""


SHED_PREFIX = "shed:"  # the error of a sample shed under overload: "shed:<reason>" (not a failure)


def is_shed(error: str | None) -> bool:
    """Whether a result's error says the sample was shed by policy (counted as a drop, not a failure)."""
    return bool(error) and str(error).startswith(SHED_PREFIX)


def describe_error(stage: str, exc: BaseException) -> str:
    """``"engine: RuntimeError: CUDA out of memory"``, one line, at most ``MAX_ERROR_CHARS``."""
    text = " ".join(str(exc).split())
    out = f"{stage}: {type(exc).__name__}" + (f": {text}" if text else "")
    return out if len(out) <= MAX_ERROR_CHARS else out[: MAX_ERROR_CHARS - 3] + "..."


def failed_decision(sample: Sample | None, error: str, sample_id: int = -1) -> FailedDecision:
    """The decision logged for a sample that failed with ``error`` (see :func:`describe_error`)."""
    return FailedDecision(
        sample_id=sample.sample_id if sample is not None else sample_id,
        prediction=-1,
        system=FAILED_SYSTEM,
        missing=sorted(sample.missing) if sample is not None else [],
        timestamp_ns=sample.timestamp_ns if sample is not None else None,
        error=error,
    )


def error_kind(error: str) -> str:
    """``"engine: RuntimeError: boom"`` -> ``"engine:RuntimeError"`` (a bounded counter key)."""
    parts = [p.strip() for p in error.split(":", 2)]
    return ":".join(parts[:2]) if len(parts) >= 2 else parts[0]


@dataclass
class OutageEvent:
    """A source went down or came back; one JSON line in the decision log.

    Attributes:
        source: Source name.
        event: ``"actor_down"``, ``"actor_up"``, ``"disconnected"`` or ``"reconnected"``.
        reason: What happened (exception type, the source's last error).
        timestamp_ns: Driver's monotonic clock when it saw the change.
    """

    source: str
    event: str
    reason: str = ""
    timestamp_ns: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        return {"outage": asdict(self)}


class CircuitBreaker:
    """Opens when samples failed and none succeeded for ``window_s`` seconds.

    Time is injected (``now_ns``), so tests drive it without sleeping. Samples that never reach
    the engine (no data at all) neither open nor close it: a run with every sensor unplugged
    waits for them instead of stopping.

    Args:
        window_s: Seconds of nothing but failures before it opens; 0 disables it.
        min_failures: Failures needed in that window (a single slow failure is not a pattern).
    """

    def __init__(self, window_s: float = 30.0, min_failures: int = 3):
        if window_s < 0:
            raise ValueError(f"circuit breaker window must be >= 0 s, got {window_s}")
        self.window_ns = int(window_s * 1e9)
        self.min_failures = min_failures
        self._first_failure_ns: int | None = None
        self._failures = 0
        self.last_error: str | None = None

    def success(self) -> None:
        self._first_failure_ns = None
        self._failures = 0

    def failure(self, error: str, now_ns: int | None = None) -> None:
        """Count one failed sample.

        Raises:
            CircuitOpenError: when every sample failed for the whole window.
        """
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        self.last_error = error
        if self._first_failure_ns is None:
            self._first_failure_ns = now_ns
        self._failures += 1
        if self.window_ns and self._failures >= self.min_failures and now_ns - self._first_failure_ns >= self.window_ns:
            raise CircuitOpenError(
                f"every sample failed for {(now_ns - self._first_failure_ns) / 1e9:.0f} s "
                f"({self._failures} in a row; last: {error}); fix the engine or raise stream.circuit_breaker_s"
            )
