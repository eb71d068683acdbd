"""The plain classes both runtimes run: one source reader, one engine holder.

No Ray here: the local runtime (:mod:`~exitflow.pipeline.live.runtime.local`) calls them
in-process, and :mod:`exitflow.pipeline.live.runtime.ray.workers` wraps them in Ray actors.
:class:`SourceWorker` reads a source on a
background thread into a bounded queue that the driver drains, and notes every disconnect and
reconnect as an :class:`~exitflow.pipeline.live.core.failures.OutageEvent`; :class:`EngineWorker`
holds the engine and preprocesses + processes one sample per call, turning *any* exception of
preprocessing, the engine or its meter into a
:class:`~exitflow.pipeline.live.core.failures.FailedDecision` so one bad sample never stops the loop.

Words: the *engine* is whatever a runtime drives (``process(sample) -> Decision``); a *system* is
one of the project's named engines (:mod:`exitflow.pipeline.inference.systems`, ``system:NAME``).
Which engines a config may name (``stream.engine``) is closed: ``system:NAME`` (the project's
systems), an entry point registered under the group ``exitflow.engines`` (by its name), or a
``module:function`` inside the ``exitflow`` package. A config cannot import arbitrary modules.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from exitflow.pipeline.config import SourceConfig
from exitflow.pipeline.live.core.backoff import Backoff
from exitflow.pipeline.live.core.endpoints import SourceFactory
from exitflow.pipeline.live.core.failures import (
    LiveRuntimeError,
    OutageEvent,
    describe_error,
    failed_decision,
)
from exitflow.pipeline.live.core.queues import BoundedQueue
from exitflow.pipeline.live.runtime.preprocess import model_preprocessing, preprocess_sample
from exitflow.pipeline.live.sources import build_source
from exitflow.pipeline.messages import Decision, Sample, SensorMessage

log = logging.getLogger(__name__)

EngineFactory = Callable[[], Any]
ENGINE_ENTRY_POINT_GROUP = "exitflow.engines"
PROJECT_PACKAGE = "exitflow"
MAX_PENDING_EVENTS = 64


class SourceWorker:
    """Reads one source on a background thread into a bounded queue; the driver drains it.

    Args:
        spec: A ``stream.sources`` entry, or a zero-argument factory returning a Source.
        queue_size: Bound of the source -> driver edge.
        queue_policy: Full-queue policy of that edge.
        audio_rate_hz: Rate audio sources deliver (resampling/rejecting per spec).
        backoff: Reconnect policy.
        wake: Set after every queued message (the in-process runtime waits on it instead of polling).
    """

    def __init__(
        self,
        spec: SourceConfig | SourceFactory,
        queue_size: int = 16,
        queue_policy: str = "drop_oldest",
        audio_rate_hz: int | None = None,
        backoff: Backoff | None = None,
        wake: threading.Event | None = None,
    ):
        self.source = spec() if callable(spec) else build_source(spec, audio_rate_hz, backoff)
        self.queue: BoundedQueue[SensorMessage] = BoundedQueue(
            queue_size, queue_policy, name=self.source.name
        )
        self.started_ns = time.monotonic_ns()  # tells one incarnation of a restarted actor from the next
        self._events: deque[OutageEvent] = deque(maxlen=MAX_PENDING_EVENTS)  # handed out by health()
        self._was_connected = False
        self._ever_connected = False
        self._stop = threading.Event()
        self._wake = wake
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
            self._note_state()
            if msg is not None and not (isinstance(msg, SensorMessage) and isinstance(msg.meta, dict)):
                self.source.count_drop("not_a_message")  # a custom source's bug: counted, not fatal
            elif msg is not None:
                msg.meta["worker_started_ns"] = self.started_ns
                self.queue.put(msg, timeout_s=0.5)
                if self._wake is not None:
                    self._wake.set()
            elif self.source.state != "connected":
                time.sleep(0.01)
        self.source.close()

    def _note_state(self) -> None:
        """Queue an outage event when the source's connection went down or came back."""
        connected = self.source.state == "connected"
        if connected == self._was_connected:
            return
        first = connected and not self._ever_connected
        self._was_connected = connected
        if first:  # the first connection is not an outage's end
            self._ever_connected = True
            return
        if connected:
            event, reason = "reconnected", f"reconnects={self.source.reconnects}"
        else:
            event, reason = "disconnected", f"{self.source.state}: {self.source.last_error or ''}".strip()
        if connected or self.source.state != "finished":
            self._events.append(OutageEvent(self.source.name, event, reason, time.monotonic_ns()))

    def drain(self, max_items: int = 256) -> list[SensorMessage]:
        return self.queue.drain(max_items)

    def poll(self, max_items: int = 256, wait_s: float = 0.05) -> list[SensorMessage]:
        """:meth:`drain` after waiting up to ``wait_s`` for the first message (a long poll: one call
        per burst of messages instead of one per driver tick)."""
        self.queue.wait(wait_s)
        return self.drain(max_items)  # a subclass may reduce them

    def health(self) -> dict[str, Any]:
        """The source's health, its queue's counters and the outage events since the last call."""
        out = self.source.health().to_dict()
        out["queue"] = self.queue.stats().to_dict()
        events = []
        while self._events:
            events.append(self._events.popleft())
        out["events"] = events
        return out

    def clock_ns(self) -> int:
        """The source's clock now (what it stamps messages with); the driver times the round trip."""
        return self.source.clock.now_ns()

    def stop(self) -> bool:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.queue.close()
        return True


def engine_entry_points() -> dict[str, Any]:
    """Name -> entry point of every engine registered under the ``exitflow.engines`` group."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENGINE_ENTRY_POINT_GROUP)}


def resolve_engine_factory(path: str) -> Callable[..., Any]:
    """The engine factory (called with the config) that ``stream.engine`` names.

    ``"system:NAME"`` loads a system from :mod:`exitflow.pipeline.inference.systems`; a bare
    ``"NAME"`` is an entry point of the group ``exitflow.engines`` (register your own in your
    package's ``pyproject.toml``: ``[project.entry-points."exitflow.engines"] my = "pkg.mod:factory"``);
    ``"exitflow.module:function"`` is one of the project's own factories. Nothing else is imported.

    Raises:
        LiveRuntimeError: for a name outside those, or one that does not load.
    """
    module_name, sep, attr = path.partition(":")
    if module_name == "system":
        from exitflow.pipeline.inference.systems import load_system, system_names

        if attr not in system_names():
            raise LiveRuntimeError(
                f"stream.engine {path!r}: unknown system {attr!r}; choose one of {', '.join(system_names())}"
            )
        return lambda cfg: load_system(cfg, attr)
    if not sep:
        points = engine_entry_points()
        if path not in points:
            known = ", ".join(sorted(points)) or "none installed"
            raise LiveRuntimeError(
                f"stream.engine {path!r} is not an engine registered under the entry-point group "
                f"{ENGINE_ENTRY_POINT_GROUP!r} ({known}); use system:NAME or register it (docs/streaming.md)"
            )
        try:
            return points[path].load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in is reported as one line
            raise LiveRuntimeError(f"cannot load engine entry point {path!r}: {type(e).__name__}: {e}") from e
    if module_name.split(".")[0] != PROJECT_PACKAGE:
        raise LiveRuntimeError(
            f"stream.engine {path!r}: only exitflow's own factories load by module path; register "
            f"{path!r} under the entry-point group {ENGINE_ENTRY_POINT_GROUP!r} and name it, or use system:NAME"
        )
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise LiveRuntimeError(
            f"cannot load engine factory {path!r}: {e}; set stream.engine to an importable one"
        ) from e


def apply_budget(engine: Any, mj_per_sample: float | None, power_w: float | None) -> dict[str, Any]:
    """Set (or with both None remove) the energy budget of ``engine`` (or of the engine or budget controller it
    wraps); returns the budget now in force. Raises LiveRuntimeError when nothing there takes a budget."""
    inner = getattr(engine, "engine", None)  # a System wrapping an Engine (the batch engine's too)
    candidates = (engine, getattr(engine, "budget", None), getattr(inner, "budget", None))
    target = next((c for c in candidates if c is not None and hasattr(c, "set_budget")), None)
    if target is None:
        raise LiveRuntimeError(
            f"engine {type(engine).__name__} has no energy budget; configure budget control for it first"
        )
    target.set_budget(mj_per_sample=mj_per_sample, power_w=power_w)
    return {"mj_per_sample": mj_per_sample, "power_w": power_w}


def holder_status(holder: Any) -> dict[str, Any]:
    """What every engine holder (this worker, a service replica) reports: budget, failures, drops."""
    return {
        "budget": dict(holder.budget),
        "failures": holder.failures,
        "preprocess_drops": dict(holder.preprocess_drops),
    }


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
        self.preprocessing = model_preprocessing(cfg)  # a bundle's, else the defaults
        self.budget: dict[str, Any] = {}
        self.failures = 0
        self.preprocess_drops: dict[str, int] = {}

    def process(self, sample: Sample) -> tuple[Decision, dict[str, float], str | None]:
        """``(decision, stage latencies in ms, None)``, or ``(FailedDecision, ..., error)`` when the
        sample failed anywhere (preprocessing, the engine, its meter): never raises for one sample."""
        t0 = time.perf_counter()
        stage_ms: dict[str, float] = {}
        stage = "preprocess"
        try:
            if self.preprocess:
                sample = preprocess_sample(sample, self.preprocess_drops, self.preprocessing)
            t1 = time.perf_counter()
            stage_ms["preprocess"] = (t1 - t0) * 1e3
            stage = "engine"
            decision = self.engine.process(sample)
            if not isinstance(decision, Decision):
                raise TypeError(f"engine returned {type(decision).__name__}, expected a Decision")
            t2 = time.perf_counter()
            stage_ms["engine"] = (t2 - t1) * 1e3
            if not decision.missing and sample.missing:
                decision.missing = sorted(sample.missing)
            if decision.timestamp_ns is None:
                decision.timestamp_ns = sample.timestamp_ns
        except Exception as e:  # noqa: BLE001 - one sample's failure (even CUDA OOM) must not end the run
            error = describe_error(stage, e)
            self.failures += 1
            if self.failures <= 10 or self.failures % 1000 == 0:
                log.warning("engine: sample %s failed (%d so far): %s", sample.sample_id, self.failures, error)
            return failed_decision(sample, error), stage_ms, error
        return decision, stage_ms, None

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Change the energy budget of the running engine (``exitflow budget set``).

        Raises:
            LiveRuntimeError: when the engine has no budget to change.
        """
        self.budget = apply_budget(self.engine, mj_per_sample, power_w)
        return self.budget

    def status(self) -> dict[str, Any]:
        return holder_status(self)
