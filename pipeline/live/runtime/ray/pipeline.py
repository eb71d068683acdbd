"""``runtime: ray``: sources and the engine as Ray actors, driven by the shared driver loop.

Plain classes hold the logic (:class:`~exitflow.pipeline.live.runtime.workers.SourceWorker`,
:class:`~exitflow.pipeline.live.runtime.workers.EngineWorker`); only
:func:`source_actor` / :func:`engine_actor` call ``ray.remote(...).options(...)`` with
``max_restarts`` and the resources that place them (e.g. ``{"gpu_node": 1}`` for the engine).
:class:`RayTransport` drains each source actor's bounded queue and calls the engine actor
asynchronously; everything else (clock correction, sync, queues, recording, outage events,
statistics) is :class:`~exitflow.pipeline.live.runtime.driver.PipelineDriver`, shared with the in-process
runtime (:mod:`exitflow.pipeline.live.runtime.local`). A source actor that dies is restarted by
Ray; the driver logs ``actor_down`` at its first failed call and ``actor_up`` at the first
message of the new incarnation.

A local Ray binds to loopback (``ray.node_ip_address``) with the dashboard off; a remote
``ray.address`` is probed first and refused within ``ray.connect_timeout_s`` with one line.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Hashable
from typing import Any, cast

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from exitflow.pipeline.config import SourceConfig, StreamConfig
from exitflow.pipeline.live.core.backoff import Backoff
from exitflow.pipeline.live.core.clocks import ClockProbe
from exitflow.pipeline.live.core.endpoints import SourceFactory
from exitflow.pipeline.live.core.failures import CircuitOpenError, LiveRuntimeError
from exitflow.pipeline.live.runtime.driver import PipelineDriver
from exitflow.pipeline.live.runtime.ray.connect import probe_ray_address, start_ray
from exitflow.pipeline.live.runtime.ray.placement import EdgeSourceWorker
from exitflow.pipeline.live.runtime.ray.workers import RayEngineWorker, RaySourceWorker
from exitflow.pipeline.live.runtime.transport import EngineDown, EngineResult, SourceDown, Transport
from exitflow.pipeline.live.runtime.workers import EngineFactory
from exitflow.pipeline.messages import Sample, SensorMessage

log = logging.getLogger(__name__)

ENGINE_ACTOR_NAME = "exitflow-engine"
__all__ = [
    "ENGINE_ACTOR_NAME",
    "CircuitOpenError",
    "LiveRuntimeError",
    "RayPipeline",
    "RayTransport",
    "engine_actor",
    "probe_ray_address",
    "source_actor",
    "start_ray",
]


# -- Ray wrapping ----------------------------------------------------------------------------
def source_actor(spec: SourceConfig | SourceFactory, stream: StreamConfig, name: str, **options: Any) -> Any:
    """A restartable Ray actor running :class:`SourceWorker` (placed by ``spec.resources``).

    With ``stream.preprocess_at_source`` it is an :class:`EdgeSourceWorker` (frames reduced to the
    model's size on the sensor's node (docs/service.md).
    """
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
        ray.remote(EdgeSourceWorker if stream.preprocess_at_source else RaySourceWorker)
        .options(**opts)
        .remote(spec, cfg.queue_size, cfg.queue_policy, stream.audio_rate_hz, backoff)
    )


def engine_actor(factory: EngineFactory | str, stream: StreamConfig, cfg: Any = None, **options: Any) -> Any:
    """The engine as a named Ray actor (``exitflow-engine``), placed by ``stream.engine_resources``.
    Several pipelines share one batched engine through
    :class:`~exitflow.pipeline.live.runtime.ray.service.InferenceService` instead."""
    opts: dict[str, Any] = {
        "max_restarts": stream.max_restarts,
        "num_cpus": stream.engine_num_cpus,
        "num_gpus": stream.engine_num_gpus,
        "resources": dict(stream.engine_resources),
        "name": ENGINE_ACTOR_NAME,
    }
    opts.update(options)
    return ray.remote(RayEngineWorker).options(**opts).remote(factory, cfg, True)


# -- the transport ---------------------------------------------------------------------------
DRAIN_WAIT_S = 0.05  # a source actor's drain waits this long for a message (long poll)


def _down(error: RayActorError, cls: type[Exception]) -> Exception:
    out = cls(str(error).splitlines()[0] if str(error) else type(error).__name__)
    out.__cause__ = error
    return out


class RayTransport(Transport):
    """Sources and engine as Ray actors (:func:`source_actor`, :func:`engine_actor`), drained and
    called asynchronously; a dead actor comes back as :class:`SourceDown` / :class:`EngineDown`.

    Args:
        stream: The ``stream`` config section.
        engine_factory: Zero-argument engine factory, or a ``stream.engine`` name (called with ``cfg``
            inside the engine actor).
        cfg: Whole config, handed to a factory given by name.
        engine: An engine actor handle to share (several pipelines, one engine) instead of creating one;
            it is not killed at :meth:`close`.
    """

    kind = "ray"

    def __init__(self, stream: StreamConfig, engine_factory: EngineFactory | str, cfg: Any = None,
                 engine: Any = None):
        self.stream = stream
        self._engine_factory = engine_factory
        self._cfg = cfg
        self.engine = engine
        self._own_engine = engine is None
        self.actors: dict[str, Any] = {}
        self._drain_refs: dict[str, Any] = {}
        self._health_refs: dict[str, Any] = {}
        self._status_ref: Any = None
        self._in_flight: dict[Any, None] = {}  # ObjectRefs of an engine actor, futures of the Serve service
        self._wake = threading.Event()  # set when a service future or a watched drain completes

    def start(self, specs: dict[str, Any], source_options: dict[str, dict[str, Any]] | None = None,
              engine_options: dict[str, Any] | None = None) -> None:
        if self.engine is None:
            self.engine = engine_actor(self._engine_factory, self.stream, self._cfg, **(engine_options or {}))
        for name, spec in specs.items():
            # two threads: health and clock probes are answered while a long-poll drain waits
            options = {"max_concurrency": 2, **(source_options or {}).get(name, {})}
            self.actors[name] = source_actor(spec, self.stream, name, **options)

    def wait_ready(self, timeout_s: float) -> dict[str, str]:
        refs = {name: actor.node_id.remote() for name, actor in self.actors.items()}
        if self._own_engine:
            refs["engine"] = self.engine.node_id.remote()
        try:
            return dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s), strict=True))
        except GetTimeoutError as e:
            raise LiveRuntimeError(f"actors not ready after {timeout_s} s; is the cluster short of resources?") from e
        except RayActorError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            cause = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else repr(e))
            raise LiveRuntimeError(f"an actor failed to start: {cause}") from e

    @property
    def _serve_engine(self) -> bool:
        """The engine answers with futures (the Ray Serve service), not ObjectRefs (an engine actor)."""
        return self.engine is not None and not isinstance(self.engine, ray.actor.ActorHandle)

    def _wake_up(self, _: Any) -> None:
        self._wake.set()

    def poll_sources(self, wait_s: float) -> list[tuple[str, list[SensorMessage] | BaseException]]:
        serve_engine = self._serve_engine
        for name, actor in self.actors.items():
            if name not in self._drain_refs:
                ref = self._drain_refs[name] = actor.poll.remote(256, DRAIN_WAIT_S)
                if serve_engine:  # ray.wait cannot wait on a future: both wake one event instead
                    ref.future().add_done_callback(self._wake_up)
        by_ref = {ref: name for name, ref in self._drain_refs.items()}
        # wake on the first message batch or decision, then take every batch that is in
        if serve_engine:
            self._wake.clear()  # before looking: a completion from now on sets it again
            if not ray.wait(list(by_ref), timeout=0)[0] and not any(f.done() for f in self._in_flight):
                self._wake.wait(wait_s)
        else:
            ray.wait([*by_ref, *self._in_flight], num_returns=1, timeout=wait_s)
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        out: list[tuple[str, list[SensorMessage] | BaseException]] = []
        for ref in ready:
            name = by_ref[ref]
            del self._drain_refs[name]
            try:
                out.append((name, ray.get(ref)))
            except RayActorError as e:  # ActorDiedError, ActorUnavailableError: down now, no waiting
                out.append((name, _down(e, SourceDown)))
            except Exception as e:  # noqa: BLE001 - e.g. a message that does not unpickle
                out.append((name, e))
        return out

    def clock_probe(self, name: str, timeout_s: float) -> ClockProbe | None:
        sent_ns = time.monotonic_ns()
        try:
            source_ns = ray.get(self.actors[name].clock_ns.remote(), timeout=timeout_s)
        except GetTimeoutError:
            return None
        except RayActorError as e:
            raise _down(e, SourceDown) from e
        return ClockProbe(sent_ns, int(source_ns), time.monotonic_ns())

    def poll_health(self) -> list[tuple[str, dict[str, Any] | BaseException]]:
        out: list[tuple[str, dict[str, Any] | BaseException]] = []
        for name, actor in self.actors.items():
            ref = self._health_refs.get(name)
            if ref is not None:
                if not ray.wait([ref], timeout=0)[0]:
                    continue
                del self._health_refs[name]
                try:
                    out.append((name, ray.get(ref)))
                except RayActorError as e:
                    out.append((name, _down(e, SourceDown)))
                    continue  # a call to the old incarnation would only fail again
                except Exception as e:  # noqa: BLE001
                    out.append((name, e))
            self._health_refs[name] = actor.health.remote()
        return out

    def submit(self, sample: Sample) -> Hashable:
        ref = self.engine.process.remote(sample)
        if isinstance(ref, concurrent.futures.Future):
            ref.add_done_callback(self._wake_up)
        self._in_flight[ref] = None
        return cast(Hashable, ref)

    def collect(self, timeout_s: float) -> list[tuple[Hashable, EngineResult | BaseException]]:
        if not self._in_flight:
            return []
        if self._serve_engine:
            concurrent.futures.wait(list(self._in_flight), timeout=timeout_s)
            ready = [f for f in self._in_flight if f.done()]
        else:
            ready, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=timeout_s)
        out: list[tuple[Hashable, EngineResult | BaseException]] = []
        for ref in ready:
            del self._in_flight[ref]
            try:
                out.append((ref, _result(ref)))
            except RayActorError as e:
                out.append((ref, _down(e, EngineDown)))
            except Exception as e:  # noqa: BLE001 - RayTaskError and anything else: this sample failed
                out.append((ref, getattr(e, "cause", None) or e))
        return out

    def engine_status(self) -> dict[str, Any] | None:
        status = None
        if self._status_ref is not None and _done(self._status_ref):
            try:
                status = _result(self._status_ref)
            except Exception:  # noqa: BLE001 - the engine restarting; asked again next time
                status = None
            self._status_ref = None
        if self._status_ref is None and self.engine is not None:
            self._status_ref = self.engine.status.remote()
        return status

    def set_budget(self, mj_per_sample: float | None, power_w: float | None) -> dict[str, Any]:
        # the service re-deploys its user_config (every replica reconfigured in place): allow it longer
        return cast(dict[str, Any], _result(self.engine.set_budget.remote(mj_per_sample, power_w), timeout_s=30))

    def stop_sources(self, timeout_s: float) -> None:
        stops = []
        for actor in self.actors.values():
            try:
                stops.append(actor.stop.remote())
            except RayActorError:
                pass
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=timeout_s)

    def close(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        if self.engine is not None and self._own_engine:
            ray.kill(self.engine, no_restart=True)


def _done(ref: Any) -> bool:
    """Whether an ObjectRef or a future has its result."""
    if isinstance(ref, concurrent.futures.Future):
        return ref.done()
    return bool(ray.wait([ref], timeout=0)[0])


def _result(ref: Any, timeout_s: float | None = None) -> Any:
    """The result of an ObjectRef (an engine actor's) or a future (the Serve service's)."""
    if isinstance(ref, concurrent.futures.Future):
        return ref.result(timeout_s)
    return ray.get(ref, timeout=timeout_s)


class RayPipeline(PipelineDriver):
    """The driver on Ray (``runtime: ray``): :class:`PipelineDriver` over a :class:`RayTransport`.

    Args:
        stream: The ``stream`` config section.
        engine_factory: Zero-argument engine factory, or a ``stream.engine`` name (see
            :func:`~exitflow.pipeline.live.runtime.workers.resolve_engine_factory`; called with ``cfg``
            inside the engine actor).
        cfg: Whole config, handed to a factory given by name.
        sources: Name -> factory to use instead of ``stream.sources`` (tests, custom sensors);
            each value may also be a SourceConfig.
        engine: An existing engine actor to share instead of creating one.
        **kwargs: ``recorder``, ``on_decision``, ``decision_log``, ``keep_decisions``,
            ``keep_received`` (see :class:`PipelineDriver`).
    """

    def __init__(self, stream: StreamConfig, engine_factory: EngineFactory | str, cfg: Any = None,
                 sources: dict[str, SourceConfig | SourceFactory] | None = None, engine: Any = None,
                 **kwargs: Any):
        super().__init__(stream, RayTransport(stream, engine_factory, cfg, engine=engine), sources=sources, **kwargs)
        self.ray_transport = cast(RayTransport, self.transport)

    @property
    def source_actors(self) -> dict[str, Any]:
        return dict(self.ray_transport.actors)

    @property
    def engine(self) -> Any:
        return self.ray_transport.engine
