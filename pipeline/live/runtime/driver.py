"""Stage 3 of the live data flow: the driver loop both runtimes share.

:class:`PipelineDriver` drains the sources through a
:class:`~exitflow.pipeline.live.runtime.transport.Transport`, rewrites every message's capture stamp
into its own clock (:class:`~exitflow.pipeline.live.core.clocks.ClockBook`, offsets measured by
round trips), records raw messages (MCAP), aligns them
(:class:`~exitflow.pipeline.live.core.sync.Synchronizer`), queues samples on a bounded edge and keeps
at most ``max_in_flight`` samples inside the engine. A source that goes down is marked at its
first failed call (an ``actor_down`` outage event in the decision log), the other modalities
keep flowing (the sync fallback clock marks the absent one missing), and its first message
from a new incarnation logs ``actor_up``.

Nothing grows with the run's length: only the last ``keep_decisions`` decisions and
``keep_received`` message ids stay in memory (totals are counters); every decision and outage
streams to the recording and/or the JSONL decision log. A failure of one sample, of one message
or of one loop turn is counted and logged, never fatal; only the circuit breaker (every sample
failing for ``stream.circuit_breaker_s``) stops a run.

Latency stages (ms): ``source`` (capture -> driver), ``sync`` (capture -> sample out),
``queue`` (sample out -> engine), ``preprocess`` and ``engine`` (inside the engine),
``engine_call`` (handed over -> decision back), ``end_to_end`` (capture -> decision).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from exitflow.pipeline.config import SourceConfig, StreamConfig
from exitflow.pipeline.live.core.clocks import ClockBook
from exitflow.pipeline.live.core.endpoints import DecisionLog, LiveSink, SourceFactory, modalities_of
from exitflow.pipeline.live.core.failures import (
    CircuitBreaker,
    CircuitOpenError,
    LiveRuntimeError,
    describe_error,
    error_kind,
    failed_decision,
    is_shed,
)
from exitflow.pipeline.live.core.labels import LABEL, LabelBook
from exitflow.pipeline.live.core.overload import OverloadMonitor
from exitflow.pipeline.live.core.queues import BoundedQueue, Empty, InFlightLimiter
from exitflow.pipeline.live.core.stats import LiveStats
from exitflow.pipeline.live.core.sync import make_synchronizer
from exitflow.pipeline.live.runtime.source_book import SourceBook, SourceHandle
from exitflow.pipeline.live.runtime.transport import EngineDown, SourceDown, Transport
from exitflow.pipeline.messages import Decision, Sample, SensorMessage

log = logging.getLogger(__name__)

HEALTH_PERIOD_NS = 500_000_000
CLOCK_PROBE_PERIOD_NS = 2_000_000_000  # one source's clock per period, in turn
CLOCK_PROBES_AT_START = 3
PROBE_TIMEOUT_S = 0.02  # a probe in the loop blocks it: a slower answer is dropped (and would be a poor estimate)


class PipelineDriver:
    """Sources -> clock correction -> sync -> bounded queue -> engine, with recording and statistics.

    Args:
        stream: The ``stream`` config section.
        transport: Reaches the sources and the engine (Ray actors or in-process threads).
        sources: Name -> SourceConfig or factory to use instead of ``stream.sources``.
        recorder: Where raw messages, decisions and outage events are written, or None.
        on_decision: Called with every decision (failed ones included) on the driver.
        decision_log: JSONL file that receives every decision and outage event, or None.
        keep_decisions: How many recent decisions :attr:`decisions` holds.
        keep_received: How many recent ``(source, seq, timestamp_ns)`` :attr:`received` holds.
    """

    def __init__(
        self,
        stream: StreamConfig,
        transport: Transport,
        sources: dict[str, SourceConfig | SourceFactory] | None = None,
        recorder: LiveSink | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        decision_log: str | Path | DecisionLog | None = None,
        keep_decisions: int = 1000,
        keep_received: int = 4096,
    ):
        self.stream = stream
        self.transport = transport
        specs = sources if sources is not None else {s.name: s for s in stream.sources}
        if not specs:
            raise LiveRuntimeError("no sources configured; add entries under stream.sources (see docs/streaming.md)")
        modalities = sorted({m for spec in specs.values() for m in modalities_of(spec)} - {LABEL})
        self.labels = LabelBook()  # ground truth from a label topic (core/labels.py): live accuracy
        self.sync = make_synchronizer(stream, modalities)
        self.clocks = ClockBook(int(stream.slop_ms * 1e6))
        self.sample_queue: BoundedQueue[tuple[Sample, int]] = BoundedQueue(
            stream.engine_queue_size, stream.engine_queue_policy, name="sync->engine", block_timeout_s=0.0
        )
        self.limiter = InFlightLimiter(stream.max_in_flight)
        self.recorder = recorder
        self.on_decision = on_decision
        if decision_log is None or isinstance(decision_log, DecisionLog):
            self.decision_log = decision_log
        else:
            self.decision_log = DecisionLog(decision_log)
        self.stats = LiveStats()
        self.overload = OverloadMonitor(on_shed=self.stats.count_drop)  # shed by reason, capacity, "overloaded"
        self.breaker = CircuitBreaker(getattr(stream, "circuit_breaker_s", 30.0))
        self.decisions: deque[Decision] = deque(maxlen=keep_decisions)  # the most recent ones
        # (source, seq, timestamp_ns) of the most recent messages the driver saw
        self.received: deque[tuple[str, int, int]] = deque(maxlen=keep_received)
        self.decisions_total = 0
        self.failed_total = 0
        self.received_total = 0
        self.budget: dict[str, Any] = {}
        self.preprocess_drops: dict[str, int] = {}  # "modality:ExceptionType" -> n, from the engine
        self._specs = specs
        self.sources = SourceBook(list(specs), (self.recorder, self.decision_log), self.stats)
        self.outages = self.sources.outages  # the most recent outage events
        self.outage_counts = self.sources.outage_counts  # event kind -> n
        self._in_flight: dict[Hashable, tuple[Sample, int]] = {}
        self._engine_up = True  # an engine that dies logs actor_down / actor_up for "engine"
        self._last_health_ns = 0
        self._last_probe_ns = 0
        self._probe_turn = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(
        self, source_options: dict[str, dict[str, Any]] | None = None, engine_options: dict | None = None
    ) -> None:
        """Create the engine and the sources (``*_options``: runtime-specific overrides, e.g. Ray resources)."""
        self.transport.start(self._specs, source_options, engine_options)

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Block until sources and engine are up, then measure every source's clock offset;
        returns name -> where it runs.

        Raises:
            LiveRuntimeError: when something is not up within ``timeout_s``.
        """
        where = self.transport.wait_ready(timeout_s)
        for h in self.sources.handles.values():
            h.state = "alive"
            for _ in range(CLOCK_PROBES_AT_START):
                self._probe_clock(h, timeout_s=5.0)
        return where

    def source_state(self, name: str) -> dict[str, Any]:
        """One source as the driver sees it: ``actor`` state, ``restarts``, ``failures``, ``outages``."""
        return self.sources.state(name)

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Change the running engine's budget (both None: off); returns the budget in force."""
        self.budget = self.transport.set_budget(mj_per_sample, power_w)
        return dict(self.budget)

    def shutdown(self) -> None:
        """Stop the sources, wait for in-flight decisions briefly, close the logs, release everything."""
        self.transport.stop_sources(3.0)
        deadline = time.monotonic() + 3.0
        while self._in_flight and time.monotonic() < deadline:
            self._collect(timeout_s=0.1)
        self.transport.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.decision_log is not None:
            self.decision_log.close()

    # -- one turn of the loop ----------------------------------------------------------------
    def step(self, wait_s: float = 0.01) -> int:
        """Drain sources, sync, dispatch and collect once; returns the number of new decisions."""
        self._drain_sources(wait_s)
        now = time.monotonic_ns()
        for sample in self.sync.poll(now):
            self.stats.observe_latency("sync", (now - sample.timestamp_ns) / 1e6)
            for modality, ts in sample.timestamps_ns.items():
                self.stats.observe_alignment(modality, (ts - sample.timestamp_ns) / 1e6)
            self.sample_queue.put((self.labels.attach(sample), now))
        self._dispatch()
        n = self._collect(timeout_s=0.0)
        if now - self._last_health_ns > HEALTH_PERIOD_NS:
            self._refresh_health()
            self._last_health_ns = now
        if now - self._last_probe_ns > CLOCK_PROBE_PERIOD_NS and self.sources.handles:
            handles = list(self.sources.handles.values())
            h = handles[self._probe_turn % len(handles)]
            self._probe_turn += 1
            if h.state == "alive":
                self._probe_clock(h, timeout_s=PROBE_TIMEOUT_S)
            self._last_probe_ns = now
        return n

    def run(
        self,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
        on_tick: Callable[[Any], None] | None = None,
        tick_s: float = 0.25,
    ) -> None:
        """Loop :meth:`step` until ``duration_s`` passes, ``stop`` is set or Ctrl-C.

        A turn that raises is counted (``driver`` drops) and the loop goes on.

        Raises:
            CircuitOpenError: when every sample failed for ``stream.circuit_breaker_s``.
        """
        end = None if duration_s is None else time.monotonic() + duration_s
        last_tick = 0.0
        while (end is None or time.monotonic() < end) and not (stop and stop.is_set()):
            try:
                self.step()
                if on_tick is not None and time.monotonic() - last_tick >= tick_s:
                    last_tick = time.monotonic()
                    on_tick(self)
            except (CircuitOpenError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - one broken turn must not end the run
                error = describe_error("driver", e)
                self.stats.count_drop("driver", error_kind(error))
                self.stats.last_engine_error = error
                log.warning("live driver: %s (counted; the loop goes on)", error)
                self.breaker.failure(error)
                time.sleep(0.01)

    # -- clocks ------------------------------------------------------------------------------
    def _probe_clock(self, h: SourceHandle, timeout_s: float) -> None:
        try:
            probe = self.transport.clock_probe(h.name, timeout_s)
        except SourceDown as e:
            self.sources.mark_down(h, e)
            return
        except Exception as e:  # noqa: BLE001 - no estimate this time; the last one stands
            self.stats.count_drop(h.name, f"clock_probe_failed:{type(e).__name__}")
            return
        if probe is not None:
            self.clocks.add_probe(h.name, probe)

    # -- sources -----------------------------------------------------------------------------
    def _drain_sources(self, wait_s: float) -> None:
        for name, reply in self.transport.poll_sources(wait_s):
            h = self.sources.handles[name]
            if isinstance(reply, SourceDown):
                self.sources.mark_down(h, reply)
                continue
            if isinstance(reply, BaseException):  # e.g. a message that does not unpickle
                self.stats.count_drop(name, f"drain_failed:{type(reply).__name__}")
                continue
            now = time.monotonic_ns()
            for msg in reply:
                try:
                    self._take_message(h, msg, now)
                except Exception as e:  # noqa: BLE001 - one malformed message is dropped, counted
                    self.stats.count_drop(name, f"message_failed:{type(e).__name__}")

    def _take_message(self, h: SourceHandle, msg: SensorMessage, now: int) -> None:
        incarnation = msg.meta.get("worker_started_ns")
        if h.incarnation is not None and incarnation != h.incarnation:
            h.restarts += 1
            self.sources.event(h, h.name, "actor_up", f"restart {h.restarts}")
            self.clocks.reset(h.name)  # a new process may run on another host's clock
            self._probe_clock(h, timeout_s=PROBE_TIMEOUT_S)
        elif h.state == "restarting":  # the same incarnation answers again (a transient outage)
            self.sources.event(h, h.name, "actor_up", "reachable again")
        h.state = "alive"
        h.incarnation = incarnation
        if msg.capture_wall_ns is None:
            msg.capture_wall_ns = msg.timestamp_ns
        msg.timestamp_ns = self.clocks.to_driver_ns(h.name, msg.capture_wall_ns)  # one time base
        msg.receive_ns = now
        if msg.modality == LABEL:  # a side topic: scored against decisions, never synced
            return self.labels.add(msg.timestamp_ns, msg.payload)
        self.received.append((msg.source, msg.seq, msg.timestamp_ns))
        self.received_total += 1
        self.stats.observe_latency("source", (now - msg.timestamp_ns) / 1e6)
        self.stats.count_message(msg.source)
        if self.recorder is not None:
            try:
                self.recorder.write_message(msg)
            except Exception as e:  # noqa: BLE001 - e.g. a payload the codec cannot hold; still synced
                self.stats.count_drop(h.name, f"record_failed:{type(e).__name__}")
        if not self.sync.push(msg):
            self.stats.count_drop(msg.source, "sync_refused")

    # -- engine ------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self.limiter.try_acquire():
            try:
                sample, emitted_ns = self.sample_queue.get_nowait()
            except Empty:
                self.limiter.release()
                return
            now = time.monotonic_ns()
            self.stats.observe_latency("queue", (now - emitted_ns) / 1e6)
            if self.stream.max_sample_age_ms is not None and now - sample.timestamp_ns > self.stream.max_sample_age_ms * 1e6:
                self.limiter.release()  # too old to decide in time: shed (overload), counted
                self.overload.count_shed("engine_queue", "shed:stale", now / 1e9)
                continue
            try:
                token = self.transport.submit(sample)
            except Exception as e:  # noqa: BLE001 - e.g. a payload that cannot be serialised
                self.limiter.release()
                self._emit(failed_decision(sample, describe_error("dispatch", e)), sample)
                continue
            self._in_flight[token] = (sample, now)

    def _collect(self, timeout_s: float) -> int:
        if not self._in_flight:
            return 0
        done = self.transport.collect(timeout_s)
        for token, result in done:
            sample, sent_ns = self._in_flight.pop(token)
            self.limiter.release()
            if isinstance(result, EngineDown):
                if self._engine_up:
                    self._engine_up = False
                    self.sources.event(None, "engine", "actor_down", type(result.__cause__ or result).__name__)
                self._emit(failed_decision(sample, describe_error("engine_unavailable", result.__cause__ or result)),
                           sample)
                continue
            if isinstance(result, BaseException):
                self._emit(failed_decision(sample, describe_error("engine_call", result)), sample)
                continue
            decision, stage_ms, error = result
            if is_shed(error):  # overload, shed by the service's policy: a drop with its reason
                self.overload.count_shed("service", error, time.monotonic())
                continue
            if "engine" in stage_ms and "batch_wait" not in stage_ms:  # one sample per call: its own time
                self.overload.engine_ms(stage_ms["engine"])
            if not self._engine_up:
                self._engine_up = True
                self.sources.event(None, "engine", "actor_up", "answering again")
            now = time.monotonic_ns()
            for stage, ms in stage_ms.items():
                self.stats.observe_latency(stage, ms)
            if error is None:
                self.stats.observe_latency("engine_call", (now - sent_ns) / 1e6)
                self.stats.observe_latency("end_to_end", (now - sample.timestamp_ns) / 1e6)
            self._emit(decision, sample)
        return len(done)

    def _emit(self, decision: Decision, sample: Sample) -> None:
        """Count, keep (bounded), log and hand on one decision; a failed one feeds the breaker."""
        error = getattr(decision, "error", None)
        decision.label = sample.label if decision.label is None else decision.label  # any engine: live accuracy
        self.decisions.append(decision)
        self.decisions_total += 1
        if error:
            self.failed_total += 1
            self.stats.observe_failure(error)
        else:
            self.stats.observe_decision(decision)
        for sink in (self.recorder, self.decision_log):
            if sink is None:
                continue
            try:
                sink.write_decision(decision, sample.timestamp_ns)
            except Exception as e:  # noqa: BLE001 - counted, the run goes on
                self.stats.count_drop("log", f"decision_write:{type(e).__name__}")
        if self.on_decision is not None:
            try:
                self.on_decision(decision)
            except Exception as e:  # noqa: BLE001 - a user callback's bug is counted, not fatal
                self.stats.count_drop("on_decision", type(e).__name__)
        if error:
            self.breaker.failure(error)
        else:
            self.breaker.success()

    def _refresh_health(self) -> None:
        status = self.transport.engine_status()
        self.overload.queue_drops(self.sample_queue.stats().dropped, time.monotonic())
        if status is not None:
            self.overload.service_status(status)
            self.budget = status.get("budget", {}) or self.budget
            self.preprocess_drops = dict(status.get("preprocess_drops", {}))
        for name, health in self.transport.poll_health():
            self.sources.take_health(name, health)

    def snapshot(self) -> dict[str, Any]:
        """Everything the live view, the metrics and the benchmarks show, as plain data."""
        clocks = self.clocks.to_dict()
        return {
            "runtime": self.transport.kind,
            "sources": self.sources.snapshot(clocks),
            "clock_skewed": sorted(name for name, c in clocks.items() if c["skewed"]),
            "sync": self.sync.stats.to_dict(),
            "engine_queue": self.sample_queue.stats().to_dict(),
            "in_flight": self.limiter.in_flight,
            "overload": self.overload.snapshot(time.monotonic()),
            "budget": dict(self.budget),
            "decisions_total": self.decisions_total,
            "failed_decisions": self.failed_total,
            "received_total": self.received_total,
            "outage_events": dict(self.outage_counts),
            "preprocess_drops": dict(self.preprocess_drops),
            "recent_outages": [f"{e.source} {e.event} ({e.reason})" for e in list(self.outages)[-5:]],
            **self.stats.summary(),
        }
