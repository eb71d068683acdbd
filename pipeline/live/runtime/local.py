"""``runtime: local``: the whole live pipeline in one process, no Ray.

For a single device (one camera, one microphone, the model on the same board) Ray costs start-up
time and memory for nothing. :class:`LocalTransport` runs the same
:class:`~exitflow.pipeline.live.runtime.workers.SourceWorker` objects (each reads its source on a thread
into its bounded queue) and the same :class:`~exitflow.pipeline.live.runtime.workers.EngineWorker`
in-process; the driver (:class:`~exitflow.pipeline.live.runtime.driver.PipelineDriver`: clock correction,
sync, queues and drop policies, recording, view) is the one the Ray runtime uses, so both make
the same decisions on the same input.

:class:`LocalEngine` overlaps preprocessing with inference: one thread turns sample *k+1* into
model inputs (resize, spectrogram) while another runs the engine on sample *k*; both are single
threads, so the engine sees samples in order and one at a time. One :class:`LocalEngine` can
serve several pipelines in the same process (the fleet benchmark's robots share one model).
The driver sleeps on an event that sources and the engine set, so a message or a decision is
handled as soon as it is in, not at the next polling tick.

:func:`choose_runtime` picks ``local`` or ``ray`` for ``stream.runtime: auto``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from exitflow.pipeline.config import SourceConfig, StreamConfig
from exitflow.pipeline.live.core.backoff import Backoff
from exitflow.pipeline.live.core.clocks import ClockProbe
from exitflow.pipeline.live.core.endpoints import SourceFactory
from exitflow.pipeline.live.runtime.driver import PipelineDriver
from exitflow.pipeline.live.runtime.preprocess import preprocess_sample
from exitflow.pipeline.live.runtime.transport import EngineResult, Transport
from exitflow.pipeline.live.runtime.workers import EngineFactory, EngineWorker, SourceWorker
from exitflow.pipeline.messages import Sample, SensorMessage

log = logging.getLogger(__name__)


def choose_runtime(cfg: Any) -> str:
    """``"local"`` or ``"ray"`` for ``cfg`` (``stream.runtime``; ``auto`` decides).

    ``auto`` is ``ray`` when the config reaches beyond one device: a cluster address
    (``ray.address``), a source or the engine asking for custom resources (a node label), or the
    engine asking for GPUs; otherwise ``local``.
    """
    stream: StreamConfig = cfg.stream
    if stream.runtime != "auto":
        return stream.runtime
    ray_cfg = getattr(cfg, "ray", None)
    remote = (
        (ray_cfg is not None and ray_cfg.address)
        or stream.engine_resources
        or stream.engine_num_gpus > 0
        or any(s.resources for s in stream.sources)
    )
    return "ray" if remote else "local"


class LocalEngine:
    """The engine in this process: a preprocessing thread feeding an engine thread.

    Args:
        factory: Zero-argument engine factory, or a ``stream.engine`` name called with ``cfg``.
        cfg: Whole config, handed to a factory given by name.
    """

    def __init__(self, factory: EngineFactory | str, cfg: Any = None):
        self.worker = EngineWorker(factory, cfg, preprocess=False)
        self.preprocess_drops: dict[str, int] = {}
        self._pre = ThreadPoolExecutor(1, thread_name_prefix="exitflow-preprocess")
        self._run = ThreadPoolExecutor(1, thread_name_prefix="exitflow-engine")
        self.samples = 0

    def submit(self, sample: Sample, done: threading.Event | None = None) -> Future[EngineResult]:
        """Preprocess then decide ``sample``; the future holds ``(decision, stage ms, error)``;
        ``done`` is set when it is ready."""
        out: Future[EngineResult] = Future()

        def decide(ready: Sample, preprocess_ms: float) -> None:
            try:
                decision, stage_ms, error = self.worker.process(ready)
                stage_ms["preprocess"] = preprocess_ms
                self.samples += 1
                out.set_result((decision, stage_ms, error))
            except BaseException as e:  # noqa: BLE001 - process() catches per-sample errors; this is a bug
                out.set_exception(e)
            if done is not None:
                done.set()

        def prepare() -> None:
            t0 = time.perf_counter()
            try:
                ready = preprocess_sample(sample, self.preprocess_drops, self.worker.preprocessing)
            except BaseException as e:  # noqa: BLE001 - preprocess_sample never raises for a payload
                out.set_exception(e)
                if done is not None:
                    done.set()
                return
            self._run.submit(decide, ready, (time.perf_counter() - t0) * 1e3)

        self._pre.submit(prepare)
        return out

    def status(self) -> dict[str, Any]:
        return {**self.worker.status(), "preprocess_drops": dict(self.preprocess_drops)}

    def set_budget(self, mj_per_sample: float | None, power_w: float | None) -> dict[str, Any]:
        """Change the engine's budget on the engine's thread, between two samples (never during one);
        returns the budget in force (see :meth:`EngineWorker.set_budget`)."""
        return self._run.submit(self.worker.set_budget, mj_per_sample, power_w).result()

    def close(self) -> None:
        self._pre.shutdown(wait=True)
        self._run.shutdown(wait=True)


class LocalTransport(Transport):
    """Sources on threads and the engine in-process; see the module docstring.

    Args:
        stream: The ``stream`` config section.
        engine_factory: Engine factory or ``stream.engine`` name (ignored when ``engine`` is given).
        cfg: Whole config, handed to a factory given by name.
        engine: A :class:`LocalEngine` to share (not closed by :meth:`close`), or None to make one.
    """

    kind = "local"

    def __init__(self, stream: StreamConfig, engine_factory: EngineFactory | str | None = None, cfg: Any = None,
                 engine: LocalEngine | None = None):
        if engine is None and engine_factory is None:
            raise ValueError("LocalTransport needs an engine factory or a LocalEngine")
        self.stream = stream
        self._engine_factory = engine_factory
        self._cfg = cfg
        self.engine = engine
        self._own_engine = engine is None
        self.workers: dict[str, SourceWorker] = {}
        self._wake = threading.Event()
        self._futures: dict[int, Future[EngineResult]] = {}
        self._next_token = 0

    def start(self, specs: dict[str, Any], source_options: dict[str, dict[str, Any]] | None = None,
              engine_options: dict[str, Any] | None = None) -> None:
        if self.engine is None and self._engine_factory is not None:
            self.engine = LocalEngine(self._engine_factory, self._cfg)
        for name, spec in specs.items():
            cfg = spec if isinstance(spec, SourceConfig) else SourceConfig(name=name)
            backoff = Backoff(
                self.stream.reconnect_initial_s,
                max(self.stream.reconnect_max_s, self.stream.reconnect_initial_s),
                max_attempts=self.stream.max_reconnects,
            )
            self.workers[name] = SourceWorker(
                spec, cfg.queue_size, cfg.queue_policy, self.stream.audio_rate_hz, backoff, wake=self._wake
            )

    def wait_ready(self, timeout_s: float) -> dict[str, str]:
        return {**{name: "local" for name in self.workers}, "engine": "local"}

    def poll_sources(self, wait_s: float) -> list[tuple[str, list[SensorMessage] | BaseException]]:
        if wait_s > 0 and not any(len(w.queue) for w in self.workers.values()) and not self._any_done():
            self._wake.wait(wait_s)
        self._wake.clear()
        return [(name, w.drain()) for name, w in self.workers.items()]

    def _any_done(self) -> bool:
        return any(f.done() for f in self._futures.values())

    def clock_probe(self, name: str, timeout_s: float) -> ClockProbe | None:
        sent_ns = time.monotonic_ns()
        source_ns = self.workers[name].clock_ns()
        return ClockProbe(sent_ns, int(source_ns), time.monotonic_ns())

    def poll_health(self) -> list[tuple[str, dict[str, Any] | BaseException]]:
        out: list[tuple[str, dict[str, Any] | BaseException]] = []
        for name, w in self.workers.items():
            try:
                out.append((name, w.health()))
            except Exception as e:  # noqa: BLE001 - a source's health() bug is counted by the driver
                out.append((name, e))
        return out

    def _started_engine(self) -> LocalEngine:
        if self.engine is None:
            raise RuntimeError("LocalTransport: call start() first")
        return self.engine

    def submit(self, sample: Sample) -> Hashable:
        token = self._next_token
        self._next_token += 1
        self._futures[token] = self._started_engine().submit(sample, done=self._wake)
        return token

    def collect(self, timeout_s: float) -> list[tuple[Hashable, EngineResult | BaseException]]:
        if not self._futures:
            return []
        if timeout_s > 0 and not self._any_done():
            wait(list(self._futures.values()), timeout=timeout_s, return_when=FIRST_COMPLETED)
        out: list[tuple[Hashable, EngineResult | BaseException]] = []
        for token in [t for t, f in self._futures.items() if f.done()]:
            future = self._futures.pop(token)
            error = future.exception()
            out.append((token, error if error is not None else future.result()))
        return out

    def engine_status(self) -> dict[str, Any] | None:
        return None if self.engine is None else self.engine.status()

    def set_budget(self, mj_per_sample: float | None, power_w: float | None) -> dict[str, Any]:
        return self._started_engine().set_budget(mj_per_sample, power_w)

    def stop_sources(self, timeout_s: float) -> None:
        for w in self.workers.values():
            w.stop()

    def close(self) -> None:
        if self.engine is not None and self._own_engine:
            self.engine.close()


class LocalPipeline(PipelineDriver):
    """The driver in one process (``runtime: local``): :class:`PipelineDriver` over a :class:`LocalTransport`.

    Args:
        stream: The ``stream`` config section.
        engine_factory: Zero-argument engine factory or a ``stream.engine`` name (called with ``cfg``).
        cfg: Whole config, handed to a factory given by name.
        sources: Name -> SourceConfig or factory instead of ``stream.sources``.
        engine: A :class:`LocalEngine` shared with other pipelines in this process.
        **kwargs: ``recorder``, ``on_decision``, ``decision_log``, ``keep_decisions``,
            ``keep_received`` (see :class:`PipelineDriver`).
    """

    def __init__(self, stream: StreamConfig, engine_factory: EngineFactory | str | None = None, cfg: Any = None,
                 sources: dict[str, SourceConfig | SourceFactory] | None = None,
                 engine: LocalEngine | None = None, **kwargs: Any):
        super().__init__(stream, LocalTransport(stream, engine_factory, cfg, engine=engine), sources=sources,
                         **kwargs)
