"""exitflow: energy-aware multimodal early-exit inference for robots and AIoT devices.

The small, stable Python API (everything else stays importable under ``exitflow.pipeline``,
``exitflow.encoders``, ``exitflow.scheduler`` and ``exitflow.devices``, but is internal)::

    import exitflow

    cfg = exitflow.load_config(overrides=["bench.limit=100"])   # the packaged default + overrides
    system = exitflow.build_engine(cfg)                           # the adaptive engine ("exitflow")
    samples = exitflow.load_samples(cfg, split="test", limit=5)
    for decision in exitflow.process_batch(system, samples):
        print(decision.prediction, decision.label, decision.macs)
    rows = exitflow.bench(cfg, systems=("lf", "exitflow"), limit=100)
    with exitflow.open_meter(cfg) as meter:
        meter.begin_window("step")
        ...
        print(meter.end_window("step").energy_mj)

Live sensors: ``run = exitflow.start_live(cfg, on_decision=print)``, then ``run.set_budget(20.0)``
and ``run.stop()``.

A model bundle (``exitflow export DIR``, docs/bundles.md) loads from anywhere::

    bundle = exitflow.load_bundle("bundles/avmnist")    # verified: format version + sha256 of every file
    decision = bundle.engine.process(sample)            # the adaptive engine, with the bundle's profile
    print(bundle.class_name(decision.prediction), bundle.preprocessing, bundle.config.scheduler.lam)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exitflow.pipeline.bundles.load import Bundle
    from exitflow.pipeline.config import Config
    from exitflow.pipeline.messages import Decision, Sample

__version__ = "0.1.0"
__all__ = [
    "LiveRun",
    "bench",
    "build_engine",
    "load_bundle",
    "load_config",
    "load_samples",
    "open_meter",
    "process",
    "process_batch",
    "start_live",
]


def load_config(path: str | None = None, overrides: Iterable[str] = ()) -> Config:
    """The config at ``path`` (default: ``$EXITFLOW_HOME/config.yaml`` or the packaged one) with
    ``--set``-style ``overrides`` (``"section.key=value"``); raises ``ConfigError`` listing every problem."""
    from exitflow.pipeline.config import load_config as _load

    return _load(path, list(overrides))


def build_engine(cfg: Config, dataset: str | None = None, system: str = "exitflow") -> Any:
    """A named inference system for ``dataset`` (default ``data.dataset``): ``exitflow`` (the adaptive
    engine), ``full``, ``rexit``, ``lf``, ``image`` or ``audio``; it has ``process(sample) -> Decision``."""
    from exitflow.pipeline.inference.systems import load_system

    return load_system(cfg, system, dataset or cfg.data.dataset)


def load_bundle(path: str, cfg: Config | None = None, overrides: Iterable[str] = ()) -> Bundle:
    """The model bundle at ``path``, verified and ready: ``.engine``, ``.system(name)``, ``.config``,
    ``.classes``, ``.preprocessing``; ``cfg`` (default :func:`load_config`) says where it runs (meter,
    device, budget). Raises ``BundleError`` (one line naming the file) for a damaged bundle or one of
    another format version."""
    from exitflow.pipeline.bundles.load import load_bundle as _load

    return _load(path, cfg, list(overrides))


def load_samples(cfg: Config, split: str = "test", limit: int | None = None, dataset: str | None = None) -> list[Sample]:
    """Samples of a built-in data set split, ready for :func:`process`."""
    from exitflow.pipeline.data.avmnist import load_split
    from exitflow.pipeline.evaluation.replay import split_samples

    return list(split_samples(load_split(cfg, split, dataset or cfg.data.dataset, progress=False), limit))


def process(system: Any, sample: Sample) -> Decision:
    """One sample through ``system``: the :class:`Decision` (prediction, exits, MACs, energy, latency)."""
    return system.process(sample)


def process_batch(system: Any, samples: Iterable[Sample]) -> list[Decision]:
    """Every sample through ``system``, each with its own exit decisions, in order."""
    return [system.process(s) for s in samples]


def bench(
    cfg: Config, systems: Sequence[str] | None = None, dataset: str | None = None, split: str = "test",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Systems side by side on the same samples: one row each (accuracy, MACs, ms and mJ per sample)."""
    from exitflow.pipeline.evaluation.bench import bench as _bench
    from exitflow.pipeline.evaluation.bench import bench_inputs, default_systems, json_rows
    from exitflow.pipeline.meters import open_meter as _open

    parts, samples = bench_inputs(cfg, dataset or cfg.data.dataset, split, limit or cfg.bench.limit)
    with _open(cfg) as meter:
        return json_rows(_bench(parts, samples, meter, tuple(systems or default_systems(cfg))))


def open_meter(cfg: Config) -> Any:
    """The configured power meter (``power.meter``): ``begin_window(name)`` / ``end_window(name)``."""
    from exitflow.pipeline.meters import open_meter as _open

    return _open(cfg)


class LiveRun:
    """A live pipeline running in a background thread (see :func:`start_live`)."""

    def __init__(self, cfg: Config, on_decision: Callable[[Decision], None] | None, record: str | None):
        from exitflow.pipeline.live.run import run_live

        self._cfg = cfg
        self._stop = threading.Event()
        self.snapshot: dict[str, Any] = {}
        self.error: BaseException | None = None

        def main() -> None:
            try:
                self.snapshot = run_live(cfg, record=record, view=False, on_decision=on_decision, stop=self._stop)
            except BaseException as e:  # handed to the caller by stop()
                self.error = e

        self._thread = threading.Thread(target=main, name="exitflow-live", daemon=True)
        self._thread.start()

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Change the running engine's energy budget."""
        from exitflow.pipeline.live.run import set_running_budget

        return set_running_budget(self._cfg.ray, mj_per_sample, power_w)

    def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """End the run, wait for shutdown; returns the last statistics snapshot (re-raises a run error)."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        return self.snapshot


def start_live(cfg: Config, on_decision: Callable[[Decision], None] | None = None, record: str | None = None) -> LiveRun:
    """Start the live pipeline of ``cfg.stream`` (sources, sync, engine) and return its handle."""
    return LiveRun(cfg, on_decision, record)
