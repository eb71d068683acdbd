"""The inference service on Ray Serve: one deployment per model bundle, batching samples across robots.

Any number of pipelines (robots, drivers, benchmarks) call one Serve application
(``service.name``) whose deployment is named after the model bundle it serves
(:func:`deployment_name`). Each replica holds one
:class:`~exitflow.pipeline.live.runtime.ray.replica.ServiceReplica`: a
:class:`~exitflow.pipeline.inference.batch_engine.BatchEngine` in which every sample keeps its own
exits and fails alone, batched preprocessing, shedding by policy and a capacity meter. Serve adds
what the home-made actor pool before it lacked:

- ``@serve.batch`` gathers per-sample calls (``service.max_batch_size``, ``service.batch_wait_ms``);
  :meth:`InferenceService.submit_many` sends a client's micro-batch as ONE call, run as one batch;
- ``max_ongoing_requests`` per replica and ``max_queued_requests`` at the caller (more raises
  Serve's back-pressure error, answered as a sample shed with reason ``service_busy``);
- ``num_replicas``, or autoscaling between ``num_replicas`` and ``max_replicas`` on
  ``target_ongoing_requests``; replicas placed by ``num_cpus`` / ``num_gpus`` / ``resources``;
- health checks (:meth:`ServiceDeployment.check_health`: a replica whose batches keep failing as a
  whole is replaced), graceful shutdown (in-flight requests drain for up to
  ``graceful_shutdown_timeout_s``);
- ``reconfigure``: the budget and the batch settings travel in the deployment's ``user_config``, so
  :meth:`InferenceService.set_budget` reaches every replica, and a replica that Serve restarts
  comes back with the budget in force.

No HTTP proxy is started (``proxy_location="Disabled"``): robots call from Python through a
:class:`~ray.serve.handle.DeploymentHandle`. Serve's throughput-optimized data plane
(``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: requests over gRPC, user code on the replica's event loop,
no per-request log line) is on unless the environment says ``0``: Serve reads the variable once,
when ``ray.serve`` is first imported, in this process and in every process of a Ray this process
starts (they inherit its environment); on a cluster started with ``ray start``, export it there
too. In that mode a handle must be called from a running asyncio loop: :class:`InferenceService`
keeps one loop on a daemon thread per process and hands blocking callers
``concurrent.futures.Future`` objects; asyncio code awaits :meth:`InferenceService.decide_aio`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from typing import Any, Protocol, cast

THROUGHPUT_ENV = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
os.environ.setdefault(THROUGHPUT_ENV, "1")  # read by ray.serve at import (module doc)
# part of that mode, but for HTTP only: no proxy here, so no HTTP server per replica and no 30-s
# direct-ingress drain when a replica stops
os.environ.setdefault("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve.exceptions import BackPressureError  # noqa: E402

from exitflow.pipeline.config import ServiceConfig  # noqa: E402
from exitflow.pipeline.live.core.failures import LiveRuntimeError  # noqa: E402
from exitflow.pipeline.live.runtime.ray.placement import package_path  # noqa: E402
from exitflow.pipeline.live.runtime.ray.replica import (  # noqa: E402
    Request,
    Result,
    ServiceReplica,
    ShedDecision,
)
from exitflow.pipeline.live.runtime.workers import EngineFactory  # noqa: E402
from exitflow.pipeline.messages import Decision, Sample  # noqa: E402


class _BatchSettings(Protocol):
    """What ``@serve.batch`` adds to the method it wraps."""

    def set_max_batch_size(self, new_max_batch_size: int) -> None: ...

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None: ...


class ServiceDeployment:
    """The Serve wrapper of one :class:`ServiceReplica` (batching, health, reconfigure); deployed as
    :data:`SERVICE`."""

    def __init__(self, factory: EngineFactory | str, cfg: Any, service: ServiceConfig):
        self.init_args = (factory, cfg, service)
        self.replica = ServiceReplica(factory, cfg, service)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this at start and whenever the deployment's ``user_config`` changes."""
        batched = cast(_BatchSettings, self._batched)
        if "max_batch_size" in user_config:
            batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_ms" in user_config:
            batched.set_batch_wait_timeout_s(float(user_config["batch_wait_ms"]) / 1000.0)
        budget = user_config.get("budget")
        if budget is not None:
            self.replica.set_budget(**budget)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[Request]) -> list[Result]:
        return self.replica.run_requests(requests)

    async def process(self, sample: Sample, client: str = "") -> Result:
        """One sample: ``(decision, stage_ms, error)``, batched with whatever else arrives."""
        return cast(Result, await self._batched(Request(sample, client)))

    async def process_many(self, samples: list[Sample] | list[ray.ObjectRef], client: str = "") -> list[Result]:
        """A client's micro-batch, run as one batch (one request, one result per sample).

        ``samples`` is the list itself, or ``[ref]`` to it in Ray's object store (zero-copy: the
        arrays are read-only views of the store's shared memory on this node).
        """
        if len(samples) == 1 and isinstance(samples[0], ray.ObjectRef):
            samples = await samples[0]
        now = time.perf_counter()
        return self.replica.run_requests([Request(s, client, now) for s in samples])

    def check_health(self) -> None:
        self.replica.healthy()

    def status(self) -> dict[str, Any]:
        return self.replica.status()

    def node_id(self) -> str:
        return cast(str, ray.get_runtime_context().get_node_id())

    def package_path(self) -> str:
        """Where this replica imported exitflow from (a shipped copy when ``runtime_env`` carried it)."""
        return package_path()

    def get_init_args(self) -> tuple[Any, Any, ServiceConfig]:
        return self.init_args


SERVICE = serve.deployment()(ServiceDeployment)  # the Serve deployment (options: deployment_options)


def deployment_name(factory: EngineFactory | str, cfg: Any = None) -> str:
    """The deployment's name: the bundle's folder name (``engine.bundle``), else the engine's name."""
    bundle = getattr(getattr(cfg, "engine", None), "bundle", None)
    if bundle:
        return os.path.basename(os.path.normpath(str(bundle))) or "bundle"
    name = factory if isinstance(factory, str) else getattr(factory, "__name__", "engine")
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def deployment_options(service: ServiceConfig, name: str, budget: dict[str, Any] | None = None,
                       **ray_actor_options: Any) -> dict[str, Any]:
    """``serve.deployment`` options from the ``service`` section (see the module doc)."""
    actor = {"num_cpus": service.num_cpus, "num_gpus": service.num_gpus, "resources": dict(service.resources),
             **ray_actor_options}
    opts: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": service.max_ongoing_requests,
        "max_queued_requests": service.max_queued_requests,
        "health_check_period_s": service.health_check_period_s,
        "health_check_timeout_s": service.health_check_timeout_s,
        "graceful_shutdown_timeout_s": service.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": min(2.0, service.graceful_shutdown_timeout_s),
        "ray_actor_options": actor,
        "user_config": {"max_batch_size": service.max_batch_size, "batch_wait_ms": service.batch_wait_ms,
                        "budget": budget},
    }
    if service.max_replicas is not None:
        opts["autoscaling_config"] = {"min_replicas": service.num_replicas, "max_replicas": service.max_replicas,
                                      "target_ongoing_requests": service.target_ongoing_requests}
    else:
        opts["num_replicas"] = service.num_replicas
    return opts


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
    """

    def __init__(self, app: str, deployment: str, client: str = ""):
        self.app, self.deployment, self.client = app, deployment, client
        self._loop = _ClientLoop.get()
        self._handle: Any = None
        self.process = _Call(self.submit)
        self.status = _Call(lambda: self.call("status"))
        self.node_id = _Call(lambda: self.call("node_id"))
        self.set_budget = _Call(lambda mj=None, w=None: self._loop_free(self.set_budget_now, mj, w))

    # -- start / connect ------------------------------------------------------------------------
    @classmethod
    def start(cls, factory: EngineFactory | str, cfg: Any = None, service: ServiceConfig | None = None,
              client: str = "", **ray_actor_options: Any) -> InferenceService:
        """Deploy the service (returns when every replica has built its engine), or join it when an
        application of that name already runs.

        Args:
            factory: The engine factory, or a ``stream.engine`` name called with ``cfg`` in each replica.
            cfg: The whole config; its ``service`` section is used unless ``service`` is given.
            service: The ``service`` section.
            client: This caller's name (per-client fairness).
            **ray_actor_options: Ray actor options for the replicas over the section's
                (e.g. ``scheduling_strategy``).
        """
        service = service or getattr(cfg, "service", None) or ServiceConfig()
        name = deployment_name(factory, cfg)
        if not _running(service.name):
            serve.start(proxy_location="Disabled")
            app = SERVICE.options(**deployment_options(service, name, **ray_actor_options))
            serve.run(app.bind(factory, cfg, service), name=service.name, route_prefix=None)
        return cls.connect(service.name, client=client)

    @classmethod
    def connect(cls, app: str = "exitflow-service", client: str = "", timeout_s: float = 10.0) -> InferenceService:
        """The running service ``app``.

        Raises:
            LiveRuntimeError: when no such application runs within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            status = _app_status(app)
            if status is not None and status.deployments:
                return cls(app, next(iter(status.deployments)), client)
            if time.monotonic() > deadline:
                raise LiveRuntimeError(f"no inference service {app!r} runs on Ray Serve in this namespace; "
                                       "start one (InferenceService.start)")
            time.sleep(0.2)

    def for_client(self, client: str) -> InferenceService:
        """The same service, calling as ``client`` (e.g. one robot of a fleet driven from this process)."""
        return InferenceService(self.app, self.deployment, client)

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

    async def decide_aio(self, sample: Sample) -> Result:
        """``(decision, stage_ms, error)``; a sample Serve refuses (back-pressure) comes back shed."""
        try:
            return cast(Result, await self._call("process", sample, self.client))
        except BackPressureError:
            return _busy(sample)

    async def decide_many_aio(self, samples: list[Sample], via_store: bool = True) -> list[Result]:
        """One call carrying ``samples``, run as one batch in one replica.

        With ``via_store`` the samples go through Ray's object store (one copy in, zero copies out
        on the replica's node: the request itself carries only a reference) instead of inside the
        request (pickled into it, unpickled out of it).
        """
        payload: list[Any] = [ray.put(list(samples))] if via_store else list(samples)
        try:
            return cast(list[Result], await self._call("process_many", payload, self.client))
        except BackPressureError:
            return [_busy(s) for s in samples]

    async def status_aio(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call("status"))

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

    def set_budget_now(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Change every replica's budget: the deployment's ``user_config`` is updated and Serve calls
        ``reconfigure`` on each replica (and on any replica it starts later)."""
        factory, cfg, service = self._run(self._call("get_init_args")).result(30)
        budget = None if mj_per_sample is None and power_w is None else {"mj_per_sample": mj_per_sample,
                                                                          "power_w": power_w}
        app = SERVICE.options(**deployment_options(service, self.deployment, budget))
        serve.run(app.bind(factory, cfg, service), name=self.app, route_prefix=None)
        return {"mj_per_sample": mj_per_sample, "power_w": power_w}

    def wait_ready(self, timeout_s: float = 120.0) -> list[str]:
        """Node ids of the replicas that answer (the deployment is up when :meth:`start` returns)."""
        return [self.node_id.remote().result(timeout_s)]

    def stats(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Replica status (one replica's, for now: Serve routes a status call to one replica) with
        ``batches``, ``items``, ``batch_size_mean``, ``shed``, ``capacity_sps``, ``overloaded``."""
        return cast(dict[str, Any], self.status.remote().result(timeout_s))

    def shutdown(self) -> None:
        """Delete the application (in-flight requests drain first); the service ends for every user."""
        serve.delete(self.app)


def service_shutdown(timeout_s: float = 60.0, stop_ray: bool = True) -> None:
    """Shut Serve down in this Ray (every application, the controller; in-flight requests drain),
    then Ray (``stop_ray``). Serve's routers of this process close on the client loop they run on."""
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
