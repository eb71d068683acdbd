"""The service's Ray Serve deployment: one :class:`ServiceReplica` per replica, batching, health, reconfigure.

:class:`ServiceDeployment` (deployed as :data:`SERVICE`) wraps the plain
:class:`~exitflow.pipeline.live.runtime.ray.replica.ServiceReplica`:

- ``process`` (one sample) goes through ``@serve.batch`` (``service.max_batch_size``,
  ``service.batch_wait_ms``), merged with whatever other callers send;
- ``process_many`` takes a client's micro-batch as a
  :class:`~exitflow.pipeline.live.core.sample_batch.SampleBatch` (one array per modality; inline, or
  ``[ref]`` to it in Ray's object store) and runs it as one batch, one result per sample;
- ``check_health`` lets Serve replace a replica whose batches keep failing as a whole;
- ``reconfigure`` takes the deployment's ``user_config`` (batch settings and the energy budget; an
  engine that has no budget refuses it: the replica serves on and reports ``budget_error``).

**Budget changes in place.** :func:`bind_service` gives the deployment a code version of its own
(:class:`ServiceInit` ``code_version``, made once when the service starts and kept by the
replicas). Re-deploying with the same code version, actor options and placement but another
``user_config`` is, to Serve, a configuration change: it calls ``reconfigure`` on the running
replicas instead of starting new ones (without it, every imperative ``serve.run`` gets a random
code version and replaces every replica, ~10 s with the model load).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import ray
from ray import serve

from exitflow.pipeline.config import ServiceConfig
from exitflow.pipeline.live.core.failures import LiveRuntimeError
from exitflow.pipeline.live.core.sample_batch import SampleBatch
from exitflow.pipeline.live.runtime.ray.placement import package_path
from exitflow.pipeline.live.runtime.ray.replica import Request, Result, ServiceReplica
from exitflow.pipeline.live.runtime.workers import EngineFactory
from exitflow.pipeline.messages import Sample


class _BatchSettings(Protocol):
    """What ``@serve.batch`` adds to the method it wraps."""

    def set_max_batch_size(self, new_max_batch_size: int) -> None: ...

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None: ...


@dataclass(frozen=True)
class ServiceInit:
    """What a replica is built from, and what a re-deploy needs to keep the replicas (module doc).

    Args:
        factory: The engine factory, or a ``stream.engine`` name called with ``cfg`` in each replica.
        cfg: The whole config.
        service: The ``service`` section.
        code_version: The deployment's code version (one per started service).
        ray_actor_options: Ray actor options given at start over the section's (e.g. ``scheduling_strategy``).
    """

    factory: EngineFactory | str
    cfg: Any
    service: ServiceConfig
    code_version: str = field(default_factory=lambda: f"exitflow-{uuid.uuid4().hex[:12]}")
    ray_actor_options: dict[str, Any] = field(default_factory=dict)


class ServiceDeployment:
    """The Serve wrapper of one :class:`ServiceReplica` (module doc); deployed as :data:`SERVICE`."""

    def __init__(self, init: ServiceInit):
        self.init = init
        self.replica = ServiceReplica(init.factory, init.cfg, init.service)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.budget_error: str | None = None  # why the last budget in user_config was refused

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this at start and whenever the deployment's ``user_config`` changes."""
        batched = cast(_BatchSettings, self._batched)
        if "max_batch_size" in user_config:
            batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_ms" in user_config:
            batched.set_batch_wait_timeout_s(float(user_config["batch_wait_ms"]) / 1000.0)
        budget = user_config.get("budget")
        self.budget_error = None
        try:
            if budget is not None:
                self.replica.set_budget(**budget)
            elif self.replica.budget:  # a budget removed (``exitflow budget set off``)
                self.replica.set_budget(None, None)
        except LiveRuntimeError as e:  # an engine without a budget: reported, the replica serves on
            self.budget_error = str(e)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[Request]) -> list[Result]:
        return self.replica.run_requests(requests)

    async def process(self, sample: Sample, client: str = "") -> Result:
        """One sample: ``(decision, stage_ms, error)``, batched with whatever else arrives."""
        return cast(Result, await self._batched(Request(sample, client)))

    async def process_many(self, samples: SampleBatch | list[Any], client: str = "") -> list[Result]:
        """A client's micro-batch, run as one batch (one request, one result per sample).

        ``samples`` is a :class:`SampleBatch` (each row names its client), ``[ref]`` to one in Ray's
        object store (zero-copy: its arrays are read-only views of the store's shared memory on this
        node), or a plain list of samples, all from ``client``.
        """
        if len(samples) == 1 and isinstance(samples, list) and isinstance(samples[0], ray.ObjectRef):
            samples = await samples[0]
        now = time.perf_counter()
        if isinstance(samples, SampleBatch):
            rows, clients = samples.unpack(), samples.clients
        else:
            rows, clients = list(samples), [client] * len(samples)
        return self.replica.run_requests([Request(s, c, now) for s, c in zip(rows, clients, strict=True)])

    def check_health(self) -> None:
        self.replica.healthy()

    def status(self) -> dict[str, Any]:
        """This replica's status (:meth:`ServiceReplica.status`) with its Serve ``replica`` id and how
        many replicas the deployment has (``replicas_running``, as Serve told this replica)."""
        context = serve.get_replica_context()
        return {**self.replica.status(), "replica": self.replica_id, "replicas_running": context.world_size,
                "budget_error": self.budget_error}

    def node_id(self) -> str:
        return cast(str, ray.get_runtime_context().get_node_id())

    def package_path(self) -> str:
        """Where this replica imported exitflow from (a shipped copy when ``runtime_env`` carried it)."""
        return package_path()

    def get_init(self) -> ServiceInit:
        return self.init


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


def bind_service(init: ServiceInit, name: str, budget: dict[str, Any] | None = None) -> Any:
    """The Serve application of the service: :data:`SERVICE` with :func:`deployment_options` and
    ``init.code_version`` (kept across re-deploys, so a new ``user_config`` reconfigures the running
    replicas in place; see the module doc)."""
    deployment = SERVICE.options(**deployment_options(init.service, name, budget, **init.ray_actor_options))
    # Serve has no public way to keep a deployment's code version across imperative deploys; the
    # version argument it kept for this is internal since Serve 2.x
    deployment = deployment.options(version=init.code_version, _internal=True)
    return deployment.bind(init)
