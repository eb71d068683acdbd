"""The whole live run behind ``exitflow run`` / ``exitflow record`` / ``exitflow budget set``: the top
of :mod:`exitflow.pipeline.live`, the one module that may import every room below it.

``stream.runtime`` (``auto``: see :func:`~exitflow.pipeline.live.runtime.local.choose_runtime`)
picks the in-process runtime (no Ray) or Ray; recording, the live view, the Foxglove server, the
opt-in Prometheus endpoint (``stream.metrics_port``) and ``exitflow budget set`` work the same on
both. Ray is imported only when the Ray runtime is chosen (:class:`_RayRuntime`), so a local run
never loads it: that is start-up time and memory a single device does not pay (docs/streaming.md).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exitflow.pipeline.config import RayConfig, ServiceConfig, SourceConfig, dump_config, resolve_path
from exitflow.pipeline.data.roots import data_root
from exitflow.pipeline.live.core.endpoints import SourceFactory
from exitflow.pipeline.live.core.failures import LiveRuntimeError
from exitflow.pipeline.live.recording.writer import RecordingWriter, recording_metadata
from exitflow.pipeline.live.runtime.control import ControlServer, running_pipelines, send_budget
from exitflow.pipeline.live.runtime.driver import PipelineDriver
from exitflow.pipeline.live.runtime.local import LocalPipeline, choose_runtime
from exitflow.pipeline.live.runtime.preprocess import IMAGE_SIDE, model_preprocessing
from exitflow.pipeline.live.runtime.workers import EngineFactory
from exitflow.pipeline.live.sources.robot import demo_robot
from exitflow.pipeline.live.views.foxglove import FanOut, FoxgloveLiveServer
from exitflow.pipeline.live.views.metrics import MetricsExporter

log = logging.getLogger(__name__)


class _RayRuntime:
    """What :func:`run_live` needs of the Ray runtime, imported only when a run chooses it."""

    def __init__(self) -> None:
        # imported here, not at the top: a local run must not load Ray (see the module docstring)
        from exitflow.pipeline.live.runtime.ray.connect import start_ray, stop_ray
        from exitflow.pipeline.live.runtime.ray.pipeline import RayPipeline
        from exitflow.pipeline.live.runtime.ray.placement import job_runtime_env

        self.pipeline_cls = RayPipeline
        self.start_ray = start_ray
        self.stop_ray = stop_ray
        self.job_runtime_env = job_runtime_env

    @staticmethod
    def set_budget(ray_cfg: RayConfig, mj_per_sample: float | None, power_w: float | None,
                   service_app: str) -> dict[str, Any]:
        from exitflow.pipeline.live.runtime.ray.control import set_ray_budget  # Ray only when needed

        return set_ray_budget(ray_cfg, mj_per_sample, power_w, service_app)


def resolve_source_paths(cfg: Any) -> tuple[SourceConfig, ...]:
    """``stream.sources`` with file paths made absolute against the config file's folder."""
    from exitflow.pipeline.live.sources.camera import STREAM_PREFIXES

    out = []
    for spec in cfg.stream.sources:
        is_file = spec.kind in ("audio_file", "text_file", "text_jsonl") or (
            spec.kind == "camera" and not spec.uri.isdigit() and not spec.uri.startswith(STREAM_PREFIXES)
        )
        out.append(dataclasses.replace(spec, uri=str(resolve_path(cfg, spec.uri))) if is_file else spec)
    return tuple(out)


def demo_sources(cfg: Any) -> dict[str, SourceFactory]:
    """What a run plays when ``stream.sources`` is empty: the simulated digit robot
    (:func:`~exitflow.pipeline.live.sources.robot.demo_robot`: AV-MNIST digits as frames, the test
    speaker's spoken digits as PCM, the labels on a side topic, from the data root's test files)."""
    robot = demo_robot(data_root(cfg), cfg.stream.audio_window_s, cfg.stream.audio_rate_hz)
    log.warning("stream.sources is empty: playing the simulated digit robot %r (digits it was trained on, "
                "with labels); list your sensors under stream.sources (docs/streaming.md)", robot.name)
    return {robot.name: robot}


def edge_preprocessing(stream: Any, cfg: Any, record_path: Path | None, runtime: str) -> Any:
    """``stream`` with frame reduction at the source turned off where it would lose something: when
    recording (the recording keeps the full frames a data set needs) or when the model's image side
    is not the one the source reduces to (a bundle of an imported set)."""
    if runtime != "ray" or not stream.preprocess_at_source:
        return stream
    reason = ("recording keeps full frames" if record_path is not None else
              "the model's image side differs" if model_preprocessing(cfg).image_side != IMAGE_SIDE else None)
    if reason is None:
        return stream
    log.info("stream.preprocess_at_source off for this run: %s", reason)
    return dataclasses.replace(stream, preprocess_at_source=False)


def run_live(
    cfg: Any,
    record: str | None = None,
    duration_s: float | None = None,
    view: bool = True,
    engine_factory: EngineFactory | str | None = None,
    on_decision: Callable[[Any], None] | None = None,
    stop: threading.Event | None = None,
    decision_log: str | None = None,
    foxglove: bool | None = None,
) -> dict[str, Any]:
    """Start the pipeline (in-process or on Ray, per ``stream.runtime``), run until ``duration_s`` or
    Ctrl-C, shut down; returns the last snapshot.

    Args:
        cfg: The whole config (``stream`` and ``ray`` sections are used).
        record: MCAP file for raw streams and decisions (overrides ``stream.record``).
        duration_s: Stop after this long (overrides ``stream.duration_s``; None runs until Ctrl-C).
        view: Show the rich live view.
        engine_factory: Overrides ``stream.engine``.
        on_decision: Called on the driver with every :class:`Decision`.
        stop: Set it (from another thread) to end the run.
        decision_log: JSONL file receiving every decision and outage event as it happens.
        foxglove: Serve the live topics on a Foxglove WebSocket server (overrides ``stream.foxglove``).

    Raises:
        CircuitOpenError: when every sample failed for ``stream.circuit_breaker_s`` seconds.
        LiveRuntimeError: when Ray or the actors cannot start.
        OSError: when ``stream.metrics_port`` cannot be bound.
    """
    from exitflow.pipeline.live.views.terminal import LiveView

    stream = dataclasses.replace(cfg.stream, sources=resolve_source_paths(cfg))
    # a command-line path is relative to the working folder, stream.record to the config's folder
    record_path = Path(record) if record else (resolve_path(cfg, stream.record) if stream.record else None)
    duration_s = duration_s if duration_s is not None else stream.duration_s
    live_server = None
    if stream.foxglove if foxglove is None else foxglove:
        live_server = FoxgloveLiveServer(stream.foxglove_host, stream.foxglove_port, stream.record_image_format,
                                         stream.record_jpeg_quality)
    runtime = choose_runtime(cfg)
    stream = edge_preprocessing(stream, cfg, record_path, runtime)
    metrics = None
    try:
        if stream.metrics_port is not None:
            metrics = MetricsExporter(stream.metrics_port, stream.metrics_host)
            log.info("metrics on http://%s:%d/metrics", metrics.host, metrics.port)
        on_ray = _RayRuntime() if runtime == "ray" else None
        started = on_ray.start_ray(cfg.ray, runtime_env=on_ray.job_runtime_env(stream, cfg.ray)) if on_ray else False
    except BaseException:
        if live_server is not None:
            live_server.close()
        if metrics is not None:
            metrics.close()
        raise
    recorder = RecordingWriter(
        record_path, stream.record_chunk_kib * 1024, image_format=stream.record_image_format,
        jpeg_quality=stream.record_jpeg_quality, image_max_side_px=stream.record_image_max_side_px,
        flush_interval_s=stream.record_flush_s, metadata=recording_metadata(cfg), config_yaml=dump_config(cfg),
    ) if record_path is not None else None
    sink = FanOut(recorder, live_server) if recorder is not None and live_server is not None else (
        recorder or live_server)
    pipeline_cls = on_ray.pipeline_cls if on_ray is not None else LocalPipeline
    pipe: PipelineDriver = pipeline_cls(
        stream,
        engine_factory or stream.engine,
        cfg=cfg,
        sources=None if stream.sources else demo_sources(cfg),
        recorder=sink,
        on_decision=on_decision,
        decision_log=decision_log,  # a command-line path: relative to the working folder
    )
    snap: dict[str, Any] = {}
    control = None
    try:
        pipe.start()
        pipe.wait_ready()
        if on_ray is None:  # on Ray, `exitflow budget set` finds the named engine actor instead
            control = ControlServer(pipe.set_budget, cfg.ray.namespace)

        budget_cfg = getattr(cfg, "budget", None)  # the set-point until `exitflow budget set` changes it
        configured = {} if budget_cfg is None or budget_cfg.mode == "off" else {
            budget_cfg.mode: getattr(budget_cfg, budget_cfg.mode)}

        def publish(p: PipelineDriver) -> dict[str, Any]:
            snap = p.snapshot()
            if not snap.get("budget") and configured:
                snap["budget"] = dict(configured)
            if metrics is not None:
                metrics.publish("live", snap)
            if sink is not None:  # power, budget set-point and latency on /status
                try:
                    sink.write_status(snap)
                except Exception as e:  # noqa: BLE001 - counted like a failed decision write
                    p.stats.count_drop("log", f"status_write:{type(e).__name__}")
            return snap

        def record_status(p: PipelineDriver) -> None:
            publish(p)

        if view and stream.live_view:
            with LiveView() as live:
                pipe.run(duration_s, stop=stop, on_tick=lambda p: live.update(publish(p)))
        else:
            tick = record_status if sink is not None or metrics is not None else None
            pipe.run(duration_s, stop=stop, on_tick=tick)
    except KeyboardInterrupt:
        log.warning("interrupted; shutting down")
    finally:
        if control is not None:
            control.close()
        snap = pipe.snapshot()
        pipe.shutdown()
        if metrics is not None:
            metrics.close()
        if started and on_ray is not None:
            on_ray.stop_ray()
    return snap


def set_running_budget(
    ray_cfg: RayConfig, mj_per_sample: float | None, power_w: float | None, off: bool = False,
    service_app: str = ServiceConfig.name,
) -> dict[str, Any]:
    """Set, change or (``off``) remove the budget of the running pipeline of ``ray_cfg.namespace``;
    a pipeline started without a budget accepts one.

    A local pipeline (``runtime: local``) is reached through its control socket
    (:mod:`~exitflow.pipeline.live.runtime.control`); when none runs on this machine, the engine
    actor of a Ray pipeline in the cluster at ``ray_cfg.address`` (or auto) is, and without one the
    inference service ``service_app`` on Ray Serve (its replicas reconfigured in place).

    Raises:
        LiveRuntimeError: when the arguments are wrong, or no running exitflow pipeline is found.
    """
    if off and (mj_per_sample is not None or power_w is not None):
        raise LiveRuntimeError("give either `off` or a budget (--mj-per-sample X or --power-w W), not both")
    if not off and mj_per_sample is None and power_w is None:
        raise LiveRuntimeError("give a budget: --mj-per-sample X or --power-w W (or `exitflow budget set off`)")
    for name, value in (("--mj-per-sample", mj_per_sample), ("--power-w", power_w)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise LiveRuntimeError(f"{name} must be a positive number, got {value}")
    local = running_pipelines(ray_cfg.namespace)
    if len(local) > 1:
        pids = ", ".join(str(r["pid"]) for r in local)
        raise LiveRuntimeError(f"{len(local)} local pipelines run in namespace {ray_cfg.namespace!r} (pids {pids}); "
                               "stop all but one, or give each its own ray.namespace")
    if local:
        return send_budget(local[0], mj_per_sample, power_w)
    return _RayRuntime.set_budget(ray_cfg, mj_per_sample, power_w, service_app)
