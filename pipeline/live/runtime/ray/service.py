"""One inference service for many pipelines: replicas that batch samples across streams.

Ray Serve is not part of this project's environment (``ray[serve]`` would add an HTTP proxy and a
controller process per cluster and FastAPI/Starlette/uvicorn to the install; the robots here call
from Python over Ray anyway), so the service is a pool of named, detached Ray actors
(``service.name``-0, -1, ...), each holding one :class:`ServiceReplica`: a threaded actor whose
``process(sample)`` waits in a :class:`~exitflow.pipeline.inference.batcher.MicroBatcher`
(``@serve.batch`` semantics: up to ``service.max_batch_size`` samples, at most
``service.batch_wait_ms`` after the first) and is answered from one
:class:`~exitflow.pipeline.inference.batch_engine.BatchEngine` batch in which every sample keeps its
own exits. Replicas scale by ``service.num_replicas``; ``service.num_gpus`` / ``service.resources``
place them (a GPU replica lands on a node with a GPU; set ``engine.device: cuda``); on a cluster
they import the project shipped by the job's ``runtime_env`` (``placement.job_runtime_env``).

Any pipeline, in any driver process of the cluster's namespace, reaches the same replicas with
:meth:`InferenceService.start` (``get_if_exists``: the first caller creates them, the others
connect) or :meth:`InferenceService.connect`. The handle offers ``decide(sample) -> Decision``
(blocking), ``decide_async(sample) -> ObjectRef`` and the engine actor's interface
(``process.remote(sample) -> (decision, stage_ms, error)``, ``status``, ``set_budget``,
``node_id``), so the live runtime takes it in place of its engine actor
(``RayPipeline(..., engine=service)``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import ray

from exitflow.pipeline.config import ServiceConfig
from exitflow.pipeline.inference.batch_engine import as_batch_engine
from exitflow.pipeline.inference.batcher import MicroBatcher
from exitflow.pipeline.live.core.failures import LiveRuntimeError, describe_error, failed_decision
from exitflow.pipeline.live.runtime.preprocess import model_preprocessing, preprocess_sample
from exitflow.pipeline.live.runtime.ray.placement import package_path
from exitflow.pipeline.live.runtime.workers import EngineFactory, holder_status, resolve_engine_factory
from exitflow.pipeline.messages import Decision, Sample

log = logging.getLogger(__name__)

Result = tuple[Decision, dict[str, float], "str | None"]  # the engine actor's (decision, stage -> ms, error)


class ServiceReplica:
    """One replica: an engine run in batches (plain class; :class:`InferenceService` makes it an actor).

    Args:
        factory: Zero-argument engine factory, or a ``stream.engine`` name called with ``cfg``.
        cfg: The whole config (for a factory by name).
        service: The ``service`` section (batch size, wait, queue bound).
        preprocess: Convert raw payloads to model inputs (a model-ready payload passes unchanged).
    """

    def __init__(self, factory: EngineFactory | str, cfg: Any = None, service: ServiceConfig | None = None,
                 preprocess: bool = True):
        service = service or ServiceConfig()
        self.engine = resolve_engine_factory(factory)(cfg) if isinstance(factory, str) else factory()
        self.batch_engine = as_batch_engine(self.engine)
        self.preprocess = preprocess
        self.preprocessing = model_preprocessing(cfg)  # a bundle's, else the defaults
        self.failures = 0
        self.preprocess_drops: dict[str, int] = {}
        self.budget: dict[str, Any] = {}
        self.batcher: MicroBatcher[tuple[Sample, float], Result] = MicroBatcher(
            self.run_batch, service.max_batch_size, service.batch_wait_ms / 1000.0, service.max_queued
        )

    @ray.method(enable_task_events=False)  # called per sample: no per-call record in Ray's GCS
    def process(self, sample: Sample) -> Result:
        """``(decision, stage latencies in ms, None)`` or ``(FailedDecision, ..., error)``; never raises
        for one sample (a full queue, too, comes back as that sample's error).

        The sample is preprocessed on its caller's thread *before* it joins a batch, so preprocessing
        overlaps with the batch being computed and the batch's critical path is the engine alone.
        """
        t0 = time.perf_counter()
        try:
            ready = preprocess_sample(sample, self.preprocess_drops, self.preprocessing) if self.preprocess else sample
        except Exception as e:  # noqa: BLE001 - preprocess_sample never raises for a payload; a bug here
            return self._failed(sample, describe_error("preprocess", e), {})
        preprocess_ms = (time.perf_counter() - t0) * 1000.0
        try:
            decision, stage_ms, error = self.batcher.submit((ready, time.perf_counter()))
        except Exception as e:  # noqa: BLE001 - ServiceBusyError or a broken batch: this sample failed
            return self._failed(sample, describe_error("service", e), {"preprocess": preprocess_ms})
        stage_ms["preprocess"] = preprocess_ms
        return decision, stage_ms, error

    def run_batch(self, items: list[tuple[Sample, float]]) -> list[Result]:
        """Run preprocessed samples as one batch; one result per sample (a failure stays its own)."""
        start = time.perf_counter()
        samples = [sample for sample, _ in items]
        try:
            outs = self.batch_engine.process_batch(samples)
        except Exception as e:  # noqa: BLE001 - a batch engine bug: every sample of it fails, the replica lives
            outs = [e] * len(samples)
        engine_ms = (time.perf_counter() - start) * 1000.0
        results: list[Result] = []
        for (sample, submitted), out in zip(items, outs, strict=True):
            stage_ms = {"batch_wait": (start - submitted) * 1000.0, "engine": engine_ms}
            if isinstance(out, Decision):
                if not out.missing and sample.missing:
                    out.missing = sorted(sample.missing)
                if out.timestamp_ns is None:
                    out.timestamp_ns = sample.timestamp_ns
                results.append((out, stage_ms, None))
            else:
                results.append(self._failed(sample, describe_error("engine", out), stage_ms))
        return results

    def _failed(self, sample: Sample, error: str, stage_ms: dict[str, float]) -> Result:
        self.failures += 1
        if self.failures <= 10 or self.failures % 1000 == 0:
            log.warning("service: sample %s failed (%d so far): %s", sample.sample_id, self.failures, error)
        return failed_decision(sample, error), stage_ms, error

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Change the energy budget of this replica's engine.

        Raises:
            LiveRuntimeError: when the engine has no budget to change.
        """
        target = getattr(self.batch_engine, "engine", None)
        if target is None or not hasattr(target, "set_budget"):
            raise LiveRuntimeError(f"engine {type(self.engine).__name__} has no energy budget")
        target.set_budget(mj_per_sample=mj_per_sample, power_w=power_w)
        self.budget = {"mj_per_sample": mj_per_sample, "power_w": power_w}
        return self.budget

    def status(self) -> dict[str, Any]:
        """Budget, failures, preprocessing drops and the batcher's counters (``batch_size_mean``...)."""
        return {**holder_status(self), **self.batcher.stats()}

    def node_id(self) -> str:
        return cast(str, ray.get_runtime_context().get_node_id())

    def package_path(self) -> str:
        """Where this replica imported exitflow from (a shipped copy when ``runtime_env`` carried it)."""
        return package_path()


class _Method:
    """``handle.NAME.remote(*args)`` on one replica picked by ``pick``."""

    def __init__(self, name: str, pick: Callable[[], Any]):
        self._name, self._pick = name, pick

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._pick(), self._name).remote(*args, **kwargs)


class InferenceService:
    """A handle on the service's replicas (cheap to copy into other processes by name).

    Use :meth:`start` or :meth:`connect` rather than the constructor.
    """

    def __init__(self, name: str, replicas: list[Any]):
        if not replicas:
            raise LiveRuntimeError(f"inference service {name!r} has no replicas")
        self.name = name
        self.replicas = list(replicas)
        self._turn = itertools.cycle(range(len(self.replicas)))
        self.process = _Method("process", self._next)  # the engine actor's interface
        self.status = _Method("status", lambda: self.replicas[0])
        self.node_id = _Method("node_id", lambda: self.replicas[0])
        self.set_budget = _Broadcast(self.replicas, "set_budget")

    def _next(self) -> Any:
        return self.replicas[next(self._turn)]

    @classmethod
    def start(cls, factory: EngineFactory | str, cfg: Any = None, service: ServiceConfig | None = None,
              **options: Any) -> InferenceService:
        """Create the replicas, or join them if a pipeline already did (same name and namespace).

        Args:
            factory: The engine factory, or a ``stream.engine`` name called with ``cfg`` in each replica.
            cfg: The whole config; its ``service`` section is used unless ``service`` is given.
            service: The ``service`` section.
            **options: Ray actor options overriding the section's (e.g. ``scheduling_strategy``).
        """
        service = service or getattr(cfg, "service", None) or ServiceConfig()
        opts: dict[str, Any] = {
            "num_cpus": service.num_cpus,
            "num_gpus": service.num_gpus,
            "resources": dict(service.resources),
            "max_restarts": service.max_restarts,
            "max_concurrency": service.max_queued + 4,  # a waiting sample holds a thread; + status calls
            "get_if_exists": True,
        }
        if service.detached:
            opts["lifetime"] = "detached"
        opts.update(options)
        actor_cls = ray.remote(ServiceReplica)
        replicas = [
            actor_cls.options(name=f"{service.name}-{k}", **opts).remote(factory, cfg, service, True)
            for k in range(service.num_replicas)
        ]
        return cls(service.name, replicas)

    @classmethod
    def connect(cls, name: str = "exitflow-service", timeout_s: float = 10.0) -> InferenceService:
        """The running service ``name`` (all its replicas ``name-0``, ``name-1``, ...).

        Raises:
            LiveRuntimeError: when no replica of that name is found within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            replicas = []
            for k in itertools.count():
                try:
                    replicas.append(ray.get_actor(f"{name}-{k}"))
                except ValueError:
                    break
            if replicas:
                return cls(name, replicas)
            if time.monotonic() > deadline:
                raise LiveRuntimeError(
                    f"no inference service {name!r} in this Ray namespace; start one (InferenceService.start)"
                )
            time.sleep(0.2)

    def wait_ready(self, timeout_s: float = 120.0) -> list[str]:
        """Block until every replica has built its engine; returns their node ids."""
        return cast(list[str], ray.get([r.node_id.remote() for r in self.replicas], timeout=timeout_s))

    def decide_async(self, sample: Sample) -> Any:
        """An ObjectRef to ``(decision, stage_ms, error)`` (the batch-aware path for many samples)."""
        return self.process.remote(sample)

    def decide(self, sample: Sample, timeout_s: float | None = 60.0) -> Decision:
        """The sample's decision (a FailedDecision with ``error`` set when the sample failed)."""
        decision, _, _ = ray.get(self.decide_async(sample), timeout=timeout_s)
        return cast(Decision, decision)

    def stats(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Every replica's status, and the batch size averaged over all of their batches."""
        statuses = ray.get([r.status.remote() for r in self.replicas], timeout=timeout_s)
        batches = sum(s["batches"] for s in statuses)
        items = sum(s["items"] for s in statuses)
        return {"replicas": statuses, "batches": batches, "items": items,
                "batch_size_mean": items / batches if batches else 0.0}

    def shutdown(self) -> None:
        """Kill every replica (the service ends for every pipeline using it)."""
        for r in self.replicas:
            ray.kill(r, no_restart=True)


class _Broadcast:
    """``set_budget.remote(...)`` to every replica; the caller gets the first replica's reply."""

    def __init__(self, replicas: list[Any], name: str):
        self._replicas, self._name = replicas, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        refs = [getattr(r, self._name).remote(*args, **kwargs) for r in self._replicas]
        return refs[0]
