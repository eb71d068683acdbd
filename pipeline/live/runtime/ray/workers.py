"""The plain workers of :mod:`exitflow.pipeline.live.runtime.workers`, made Ray actor classes.

Only what Ray needs is added here: the hot methods are marked ``enable_task_events=False`` (called
~100 times a second, they would otherwise leave a record each in Ray's GCS) and ``node_id()``
says where the actor runs. The logic stays in the plain classes, which the local runtime calls
in-process and the tests call without Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

import ray

from exitflow.pipeline.live.runtime.workers import EngineWorker, SourceWorker
from exitflow.pipeline.messages import Decision, Sample, SensorMessage

__all__ = ["RayEngineWorker", "RaySourceWorker", "node_id", "untracked"]

P = ParamSpec("P")
R = TypeVar("R")


def untracked(method: Callable[P, R]) -> Callable[P, R]:
    """``@ray.method(enable_task_events=False)``: no per-call record in Ray's GCS for a method called
    ~100 times a second. Typed as what it is at run time, the plain method (Ray's stubs describe only
    ``.remote``), so a subclass keeps its parent's signature."""
    return cast(Callable[P, R], ray.method(enable_task_events=False)(method))


def node_id() -> str:
    """The Ray node this process runs on."""
    return cast(str, ray.get_runtime_context().get_node_id())


class RaySourceWorker(SourceWorker):
    """A :class:`SourceWorker` as a Ray actor class (``ray.remote(RaySourceWorker)``)."""

    @untracked
    def drain(self, max_items: int = 256) -> list[SensorMessage]:
        return super().drain(max_items)

    @untracked
    def poll(self, max_items: int = 256, wait_s: float = 0.05) -> list[SensorMessage]:
        return super().poll(max_items, wait_s)

    @untracked
    def health(self) -> dict[str, Any]:
        return super().health()

    @untracked
    def clock_ns(self) -> int:
        return super().clock_ns()

    def node_id(self) -> str:
        return node_id()


class RayEngineWorker(EngineWorker):
    """An :class:`EngineWorker` as a Ray actor class (``ray.remote(RayEngineWorker)``)."""

    @untracked
    def process(self, sample: Sample) -> tuple[Decision, dict[str, float], str | None]:
        return super().process(sample)

    @untracked
    def status(self) -> dict[str, Any]:
        return super().status()

    def node_id(self) -> str:
        return node_id()
