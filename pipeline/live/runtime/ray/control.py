"""``exitflow budget set`` on the Ray runtime: through the named engine actor, or the Serve service.

The Ray pipeline's engine is the detached-by-name actor ``exitflow-engine`` in ``ray.namespace``
(:data:`~exitflow.pipeline.live.runtime.ray.pipeline.ENGINE_ACTOR_NAME`); a budget change is one
call to its ``set_budget``. Pipelines that share the inference service on Ray Serve (a fleet's
drivers) have no engine actor: the budget then goes to the service application ``service_app``,
whose replicas take it in place (``user_config`` + ``reconfigure``, no replica replaced; see
:meth:`~exitflow.pipeline.live.runtime.ray.service.InferenceService.set_budget_now`). The local
runtime's counterpart is :mod:`exitflow.pipeline.live.runtime.control`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import ray
from ray.exceptions import RayTaskError

from exitflow.pipeline.config import RayConfig, ServiceConfig
from exitflow.pipeline.live.core.failures import LiveRuntimeError
from exitflow.pipeline.live.runtime.ray.connect import start_ray
from exitflow.pipeline.live.runtime.ray.pipeline import ENGINE_ACTOR_NAME
from exitflow.pipeline.live.runtime.ray.service import InferenceService

__all__ = ["set_ray_budget"]


def set_ray_budget(ray_cfg: RayConfig, mj_per_sample: float | None, power_w: float | None,
                   service_app: str | None = ServiceConfig.name) -> dict[str, Any]:
    """Set (both None: remove) the budget of the engine running in the Ray cluster at
    ``ray_cfg.address`` (or auto), else of the Serve service ``service_app``; returns the budget in force.

    Raises:
        LiveRuntimeError: when no running exitflow engine or service is found, or it refuses the budget.
    """
    try:  # False in the process that runs the pipeline: Ray is up already
        connected_here = start_ray(dataclasses.replace(ray_cfg, address=ray_cfg.address or "auto"))
    except LiveRuntimeError as e:
        raise LiveRuntimeError(f"{e} (is `exitflow run` running?)") from e
    try:
        try:
            engine = ray.get_actor(ENGINE_ACTOR_NAME, namespace=ray_cfg.namespace)
        except ValueError as e:
            if service_app is None:
                raise LiveRuntimeError(f"no running exitflow engine in namespace {ray_cfg.namespace!r}; "
                                       "start one with `exitflow run`") from e
            try:
                service = InferenceService.connect(service_app, timeout_s=0.0)
            except LiveRuntimeError as none:
                raise LiveRuntimeError(f"no running exitflow engine in namespace {ray_cfg.namespace!r} and no "
                                       f"service {service_app!r}; start one with `exitflow run`") from none
            return service.set_budget_now(mj_per_sample, power_w)
        return cast(dict[str, Any], ray.get(engine.set_budget.remote(mj_per_sample, power_w), timeout=30))
    except RayTaskError as e:
        raise LiveRuntimeError(f"the engine refused the budget: {e.cause if e.cause else e}") from e
    finally:
        if connected_here:
            ray.shutdown()
