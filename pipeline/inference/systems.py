"""Named inference systems that replay and bench run on samples: ``lf``, ``image``, ``audio``, ...

A :class:`System` turns one :class:`Sample` into a :class:`Decision`. Baselines run their
whole network; adaptive systems (added by the engine) decide per sample what to run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from exitflow.pipeline.artifacts import baseline_dataset
from exitflow.pipeline.config import Config
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.inference.engine import apply_engine_settings
from exitflow.pipeline.messages import Decision, Sample


class System(Protocol):
    name: str
    modalities: tuple[str, ...]

    def process(self, sample: Sample) -> Decision: ...


class BaselineSystem:
    """A trained late-fusion or uni-modal baseline: always runs its whole network."""

    def __init__(self, cfg: Config, name: str, dataset: str = "avmnist"):
        from exitflow.encoders.baseline import measure_macs
        from exitflow.pipeline.inference.loading import load_baseline

        self.name = name
        self.model = load_baseline(cfg, name, dataset)
        self.modalities = self.model.modalities
        self.macs = measure_macs(self.model)

    @torch.no_grad()
    def process(self, sample: Sample) -> Decision:
        absent = [m for m in self.modalities if m in sample.missing or m not in sample.payloads]
        if absent:
            raise ExitflowError(
                f"system {self.name!r} needs {', '.join(absent)} but sample {sample.sample_id} lacks it; "
                f"use an adaptive system (exitflow) for samples with missing modalities"
            )
        start = time.perf_counter()
        inputs = {m: torch.as_tensor(np.asarray(sample.payloads[m], dtype=np.float32))[None] for m in self.modalities}
        logits = self.model(inputs)  # (1, C)
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Decision(
            sample_id=sample.sample_id,
            prediction=int(logits.argmax(dim=1).item()),
            label=sample.label,
            system=self.name,
            order=list(self.modalities),
            macs=self.macs,
            latency_ms={"model": latency_ms, "total": latency_ms},
            timestamp_ns=sample.timestamp_ns,
        )


def baseline_system(cfg: Config, name: str, dataset: str = "avmnist") -> System:
    """A LeNet baseline on the configured backend: one ONNX Runtime graph (``engine.backend:
    onnxruntime`` on the CPU) or the eager model (:class:`BaselineSystem`)."""
    system = BaselineSystem(cfg, name, dataset)
    if cfg.engine.backend != "onnxruntime" or cfg.engine.device != "cpu":
        return system
    from exitflow.encoders.baseline import INPUT_SHAPES
    from exitflow.pipeline.inference.backends import open_backend
    from exitflow.pipeline.inference.compiled_systems import compiled_baseline

    return compiled_baseline(name, system.model, system.macs, INPUT_SHAPES,
                             open_backend("onnxruntime", cfg.engine.num_threads))


SystemFactory = Callable[[Config, str], System]
_FACTORIES: dict[str, SystemFactory] = {
    "lf": lambda cfg, ds: baseline_system(cfg, "lf", baseline_dataset(ds, "lf")),
    "image": lambda cfg, ds: baseline_system(cfg, "image", baseline_dataset(ds, "image")),
    "audio": lambda cfg, ds: baseline_system(cfg, "audio", baseline_dataset(ds, "audio")),
    "full": lambda cfg, ds: _adaptive(cfg, ds).full(),
    "exitflow": lambda cfg, ds: _exitflow(cfg, ds),
    "exitflow-fixed": lambda cfg, ds: _adaptive(cfg, ds).exitflow(meter=_meter(cfg), name="exitflow-fixed"),
    "rexit": lambda cfg, ds: _adaptive(cfg, ds).rexit(),
}


def _meter(cfg: Config):
    """The configured power meter, so a loaded ``exitflow`` reports energy (and can follow a budget)."""
    from exitflow.pipeline.meters import open_meter, with_trace

    return with_trace(cfg, open_meter(cfg))


def _exitflow(cfg: Config, dataset: str) -> System:
    """``exitflow`` with online self-recalibration when the ``recalibration`` section has it on (the default):
    wherever it runs on a stream (replay, live), the shadow full path keeps its thresholds honest."""
    from exitflow.pipeline.inference.shadow import recalibrated

    parts = _adaptive(cfg, dataset)
    return recalibrated(cfg, parts, parts.exitflow(meter=_meter(cfg)))


def _adaptive(cfg: Config, dataset: str):
    from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts

    return AdaptiveParts(cfg, dataset)


def system_names() -> tuple[str, ...]:
    return tuple(_FACTORIES)




def load_system(cfg: Config, name: str, dataset: str = "avmnist") -> System:
    apply_engine_settings(cfg)
    if name not in _FACTORIES:
        raise ExitflowError(f"unknown system {name!r}; choose one of {', '.join(_FACTORIES)}")
    return _FACTORIES[name](cfg, dataset)
