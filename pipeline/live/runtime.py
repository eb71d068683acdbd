"""Stage 3 of the live data flow: run sources and the engine as Ray actors, driven by one loop.

Plain classes hold the logic (:class:`~pipeline.live_workers.SourceWorker`,
:class:`~pipeline.live_workers.EngineWorker`); only
:func:`source_actor` / :func:`engine_actor` call ``ray.remote(...).options(...)`` with
``max_restarts`` and the resources that place them (e.g. ``{"gpu_node": 1}`` for the engine).
The driver (:class:`LivePipeline`) drains each source actor's bounded queue, records raw
messages (MCAP), aligns them (:class:`~pipeline.sync.Synchronizer`), queues samples on a
bounded edge and keeps at most ``max_in_flight`` samples inside the engine. A source actor
that dies is restarted by Ray; meanwhile its calls fail, the driver marks it ``restarting`` and
the other modalities keep flowing (the sync fallback clock marks the absent one missing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from exitflow.pipeline.config import RayConfig, SourceConfig, StreamConfig
from exitflow.pipeline.live.queues import BoundedQueue, Empty, InFlightLimiter
from exitflow.pipeline.live.recording import RecordingWriter
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
from ray.exceptions import GetTimeoutError, RayActorError

log = logging.getLogger(__name__)

ENGINE_ACTOR_NAME = "exitflow-engine"
__all__ = [
    "ENGINE_ACTOR_NAME",
    "LivePipeline",
    "LiveRuntimeError",
    "engine_actor",
    "source_actor",
    "start_ray",
]


# -- Ray wrapping ----------------------------------------------------------------------------
def start_ray(cfg: RayConfig) -> bool:
    """``ray.init`` (local unless ``cfg.address``), quiet and dashboard-free; True if it started Ray."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "namespace": cfg.namespace,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if cfg.address:
        kwargs["address"] = cfg.address
    else:
        kwargs["num_cpus"] = cfg.num_cpus
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as e:
        raise LiveRuntimeError(f"cannot start/reach Ray (address={cfg.address!r}): {e}") from e
    return True


def source_actor(spec: SourceConfig | SourceFactory, stream: StreamConfig, name: str, **options: Any) -> Any:
    """A restartable Ray actor running :class:`SourceWorker` (placed by ``spec.resources``)."""
    cfg = spec if isinstance(spec, SourceConfig) else SourceConfig(name=name)  # placement defaults
    opts: dict[str, Any] = {
        "max_restarts": stream.max_restarts,
        "max_task_retries": 0,
        "num_cpus": cfg.num_cpus,
        "resources": dict(cfg.resources),
        "name": f"exitflow-source-{name}",
    }
    opts.update(options)
    backoff = Backoff(
        stream.reconnect_initial_s,
        max(stream.reconnect_max_s, stream.reconnect_initial_s),
        max_attempts=stream.max_reconnects,
    )
    return (
        ray.remote(SourceWorker)
        .options(**opts)
        .remote(spec, cfg.queue_size, cfg.queue_policy, stream.audio_rate_hz, backoff)
    )


def engine_actor(factory: EngineFactory | str, stream: StreamConfig, cfg: Any = None, **options: Any) -> Any:
    """The engine as a named Ray actor (``exitflow-engine``), placed by ``stream.engine_resources``."""
    opts: dict[str, Any] = {
        "max_restarts": stream.max_restarts,
        "num_cpus": stream.engine_num_cpus,
        "num_gpus": stream.engine_num_gpus,
        "resources": dict(stream.engine_resources),
        "name": ENGINE_ACTOR_NAME,
    }
    opts.update(options)
    return ray.remote(EngineWorker).options(**opts).remote(factory, cfg, True)


# -- the driver ------------------------------------------------------------------------------
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


class LivePipeline:
    """Sources -> sync -> bounded queue -> engine, with recording and live statistics.

    Args:
        stream: The ``stream`` config section.
        engine_factory: Zero-argument engine factory, or a ``"module:function"`` path (called
            with ``cfg`` inside the engine actor).
        cfg: Whole config, handed to a factory given by path.
        sources: Name -> factory to use instead of ``stream.sources`` (tests, custom sensors);
            each value may also be a SourceConfig.
        recorder: Where raw messages and decisions are written, or None.
        on_decision: Called with every decision on the driver.
    """

    def __init__(
        self,
        stream: StreamConfig,
        engine_factory: EngineFactory | str,
        cfg: Any = None,
        sources: dict[str, SourceConfig | SourceFactory] | None = None,
        recorder: RecordingWriter | None = None,
        on_decision: Callable[[Decision], None] | None = None,
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
        self.stats = LiveStats()
        self.decisions: list[Decision] = []
        self.received: list[tuple[str, int, int]] = []  # (source, seq, timestamp_ns) seen by the driver
        self._specs = specs
        self._engine_factory = engine_factory
        self._cfg = cfg
        self._handles: dict[str, _SourceHandle] = {}
        self._engine: Any = None
        self._in_flight: dict[Any, tuple[Sample, int]] = {}
        self._last_health_ns = 0
        self.budget: dict[str, Any] = {}
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

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> None:
        self.budget = ray.get(self._engine.set_budget.remote(mj_per_sample, power_w), timeout=10)

    def shutdown(self) -> None:
        """Stop the sources, wait for in-flight decisions briefly, close the recording, kill actors."""
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
        """Loop :meth:`step` until ``duration_s`` passes, ``stop`` is set or Ctrl-C."""
        end = None if duration_s is None else time.monotonic() + duration_s
        last_tick = 0.0
        while (end is None or time.monotonic() < end) and not (stop and stop.is_set()):
            self.step()
            if on_tick is not None and time.monotonic() - last_tick >= tick_s:
                on_tick(self)
                last_tick = time.monotonic()

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
            except RayActorError as e:
                h.state, h.failures = "restarting", h.failures + 1
                log.warning("source actor %s unavailable (%s); Ray restarts it", h.name, type(e).__name__)
                continue
            h.state = "alive"
            now = time.monotonic_ns()
            for msg in messages:
                incarnation = msg.meta.get("worker_started_ns")
                if h.incarnation is not None and incarnation != h.incarnation:
                    h.restarts += 1
                    log.warning("source actor %s restarted (restart %d)", h.name, h.restarts)
                h.incarnation = incarnation
                self.received.append((msg.source, msg.seq, msg.timestamp_ns))
                self.stats.observe_latency("source", (now - msg.timestamp_ns) / 1e6)
                self.stats.count_message(msg.source)
                if self.recorder is not None:
                    self.recorder.write_message(msg)
                if not self.sync.push(msg):
                    self.stats.count_drop(msg.source, "sync_refused")

    def _dispatch(self) -> None:
        while self.limiter.try_acquire():
            try:
                sample, emitted_ns = self.sample_queue.get_nowait()
            except Empty:
                self.limiter.release()
                return
            now = time.monotonic_ns()
            self.stats.observe_latency("queue", (now - emitted_ns) / 1e6)
            self._in_flight[self._engine.process.remote(sample)] = (sample, now)

    def _collect(self, timeout_s: float) -> int:
        if not self._in_flight:
            return 0
        ready, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=timeout_s)
        for ref in ready:
            sample, sent_ns = self._in_flight.pop(ref)
            self.limiter.release()
            try:
                decision, stage_ms, error = ray.get(ref)
            except (RayActorError, GetTimeoutError) as e:
                self.stats.count_drop("engine", f"engine_unavailable:{type(e).__name__}")
                continue
            if decision is None:
                self.stats.count_drop("engine", f"sample_failed:{(error or '').split(':')[0]}")
                self.stats.last_engine_error = error
                continue
            now = time.monotonic_ns()
            for stage, ms in stage_ms.items():
                self.stats.observe_latency(stage, ms)
            self.stats.observe_latency("engine_call", (now - sent_ns) / 1e6)
            self.stats.observe_latency("end_to_end", (now - sample.timestamp_ns) / 1e6)
            self.stats.observe_decision(decision)
            self.decisions.append(decision)
            if self.recorder is not None:
                self.recorder.write_decision(decision, sample.timestamp_ns)
            if self.on_decision is not None:
                self.on_decision(decision)
        return len(ready)

    def _refresh_health(self) -> None:
        if self._status_ref is not None and ray.wait([self._status_ref], timeout=0)[0]:
            try:
                self.budget = ray.get(self._status_ref).get("budget", {})
            except RayActorError:
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
                    h.health = ray.get(h.health_ref)
                    h.state = "alive"
                except RayActorError:
                    h.state = "restarting"
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
                }
                for name, h in self._handles.items()
            },
            "sync": self.sync.stats.to_dict(),
            "engine_queue": self.sample_queue.stats().to_dict(),
            "in_flight": self.limiter.in_flight,
            "budget": dict(self.budget),
            **self.stats.summary(),
        }
