"""The plain workers of :mod:`exitflow.pipeline.live.runtime.workers`, made Ray actor classes.

Only what Ray needs is added here: the hot methods are marked ``enable_task_events=False`` (called
~100 times a second, they would otherwise leave a record each in Ray's GCS) and ``node_id()``
says where the actor runs. The logic stays in the plain classes, which the local runtime calls
in-process and the tests call without Ray.
"""

from __future__ import annotations

from typing import Any, cast

import ray

from exitflow.pipeline.live.runtime.workers import EngineWorker, SourceWorker
from exitflow.pipeline.messages import Decision, Sample, SensorMessage

__all__ = ["RayEngineWorker", "RaySourceWorker", "node_id"]


def node_id() -> str:
    """The Ray node this process runs on."""
    return cast(str, ray.get_runtime_context().get_node_id())


class RaySourceWorker(SourceWorker):
    """A :class:`SourceWorker` as a Ray actor class (``ray.remote(RaySourceWorker)``)."""

    @ray.method(enable_task_events=False)  # called ~100/s: no per-call record in Ray's GCS
    def drain(self, max_items: int = 256) -> list[SensorMessage]:
        return super().drain(max_items)

    @ray.method(enable_task_events=False)  # called per message burst
    def poll(self, max_items: int = 256, wait_s: float = 0.05) -> list[SensorMessage]:
        return super().poll(max_items, wait_s)

    @ray.method(enable_task_events=False)  # called ~100/s
    def health(self) -> dict[str, Any]:
        return super().health()

    @ray.method(enable_task_events=False)  # a clock probe every few seconds
    def clock_ns(self) -> int:
        return super().clock_ns()

    def node_id(self) -> str:
        return node_id()


class RayEngineWorker(EngineWorker):
    """An :class:`EngineWorker` as a Ray actor class (``ray.remote(RayEngineWorker)``)."""

    @ray.method(enable_task_events=False)  # called ~100/s: no per-call record in Ray's GCS
    def process(self, sample: Sample) -> tuple[Decision, dict[str, float], str | None]:
        return super().process(sample)

    @ray.method(enable_task_events=False)  # called ~100/s
    def status(self) -> dict[str, Any]:
        return super().status()

    def node_id(self) -> str:
        return node_id()
