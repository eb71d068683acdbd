"""The inference service on Ray Serve: one deployment per model bundle, batching samples across robots.

Any number of pipelines (robots, drivers, benchmarks) call one Serve application
(``service.name``) whose deployment is named after the model bundle it serves
(:func:`~exitflow.pipeline.live.runtime.ray.deployment.deployment_name`). Each replica holds one
:class:`~exitflow.pipeline.live.runtime.ray.replica.ServiceReplica` (the deployment:
:mod:`~exitflow.pipeline.live.runtime.ray.deployment`). This module is the client,
:class:`InferenceService`:

- per-sample calls go through the replica's ``@serve.batch``; several samples of this process
  that are ready together (a driver serving several robots) are **gathered into one call**
  (:class:`~exitflow.pipeline.live.runtime.gather.Gatherer`, ``gather``); :meth:`submit_many` sends
  a micro-batch the caller made itself. A micro-batch travels as a
  :class:`~exitflow.pipeline.live.core.sample_batch.SampleBatch` (one array per modality) through
  Ray's object store;
- ``max_queued_requests`` at the caller (more raises Serve's back-pressure error, answered as a
  sample shed with reason ``service_busy``);
- :meth:`stats` sums every replica's status (and lists each);
- :meth:`set_budget_now` changes the budget of every running replica in place (``user_config`` +
  ``reconfigure``, the same code version: no replica is replaced).

No HTTP proxy is started (``proxy_location="Disabled"``). Serve's throughput-optimized data
plane (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``) is on unless the environment says ``0``: the
package's ``__init__`` sets it before ``ray.serve`` is imported (Serve reads it once, at import,
in this process and in the Ray processes it starts); a program that imports ``ray.serve`` itself
first must set it before that. In that mode a handle must be called from a running asyncio loop:
:class:`InferenceService` keeps one loop on a daemon thread per process and hands blocking
callers ``concurrent.futures.Future`` objects; asyncio code awaits :meth:`InferenceService.decide_aio`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import ray
from ray import serve
from ray.serve.exceptions import BackPressureError

from exitflow.pipeline.config import ServiceConfig
from exitflow.pipeline.live.core.failures import LiveRuntimeError
from exitflow.pipeline.live.core.sample_batch import SampleBatch
from exitflow.pipeline.live.runtime.gather import BatchNotSent, Gatherer, GatherSettings
from exitflow.pipeline.live.runtime.ray.deployment import (
    ServiceInit,
    bind_service,
    deployment_name,
    deployment_options,
)
from exitflow.pipeline.live.runtime.ray.replica import Result, ShedDecision, merge_status
from exitflow.pipeline.live.runtime.workers import EngineFactory
from exitflow.pipeline.messages import Decision, Sample

__all__ = ["GatherSettings", "InferenceService", "deployment_name", "deployment_options", "service_shutdown"]

STATUS_ROUNDS = 4  # rounds of status calls to reach every replica (Serve routes each call to one)


class _ClientLoop:
    """The asyncio loop (on a daemon thread) every Serve call of this process runs on."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="exitflow-serve-client", daemon=True).start()
                cls._loop = loop
            return cls._loop


class _Call:
    """``service.NAME.remote(*args)`` -> a ``concurrent.futures.Future`` (the engine actor's interface)."""

    def __init__(self, submit: Any):
        self._submit = submit

    def remote(self, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        return cast(concurrent.futures.Future, self._submit(*args, **kwargs))


class InferenceService:
    """A client of the service's Serve application (use :meth:`start` or :meth:`connect`).

    Blocking code uses :meth:`submit` / :meth:`submit_many` (futures) or :meth:`decide` /
    :meth:`decide_many`; asyncio code awaits :meth:`decide_aio` / :meth:`decide_many_aio`. The
    live runtime takes the object in place of an engine actor: ``process.remote(sample)``,
    ``status.remote()``, ``set_budget.remote(mj, w)`` and ``node_id.remote()`` return futures.

    Args:
        app: The Serve application's name (``service.name``).
        deployment: The deployment's name (:func:`deployment_name`).
        client: Who calls (e.g. a robot's name), for per-client fairness when shedding.
        gather: How this process gathers per-sample calls into micro-batches (the first client of
            an application in a process sets it; :meth:`for_client` shares it).
        via_store: Micro-batches travel through Ray's object store (else inside the request).
    """

    _gatherers: dict[tuple[str, str], Gatherer] = {}  # per application and deployment, on the client loop

    def __init__(self, app: str, deployment: str, client: str = "", gather: GatherSettings | None = None,
                 via_store: bool = True):
        self.app, self.deployment, self.client = app, deployment, client
        self.gather = gather or GatherSettings()
        self.via_store = via_store
        self._loop = _ClientLoop.get()
        self._handle: Any = None
        self.process = _Call(self.submit)
        self.status = _Call(lambda: self._run(self.stats_aio()))
        self.node_id = _Call(lambda: self.call("node_id"))
        self.set_budget = _Call(lambda mj=None, w=None: self._loop_free(self.set_budget_now, mj, w))

    # -- start / connect ------------------------------------------------------------------------
    @classmethod
    def start(cls, factory: EngineFactory | str, cfg: Any = None, service: ServiceConfig | None = None,
              client: str = "", gather: GatherSettings | None = None, **ray_actor_options: Any) -> InferenceService:
        """Deploy the service (returns when every replica has built its engine), or join it when an
        application of that name already runs.

        Args:
            factory: The engine factory, or a ``stream.engine`` name called with ``cfg`` in each replica.
            cfg: The whole config; its ``service`` section is used unless ``service`` is given.
            service: The ``service`` section.
            client: This caller's name (per-client fairness).
            gather: Micro-batches of this process (default: ``service.gather`` and ``service.gather_ms``
                where the section has them, else on and 2 ms; at most ``service.max_batch_size``
                samples a call).
            **ray_actor_options: Ray actor options for the replicas over the section's
                (e.g. ``scheduling_strategy``).
        """
        service = service or getattr(cfg, "service", None) or ServiceConfig()
        name = deployment_name(factory, cfg)
        if not _running(service.name):
            serve.start(proxy_location="Disabled")
            init = ServiceInit(factory, cfg, service, ray_actor_options=dict(ray_actor_options))
            serve.run(bind_service(init, name), name=service.name, route_prefix=None)
        gather = gather or GatherSettings(enabled=bool(getattr(service, "gather", True)),  # fields to come
                                          gather_ms=float(getattr(service, "gather_ms", GatherSettings.gather_ms)),
                                          max_batch_size=service.max_batch_size)
        return cls.connect(service.name, client=client, gather=gather)

    @classmethod
    def connect(cls, app: str = "exitflow-service", client: str = "", timeout_s: float = 10.0,
                gather: GatherSettings | None = None) -> InferenceService:
        """The running service ``app``.

        Raises:
            LiveRuntimeError: when no such application runs within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            status = _app_status(app)
            if status is not None and status.deployments:
                return cls(app, next(iter(status.deployments)), client, gather)
            if time.monotonic() > deadline:
                raise LiveRuntimeError(f"no inference service {app!r} runs on Ray Serve in this namespace; "
                                       "start one (InferenceService.start)")
            time.sleep(0.2)

    def for_client(self, client: str) -> InferenceService:
        """The same service, calling as ``client`` (e.g. one robot of a fleet driven from this
        process); its samples are gathered with the other clients' of this process."""
        return InferenceService(self.app, self.deployment, client, self.gather, self.via_store)

    # -- calls ----------------------------------------------------------------------------------
    def _get_handle(self) -> Any:  # on the loop's thread only
        if self._handle is None:
            self._handle = serve.get_deployment_handle(self.deployment, app_name=self.app)
        return self._handle

    async def _call(self, method: str, *args: Any) -> Any:
        return await getattr(self._get_handle(), method).remote(*args)

    def call(self, method: str, *args: Any) -> concurrent.futures.Future:
        """A future of ``method(*args)`` on one replica (``status``, ``node_id``, ``package_path``)."""
        return self._run(self._call(method, *args))

    def _run(self, coro: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _loop_free(self, fn: Any, *args: Any) -> concurrent.futures.Future:
        """``fn(*args)`` on a plain thread (it blocks on Serve's control plane), as a future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

        threading.Thread(target=run, daemon=True).start()
        return fut

    def _gatherer(self) -> Gatherer:  # on the loop's thread only
        key = (self.app, self.deployment)
        gatherer = self._gatherers.get(key)
        if gatherer is None:
            gatherer = self._gatherers[key] = Gatherer(self.decide_one_aio, self._send_many, self.gather)
        return gatherer

    async def decide_aio(self, sample: Sample) -> Result:
        """``(decision, stage_ms, error)``, in a call shared with this process's other waiting samples
        when gathering is on; a sample Serve refuses (back-pressure) comes back shed."""
        if not self.gather.enabled:
            return await self.decide_one_aio(sample, self.client)
        return cast(Result, await self._gatherer().submit(sample, self.client))

    async def decide_one_aio(self, sample: Sample, client: str | None = None) -> Result:
        """One sample, one call (through the replica's ``@serve.batch``)."""
        try:
            return cast(Result, await self._call("process", sample, self.client if client is None else client))
        except BackPressureError:
            return _busy(sample)

    async def decide_many_aio(self, samples: Sequence[Sample], via_store: bool | None = None) -> list[Result]:
        """One call carrying ``samples`` (a :class:`SampleBatch`), run as one batch in one replica.

        With ``via_store`` (default: the client's) the batch goes through Ray's object store (one copy
        in, zero copies out on the replica's node: the request carries only a reference) instead of
        inside the request.
        """
        return await self._send_many(samples, [self.client] * len(samples), via_store)

    async def _send_many(self, samples: Sequence[Sample], clients: Sequence[str],
                         via_store: bool | None = None) -> list[Result]:
        try:
            batch = SampleBatch.pack(samples, clients)
            payload: Any = [ray.put(batch)] if (self.via_store if via_store is None else via_store) else batch
        except Exception as e:  # e.g. a payload that does not serialise: nothing was sent
            raise BatchNotSent(f"{type(e).__name__}: {e}") from e
        try:
            return cast(list[Result], await self._call("process_many", payload))
        except BackPressureError:
            return [_busy(s) for s in samples]

    async def stats_aio(self) -> dict[str, Any]:
        """Every replica's status summed (:func:`~exitflow.pipeline.live.runtime.ray.replica.merge_status`),
        with ``replicas`` (id -> status), ``replicas_reached`` and ``replicas_running``.

        Serve routes each call to one replica: status calls go out in rounds, as many at once as
        replicas are known to run, until every replica answered (or :data:`STATUS_ROUNDS` passed).
        """
        seen: dict[str, dict[str, Any]] = {}
        running = 1
        for _ in range(STATUS_ROUNDS):
            calls = 1 if not seen else 2 * (running - len(seen))  # more than missing: routing is random
            replies = await asyncio.gather(*[self._call("status") for _ in range(calls)])
            for reply in replies:
                seen[str(reply.get("replica", len(seen)))] = reply
                running = max(running, int(reply.get("replicas_running", 1)))
            if len(seen) >= running:
                break
        return {**merge_status(list(seen.values())), "replicas": seen, "replicas_reached": len(seen),
                "replicas_running": running}

    def run(self, make_coro: Any, timeout_s: float | None = None) -> Any:
        """Run ``make_coro()`` on this process's client loop and wait for its result (e.g. an
        asyncio benchmark client calling :meth:`decide_aio`)."""
        async def wrapped() -> Any:
            return await make_coro()

        return self._run(wrapped()).result(timeout_s)

    def submit(self, sample: Sample) -> concurrent.futures.Future:
        """A future of ``(decision, stage_ms, error)``."""
        return self._run(self.decide_aio(sample))

    def submit_many(self, samples: list[Sample]) -> concurrent.futures.Future:
        """A future of one ``(decision, stage_ms, error)`` per sample (one call for them all)."""
        return self._run(self.decide_many_aio(samples))

    def decide(self, sample: Sample, timeout_s: float | None = 60.0) -> Decision:
        """The sample's decision (a FailedDecision with ``error`` set when it failed or was shed)."""
        return cast(Decision, self.submit(sample).result(timeout_s)[0])

    def decide_many(self, samples: list[Sample], timeout_s: float | None = 60.0) -> list[Decision]:
        return [r[0] for r in self.submit_many(samples).result(timeout_s)]

    def gather_stats(self) -> dict[str, Any]:
        """This process's gathering: calls, samples, samples per call, largest call."""
        gatherer = self._gatherers.get((self.app, self.deployment))
        return gatherer.stats() if gatherer is not None else {}

    def set_budget_now(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Change every replica's budget in place: the deployment is re-deployed with the same code
        version and a new ``user_config``, and Serve calls ``reconfigure`` on the running replicas
        (and gives it to any replica it starts later); no replica is replaced.

        Raises:
            LiveRuntimeError: when the replicas' engine has no budget to change.
        """
        init = cast(ServiceInit, self._run(self._call("get_init")).result(30))
        budget = None if mj_per_sample is None and power_w is None else {"mj_per_sample": mj_per_sample,
                                                                          "power_w": power_w}
        serve.run(bind_service(init, self.deployment, budget), name=self.app, route_prefix=None)
        refused = {r.get("budget_error") for r in self.stats()["replicas"].values()} - {None}
        if refused:
            raise LiveRuntimeError(f"the service's replicas refused the budget: {'; '.join(sorted(refused))}")
        return {"mj_per_sample": mj_per_sample, "power_w": power_w}

    def wait_ready(self, timeout_s: float = 120.0) -> list[str]:
        """Node ids of the replicas that answer (the deployment is up when :meth:`start` returns)."""
        return [self.node_id.remote().result(timeout_s)]

    def stats(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The service's status, summed over its replicas (:meth:`stats_aio`): ``batches``, ``items``,
        ``batch_size_mean``, ``busy_s``, ``shed``, ``capacity_sps``, ``overloaded``, and ``replicas``."""
        return cast(dict[str, Any], self.status.remote().result(timeout_s))

    def shutdown(self) -> None:
        """Delete the application (in-flight requests drain first); the service ends for every user."""
        self._gatherers.pop((self.app, self.deployment), None)
        serve.delete(self.app)


def service_shutdown(timeout_s: float = 60.0, stop_ray: bool = True) -> None:
    """Shut Serve down in this Ray (every application, the controller; in-flight requests drain),
    then Ray (``stop_ray``). Serve's routers of this process close on the client loop they run on."""
    InferenceService._gatherers.clear()
    if ray.is_initialized():
        try:
            asyncio.run_coroutine_threadsafe(serve.shutdown_async(), _ClientLoop.get()).result(timeout_s)
        finally:
            if stop_ray:
                ray.shutdown()


def _busy(sample: Sample) -> Result:
    shed = ShedDecision.of(sample, "service_busy")
    return shed, {}, shed.error


def _app_status(app: str) -> Any:
    try:
        return serve.status().applications.get(app)
    except Exception:  # noqa: BLE001 - Serve not started in this cluster yet
        return None


def _running(app: str) -> bool:
    status = _app_status(app)
    return status is not None and str(status.status).endswith("RUNNING")
