"""Stage 3 of the live data flow: run sources and the engine as Ray actors, driven by one loop.

Plain classes hold the logic (:class:`~exitflow.pipeline.live.workers.SourceWorker`,
:class:`~exitflow.pipeline.live.workers.EngineWorker`); only
:func:`source_actor` / :func:`engine_actor` call ``ray.remote(...).options(...)`` with
``max_restarts`` and the resources that place them (e.g. ``{"gpu_node": 1}`` for the engine).
The driver (:class:`LivePipeline`) drains each source actor's bounded queue, records raw
messages (MCAP), aligns them (:class:`~exitflow.pipeline.live.sync.Synchronizer`), queues samples on a
bounded edge and keeps at most ``max_in_flight`` samples inside the engine. A source actor
that dies is restarted by Ray; its first failed call marks it down at once (an ``actor_down``
outage event in the decision log), the other modalities keep flowing (the sync fallback clock
marks the absent one missing), and its first message from the new incarnation logs ``actor_up``.

Nothing in the driver grows with the run's length: only the last ``keep_decisions`` decisions
and ``keep_received`` message ids stay in memory (totals are counters); every decision and
outage streams to the recording and/or the JSONL decision log. A failure of one sample, of one
message or of one loop turn is counted and logged, never fatal; only the circuit breaker
(every sample failing for ``stream.circuit_breaker_s``) stops a run.

A local Ray binds to loopback (``ray.node_ip_address``) with the dashboard off; a remote
``ray.address`` is probed first and refused within ``ray.connect_timeout_s`` with one line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from exitflow.pipeline.config import SourceConfig, StreamConfig
from exitflow.pipeline.live.failures import (
    CircuitBreaker,
    CircuitOpenError,
    OutageEvent,
    describe_error,
    error_kind,
    failed_decision,
)
from exitflow.pipeline.live.queues import BoundedQueue, Empty, InFlightLimiter
from exitflow.pipeline.live.placement import EdgeSourceWorker, project_runtime_env, should_ship
from exitflow.pipeline.live.ray_connect import probe_ray_address, start_ray
from exitflow.pipeline.live.recording import DecisionLog, LiveSink
from exitflow.pipeline.live.sources import Backoff
from exitflow.pipeline.live.stats import LiveStats
from exitflow.pipeline.live.sync import make_synchronizer
from exitflow.pipeline.live.workers import (
    EngineFactory,
    EngineWorker,
    LiveRuntimeError,
    SourceFactory,
    SourceWorker,
)
from exitflow.pipeline.messages import Decision, Sample

log = logging.getLogger(__name__)

ENGINE_ACTOR_NAME = "exitflow-engine"
__all__ = [
    "ENGINE_ACTOR_NAME",
    "CircuitOpenError",
    "LivePipeline",
    "LiveRuntimeError",
    "engine_actor",
    "probe_ray_address",
    "source_actor",
    "start_ray",
]


# -- Ray wrapping ----------------------------------------------------------------------------
def source_actor(spec: SourceConfig | SourceFactory, stream: StreamConfig, name: str, **options: Any) -> Any:
    """A restartable Ray actor running :class:`SourceWorker` (placed by ``spec.resources``).

    With ``stream.preprocess_at_source`` it is an :class:`EdgeSourceWorker` (frames reduced to the
    model's size on the sensor's node); with ``stream.ship_project`` the project travels by
    ``runtime_env`` (docs/service.md).
    """
    cfg = spec if isinstance(spec, SourceConfig) else SourceConfig(name=name)  # placement defaults
    opts: dict[str, Any] = {
        "max_restarts": stream.max_restarts,
        "max_task_retries": 0,
        "num_cpus": cfg.num_cpus,
        "resources": dict(cfg.resources),
        "name": f"exitflow-source-{name}",
    }
    if should_ship(stream):
        opts["runtime_env"] = project_runtime_env()
    opts.update(options)
    backoff = Backoff(
        stream.reconnect_initial_s,
        max(stream.reconnect_max_s, stream.reconnect_initial_s),
        max_attempts=stream.max_reconnects,
    )
    return (
        ray.remote(EdgeSourceWorker if stream.preprocess_at_source else SourceWorker)
        .options(**opts)
        .remote(spec, cfg.queue_size, cfg.queue_policy, stream.audio_rate_hz, backoff)
    )


def engine_actor(factory: EngineFactory | str, stream: StreamConfig, cfg: Any = None, **options: Any) -> Any:
    """The engine as a named Ray actor (``exitflow-engine``), placed by ``stream.engine_resources``
    (the project shipped by ``runtime_env`` per ``stream.ship_project``). Several pipelines share
    one batched engine through :class:`~exitflow.pipeline.live.service.InferenceService` instead."""
    opts: dict[str, Any] = {
        "max_restarts": stream.max_restarts,
        "num_cpus": stream.engine_num_cpus,
        "num_gpus": stream.engine_num_gpus,
        "resources": dict(stream.engine_resources),
        "name": ENGINE_ACTOR_NAME,
    }
    if should_ship(stream):
        opts["runtime_env"] = project_runtime_env()
    opts.update(options)
    return ray.remote(EngineWorker).options(**opts).remote(factory, cfg, True)


# -- the driver ------------------------------------------------------------------------------
MAX_RECENT_OUTAGES = 50


@dataclass
class _SourceHandle:
    name: str
    actor: Any
    drain_ref: Any = None
    health_ref: Any = None
    state: str = "starting"
    health: dict[str, Any] = field(default_factory=dict)
    failures: int = 0
    restarts: int = 0
    incarnation: int | None = None
    outages: int = 0


class LivePipeline:
    """Sources -> sync -> bounded queue -> engine, with recording and live statistics.

    Args:
        stream: The ``stream`` config section.
        engine_factory: Zero-argument engine factory, or a ``stream.engine`` name (see
            :func:`~exitflow.pipeline.live.workers.resolve_engine_factory`; called with ``cfg``
            inside the engine actor).
        cfg: Whole config, handed to a factory given by name.
        sources: Name -> factory to use instead of ``stream.sources`` (tests, custom sensors);
            each value may also be a SourceConfig.
        recorder: Where raw messages, decisions and outage events are written, or None.
        on_decision: Called with every decision (failed ones included) on the driver.
        decision_log: JSONL file that receives every decision and outage event, or None.
        keep_decisions: How many recent decisions :attr:`decisions` holds.
        keep_received: How many recent ``(source, seq, timestamp_ns)`` :attr:`received` holds.
    """

    def __init__(
        self,
        stream: StreamConfig,
        engine_factory: EngineFactory | str,
        cfg: Any = None,
        sources: dict[str, SourceConfig | SourceFactory] | None = None,
        recorder: LiveSink | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        decision_log: str | Path | DecisionLog | None = None,
        keep_decisions: int = 1000,
        keep_received: int = 4096,
    ):
        self.stream = stream
        specs = sources if sources is not None else {s.name: s for s in stream.sources}
        if not specs:
            raise LiveRuntimeError(
                "no sources configured; add entries under stream.sources (see docs/streaming.md)"
            )
        modalities = sorted({self._modality_of(spec) for spec in specs.values()})
        self.sync = make_synchronizer(stream, modalities)
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
        self.breaker = CircuitBreaker(getattr(stream, "circuit_breaker_s", 30.0))
        self.decisions: deque[Decision] = deque(maxlen=keep_decisions)  # the most recent ones
        # (source, seq, timestamp_ns) of the most recent messages the driver saw
        self.received: deque[tuple[str, int, int]] = deque(maxlen=keep_received)
        self.decisions_total = 0
        self.failed_total = 0
        self.received_total = 0
        self.outages: deque[OutageEvent] = deque(maxlen=MAX_RECENT_OUTAGES)
        self.outage_counts: Counter[str] = Counter()  # event kind -> n
        self._specs = specs
        self._engine_factory = engine_factory
        self._cfg = cfg
        self._handles: dict[str, _SourceHandle] = {}
        self._engine: Any = None
        self._in_flight: dict[Any, tuple[Sample, int]] = {}
        self._engine_up = True  # an engine actor that dies logs actor_down / actor_up for "engine"
        self._last_health_ns = 0
        self.budget: dict[str, Any] = {}
        self.preprocess_drops: dict[str, int] = {}  # "modality:ExceptionType" -> n, from the engine actor
        self._status_ref: Any = None

    @staticmethod
    def _modality_of(spec: SourceConfig | SourceFactory) -> str:
        if isinstance(spec, SourceConfig):
            if spec.kind == "camera":
                return "image"
            return "text" if spec.kind.startswith("text") else "audio"
        modality = getattr(spec, "modality", None)
        if modality is None:
            raise LiveRuntimeError(
                "a source factory needs a 'modality' attribute ('image', 'audio' or 'text')"
            )
        return modality

    # -- lifecycle ---------------------------------------------------------------------------
    def start(
        self, source_options: dict[str, dict[str, Any]] | None = None, engine_options: dict | None = None
    ) -> None:
        """Create the engine and source actors (``*_options`` override Ray options, e.g. resources)."""
        self._engine = engine_actor(self._engine_factory, self.stream, self._cfg, **(engine_options or {}))
        for name, spec in self._specs.items():
            extra = (source_options or {}).get(name, {})
            self._handles[name] = _SourceHandle(name, source_actor(spec, self.stream, name, **extra))

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Block until every actor is constructed; returns actor name -> Ray node id.

        Raises:
            LiveRuntimeError: when an actor is not up within ``timeout_s``.
        """
        refs = {name: h.actor.node_id.remote() for name, h in self._handles.items()}
        refs["engine"] = self._engine.node_id.remote()
        try:
            nodes = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s), strict=True))
        except GetTimeoutError as e:
            raise LiveRuntimeError(
                f"actors not ready after {timeout_s} s; is the cluster short of resources?"
            ) from e
        except RayActorError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            cause = next(
                (line for line in reversed(lines) if "Error" in line), lines[-1] if lines else repr(e)
            )
            raise LiveRuntimeError(f"an actor failed to start: {cause}") from e
        for h in self._handles.values():
            h.state = "alive"
        return nodes

    @property
    def source_actors(self) -> dict[str, Any]:
        return {name: h.actor for name, h in self._handles.items()}

    @property
    def engine(self) -> Any:
        return self._engine

    def source_state(self, name: str) -> dict[str, Any]:
        """One source actor as the driver sees it: ``actor`` state, ``restarts``, ``failures``,
        ``outages`` (cheap: no statistics are computed)."""
        h = self._handles[name]
        return {"actor": h.state, "restarts": h.restarts, "failures": h.failures, "outages": h.outages}

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> None:
        self.budget = ray.get(self._engine.set_budget.remote(mj_per_sample, power_w), timeout=10)

    def shutdown(self) -> None:
        """Stop the sources, wait for in-flight decisions briefly, close the logs, kill actors."""
        stops = []
        for h in self._handles.values():
            try:
                stops.append(h.actor.stop.remote())
            except RayActorError:
                pass
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=3.0)
        deadline = time.monotonic() + 3.0
        while self._in_flight and time.monotonic() < deadline:
            self._collect(timeout_s=0.1)
        for h in self._handles.values():
            ray.kill(h.actor, no_restart=True)
        if self._engine is not None:
            ray.kill(self._engine, no_restart=True)
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
            self.sample_queue.put((sample, now))
        self._dispatch()
        n = self._collect(timeout_s=0.0)
        if now - self._last_health_ns > 500_000_000:
            self._refresh_health()
            self._last_health_ns = now
        return n

    def run(
        self,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
        on_tick: Callable[[LivePipeline], None] | None = None,
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

    # -- sources -----------------------------------------------------------------------------
    def _event(self, h: _SourceHandle | None, source: str, event: str, reason: str) -> None:
        """Note an outage event: counters, the live view and the decision log."""
        ev = OutageEvent(source, event, reason, time.monotonic_ns())
        self._log_outage(ev)
        if h is not None and event in ("actor_down", "disconnected"):
            h.outages += 1

    def _log_outage(self, ev: OutageEvent) -> None:
        self.outages.append(ev)
        self.outage_counts[ev.event] += 1
        log.warning("source %s: %s (%s)", ev.source, ev.event, ev.reason)
        for sink in (self.recorder, self.decision_log):
            if sink is None:
                continue
            try:
                sink.write_event(ev)
            except Exception as e:  # noqa: BLE001 - a full disk must not end the run; counted
                self.stats.count_drop("log", f"event_write:{type(e).__name__}")

    def _mark_down(self, h: _SourceHandle, error: BaseException) -> None:
        h.failures += 1
        if h.state != "restarting":
            self._event(h, h.name, "actor_down", type(error).__name__)
        h.state = "restarting"
        h.health_ref = None  # a call to the old incarnation would only fail again

    def _drain_sources(self, wait_s: float) -> None:
        for h in self._handles.values():
            if h.drain_ref is None:
                h.drain_ref = h.actor.drain.remote()
        refs = {h.drain_ref: h for h in self._handles.values()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=wait_s)
        for ref in ready:
            h = refs[ref]
            h.drain_ref = None
            try:
                messages = ray.get(ref)
            except RayActorError as e:  # ActorDiedError, ActorUnavailableError: down now, no waiting
                self._mark_down(h, e)
                continue
            except Exception as e:  # noqa: BLE001 - e.g. a message that does not unpickle
                self.stats.count_drop(h.name, f"drain_failed:{type(e).__name__}")
                continue
            now = time.monotonic_ns()
            for msg in messages:
                try:
                    self._take_message(h, msg, now)
                except Exception as e:  # noqa: BLE001 - one malformed message is dropped, counted
                    self.stats.count_drop(h.name, f"message_failed:{type(e).__name__}")

    def _take_message(self, h: _SourceHandle, msg: Any, now: int) -> None:
        incarnation = msg.meta.get("worker_started_ns")
        if h.incarnation is not None and incarnation != h.incarnation:
            h.restarts += 1
            self._event(h, h.name, "actor_up", f"restart {h.restarts}")
        elif h.state == "restarting":  # the same incarnation answers again (a transient outage)
            self._event(h, h.name, "actor_up", "reachable again")
        h.state = "alive"
        h.incarnation = incarnation
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
            try:
                ref = self._engine.process.remote(sample)
            except Exception as e:  # noqa: BLE001 - e.g. a payload Ray cannot serialise
                self.limiter.release()
                self._emit(failed_decision(sample, describe_error("dispatch", e)), sample)
                continue
            self._in_flight[ref] = (sample, now)

    def _collect(self, timeout_s: float) -> int:
        if not self._in_flight:
            return 0
        ready, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=timeout_s)
        for ref in ready:
            sample, sent_ns = self._in_flight.pop(ref)
            self.limiter.release()
            try:
                decision, stage_ms, error = ray.get(ref)
            except RayActorError as e:
                if self._engine_up:
                    self._engine_up = False
                    self._event(None, "engine", "actor_down", type(e).__name__)
                self._emit(failed_decision(sample, describe_error("engine_unavailable", e)), sample)
                continue
            except Exception as e:  # noqa: BLE001 - RayTaskError and anything else: this sample failed
                cause = getattr(e, "cause", None) or e
                self._emit(failed_decision(sample, describe_error("engine_call", cause)), sample)
                continue
            if not self._engine_up:
                self._engine_up = True
                self._event(None, "engine", "actor_up", "answering again")
            now = time.monotonic_ns()
            for stage, ms in stage_ms.items():
                self.stats.observe_latency(stage, ms)
            if error is None:
                self.stats.observe_latency("engine_call", (now - sent_ns) / 1e6)
                self.stats.observe_latency("end_to_end", (now - sample.timestamp_ns) / 1e6)
            self._emit(decision, sample)
        return len(ready)

    def _emit(self, decision: Decision, sample: Sample) -> None:
        """Count, keep (bounded), log and hand on one decision; a failed one feeds the breaker."""
        error = getattr(decision, "error", None)
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
        if self._status_ref is not None and ray.wait([self._status_ref], timeout=0)[0]:
            try:
                status = ray.get(self._status_ref)
                self.budget = status.get("budget", {})
                self.preprocess_drops = dict(status.get("preprocess_drops", {}))
            except Exception:  # noqa: BLE001 - the engine restarting; asked again next time
                pass
            self._status_ref = None
        if self._status_ref is None and self._engine is not None:
            self._status_ref = self._engine.status.remote()
        for h in self._handles.values():
            if h.health_ref is not None:
                done, _ = ray.wait([h.health_ref], timeout=0)
                if not done:
                    continue
                try:
                    health = ray.get(h.health_ref)
                except RayActorError as e:
                    self._mark_down(h, e)
                    health = None
                except Exception as e:  # noqa: BLE001
                    self.stats.count_drop(h.name, f"health_failed:{type(e).__name__}")
                    health = None
                h.health_ref = None
                if health is not None:
                    for ev in health.pop("events", []):
                        self._log_outage(ev)
                        if ev.event == "disconnected":
                            h.outages += 1
                    h.health = health
            h.health_ref = h.actor.health.remote()

    def snapshot(self) -> dict[str, Any]:
        """Everything the live view and the benchmark show, as plain data."""
        return {
            "sources": {
                name: {
                    **h.health,
                    "actor": h.state,
                    "actor_failures": h.failures,
                    "actor_restarts": h.restarts,
                    "outages": h.outages,
                }
                for name, h in self._handles.items()
            },
            "sync": self.sync.stats.to_dict(),
            "engine_queue": self.sample_queue.stats().to_dict(),
            "in_flight": self.limiter.in_flight,
            "budget": dict(self.budget),
            "decisions_total": self.decisions_total,
            "failed_decisions": self.failed_total,
            "received_total": self.received_total,
            "outage_events": dict(self.outage_counts),
            "preprocess_drops": dict(self.preprocess_drops),
            "recent_outages": [f"{e.source} {e.event} ({e.reason})" for e in list(self.outages)[-5:]],
            **self.stats.summary(),
        }
