"""The plain classes inside the live pipeline's Ray actors: one source reader, one engine holder.

No ``ray.remote`` here (see ``pipeline.runtime``): :class:`SourceWorker` reads a source on a
background thread into a bounded queue that the driver drains; :class:`EngineWorker` holds the
engine and preprocesses + processes one sample per call, turning a failed sample into an error
string instead of an exception so one bad sample never stops the loop.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from exitflow.pipeline.config import SourceConfig
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.live.queues import BoundedQueue
from exitflow.pipeline.live.sources import Backoff, Source, build_source
from exitflow.pipeline.messages import Decision, Sample, SensorMessage

log = logging.getLogger(__name__)

SourceFactory = Callable[[], Source]
EngineFactory = Callable[[], Any]


class LiveRuntimeError(ExitflowError):
    """The live runtime cannot start (Ray unreachable, engine factory missing...)."""


class SourceWorker:
    """Reads one source on a background thread into a bounded queue; the driver drains it.

    Args:
        spec: A ``stream.sources`` entry, or a zero-argument factory returning a Source.
        queue_size: Bound of the source -> driver edge.
        queue_policy: Full-queue policy of that edge.
        audio_rate_hz: Rate audio sources deliver (resampling/rejecting per spec).
        backoff: Reconnect policy.
    """

    def __init__(
        self,
        spec: SourceConfig | SourceFactory,
        queue_size: int = 16,
        queue_policy: str = "drop_oldest",
        audio_rate_hz: int | None = None,
        backoff: Backoff | None = None,
    ):
        self.source = spec() if callable(spec) else build_source(spec, audio_rate_hz, backoff)
        self.queue: BoundedQueue[SensorMessage] = BoundedQueue(
            queue_size, queue_policy, name=self.source.name
        )
        self.started_ns = time.monotonic_ns()  # tells one incarnation of a restarted actor from the next
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"source-{self.source.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.source.read()
            except Exception as e:  # noqa: BLE001 - a source bug must not kill the actor silently
                self.source.last_error = f"{type(e).__name__}: {e}"
                self.source.count_drop("source_exception")
                log.exception("source %s raised", self.source.name)
                time.sleep(0.1)
                continue
            if msg is not None:
                msg.meta["worker_started_ns"] = self.started_ns
                self.queue.put(msg, timeout_s=0.5)
            elif self.source.state != "connected":
                time.sleep(0.01)
        self.source.close()

    def drain(self, max_items: int = 256) -> list[SensorMessage]:
        return self.queue.drain(max_items)

    def health(self) -> dict[str, Any]:
        out = self.source.health().to_dict()
        out["queue"] = self.queue.stats().to_dict()
        return out

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def stop(self) -> bool:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.queue.close()
        return True


def resolve_engine_factory(path: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (called with the config), or
    ``"system:NAME"`` -> a factory loading the named system from :mod:`pipeline.systems`.

    Raises:
        LiveRuntimeError: when the module or attribute does not exist.
    """
    module_name, sep, attr = path.partition(":")
    if module_name == "system":
        from exitflow.pipeline.inference.systems import load_system

        return lambda cfg: load_system(cfg, attr)
    if not sep:
        raise LiveRuntimeError(f"stream.engine must look like 'package.module:function', got {path!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise LiveRuntimeError(
            f"cannot load engine factory {path!r}: {e}; set stream.engine to an importable one"
        ) from e


class EngineWorker:
    """Holds the engine; preprocesses and processes one sample per call.

    Args:
        factory: Zero-argument callable returning the engine, or a ``"module:function"`` path
            called with ``cfg``.
        cfg: Passed to a factory given by path.
        preprocess: Convert raw payloads to model inputs first (pipeline.preprocess).
    """

    def __init__(self, factory: EngineFactory | str, cfg: Any = None, preprocess: bool = True):
        self.engine = resolve_engine_factory(factory)(cfg) if isinstance(factory, str) else factory()
        self.preprocess = preprocess
        self.budget: dict[str, Any] = {}

    def process(self, sample: Sample) -> tuple[Decision | None, dict[str, float], str | None]:
        """``(decision, stage latencies in ms, None)``, or ``(None, ..., error)`` when the sample failed."""
        t0 = time.perf_counter()
        if self.preprocess:
            from exitflow.pipeline.live.preprocess import preprocess_sample

            sample = preprocess_sample(sample)
        t1 = time.perf_counter()
        try:
            decision = self.engine.process(sample)
        except (ExitflowError, ValueError, TypeError, KeyError) as e:
            log.warning("engine: sample %d failed: %s", sample.sample_id, e)
            return None, {"preprocess": (t1 - t0) * 1e3}, f"{type(e).__name__}: {e}"
        t2 = time.perf_counter()
        if not decision.missing and sample.missing:
            decision.missing = sorted(sample.missing)
        if decision.timestamp_ns is None:
            decision.timestamp_ns = sample.timestamp_ns
        return decision, {"preprocess": (t1 - t0) * 1e3, "engine": (t2 - t1) * 1e3}, None

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Change the energy budget of the running engine (``exitflow budget set``).

        Raises:
            LiveRuntimeError: when the engine has no budget to change.
        """
        inner = getattr(self.engine, "engine", None)  # a System wrapping an Engine
        candidates = (self.engine, getattr(self.engine, "budget", None), getattr(inner, "budget", None))
        target = next((c for c in candidates if c is not None and hasattr(c, "set_budget")), None)
        if target is None:
            raise LiveRuntimeError(
                f"engine {type(self.engine).__name__} has no energy budget; configure budget control for it first"
            )
        target.set_budget(mj_per_sample=mj_per_sample, power_w=power_w)
        self.budget = {"mj_per_sample": mj_per_sample, "power_w": power_w}
        return self.budget

    def status(self) -> dict[str, Any]:
        return {"budget": dict(self.budget)}

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()
