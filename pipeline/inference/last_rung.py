"""The last rung at run time (issue 25 item 2; the mix is :mod:`encoders.last_rung`).

A sample whose walk ran every modality to its last exit and still passed no check (the engines hand its
final fused logits over in ``Decision.final_logits``) also runs the rung model (the LeNet late-fusion
baseline ``lf``); its answer is the mix of both models. ``full`` becomes that strongest path in one graph:
the CNN's last exits fused, ``lf``, mixed (:class:`StrongestPath`).

Both run on the engine's backend: one ONNX Runtime graph (``engine.backend: onnxruntime``) or eager torch.
The rung's MACs, time and energy are added to the decision's (energy priced the way the engine prices its
own samples: the long meter window's mean power times the rung's wall time, or a window of its own).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from exitflow.encoders.baseline import INPUT_SHAPES, LateFusion, measure_macs
from exitflow.encoders.cnn import CNNEarlyExitEncoder
from exitflow.encoders.fusion_grid import ExitGridFusion
from exitflow.encoders.last_rung import RUNG_KEY, MixHead
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.inference.backends import Backend
from exitflow.pipeline.inference.compiled_systems import (
    CompiledSingle,
    TruncationGraph,
    one_by_one,
    truncation_macs,
)
from exitflow.pipeline.inference.energy_windows import measure_extra
from exitflow.pipeline.messages import Decision, Sample
from exitflow.scheduler.policy import FUSION_KEY
from exitflow.scheduler.rules import passes, scores_from_probs


class RungGraph(nn.Module):
    """The rung model's inputs and the CNN's final logits -> (class (B,), mixed log-probabilities (B, C))."""

    def __init__(self, model: LateFusion, weight: float):
        super().__init__()
        self.model, self.mix = model, MixHead(weight)
        self.modalities = list(model.modalities)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *xs, cnn_logits = inputs
        mixed = self.mix(cnn_logits, self.model(dict(zip(self.modalities, xs, strict=True))))  # (B, C)
        return mixed.argmax(dim=-1), mixed


class StrongestGraph(nn.Module):
    """``full`` with the last rung: the CNN's last exits fused, the rung model, mixed -> class (B,)."""

    def __init__(self, encoders: Mapping[str, CNNEarlyExitEncoder], fusion: ExitGridFusion, model: LateFusion,
                 weight: float):
        super().__init__()
        self.cnn = TruncationGraph(encoders, fusion, {m: e.num_exits - 1 for m, e in encoders.items()}, logits=True)
        self.rung = RungGraph(model, weight)
        self.modalities = list(encoders)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.modalities, inputs, strict=True))
        return self.rung(*[named[m] for m in self.rung.modalities], self.cnn(*inputs))[0]


class LastRung:
    """Runs the rung on the samples a walk could not answer and rewrites their decisions.

    Args:
        model: The rung model (``lf``), eval mode.
        weight: The calibrated mix weight (the profile's ``rung.weight``).
        name: The rung model's name, written into ``Decision.rung``.
        last_exits: Modality -> the CNN encoder's last exit (a decision escalates only from the full path).
        rule: The exit rule of the thresholds (``entropy`` or ``max_prob``): the final fusion's check.
        backend: The compiled backend, or None (eager torch).
    """

    def __init__(self, model: LateFusion, weight: float, name: str, last_exits: Mapping[str, int],
                 rule: str, backend: Backend | None = None):
        self.name, self.weight, self.rule = name, float(weight), rule
        self.modalities = tuple(model.modalities)
        self.last_exits = dict(last_exits)
        self.macs = measure_macs(model)
        self.graph = RungGraph(model, weight).eval()
        self.backend = backend.name if backend is not None else "torch"
        self._call = None
        if backend is not None:
            names = [f"x_{m}" for m in self.modalities] + ["cnn_logits"]
            classes = self._classes(model)
            examples = [np.zeros((2, *INPUT_SHAPES[m]), np.float32) for m in self.modalities]
            examples.append(np.zeros((2, classes), np.float32))
            self._call = backend.compile(self.graph, examples, names, ["pred", "mixed"], names)

    @staticmethod
    def _classes(model: LateFusion) -> int:
        with torch.no_grad():
            out = model({m: torch.zeros(1, *INPUT_SHAPES[m]) for m in model.modalities})
        return int(out.shape[-1])

    def escalates(self, decision: Decision, sample: Sample) -> bool:
        """Whether ``decision`` ended at the full path's fusion without passing its check (the ``rung``
        threshold in force, else ``fusion``; scored as the engines score a fused check) and the rung can
        take it over."""
        if not (decision.final_logits is not None and decision.exited_by == "fusion" and not decision.skipped
                and not decision.missing and decision.exits == self.last_exits
                and all(m in sample.payloads and m not in sample.missing for m in self.modalities)):
            return False
        threshold = decision.thresholds.get(RUNG_KEY, decision.thresholds.get(FUSION_KEY))
        if threshold is None:
            return True  # no fused check: nothing answers before the rung
        logits = np.asarray(decision.final_logits, dtype=np.float32)
        probs = np.exp(logits - logits.max())
        probs = (probs / probs.sum()).astype(np.float64)  # float32 softmax, float64 score (as the engines')
        score = scores_from_probs(self.rule, probs[None, None, :])[0, 0]
        return not bool(passes(self.rule, score, threshold))

    def run(self, samples: Sequence[Sample], cnn_logits: np.ndarray) -> np.ndarray:
        """The mixed classes (B,) of ``samples`` given the CNN's final logits (B, C)."""
        inputs = []
        for m in self.modalities:
            want = INPUT_SHAPES[m]
            arrays = [np.ascontiguousarray(s.payloads[m], dtype=np.float32) for s in samples]
            bad = [s.sample_id for s, a in zip(samples, arrays, strict=True) if a.shape != want]
            if bad:
                raise ExitflowError(f"the last rung needs {m} of shape {want}; samples {bad} differ")
            inputs.append(np.stack(arrays))
        inputs.append(np.ascontiguousarray(cnn_logits, dtype=np.float32))
        if self._call is not None:
            return np.asarray(self._call(inputs)[0])
        with torch.no_grad():
            return self.graph(*[torch.from_numpy(x) for x in inputs])[0].numpy()

    def apply(self, pairs: Sequence[tuple[Sample, Decision]], engine: Any = None) -> None:
        """Escalate the decisions of ``pairs`` that need it, in one batch; each gets the mixed class, the
        rung's MACs and its share of the rung's time (and energy, priced as ``engine`` prices its samples)."""
        todo = []
        for sample, decision in pairs:
            if self.escalates(decision, sample):
                todo.append((sample, decision))
            else:
                decision.final_logits = None  # handed over for the rung only
        if not todo:
            return
        preds, elapsed_s, mj, dyn = measure_extra(
            engine, "rung", lambda: self.run([s for s, _ in todo], np.stack([d.final_logits for _, d in todo])))
        n = len(todo)
        for (_, d), pred in zip(todo, preds, strict=True):
            d.prediction, d.rung, d.exited_by, d.final_logits = int(pred), self.name, "rung", None
            d.macs += self.macs
            d.latency_ms["rung"] = elapsed_s * 1000.0 / n
            d.latency_ms["total"] = d.latency_ms.get("total", 0.0) + elapsed_s * 1000.0 / n
            if mj is not None and d.energy_mj is not None:
                d.energy_mj += mj / n
            if dyn is not None and d.dynamic_energy_mj is not None:
                d.dynamic_energy_mj += dyn / n


class StrongestPath:
    """``full`` with a last rung: one graph when every modality is present (the CNN's full path and the rung
    model, mixed); a sample lacking one of the rung's modalities gets the CNN's full path alone (``cnn``)."""

    def __init__(self, cnn: Any, graph: StrongestGraph, macs: int, backend: Backend | None, name: str = "full"):
        self.name, self.cnn = name, cnn
        self.exits = dict(cnn.exits)
        self.modalities = tuple(graph.modalities)
        self.macs = int(macs)
        self.single: CompiledSingle | None = None
        if backend is not None:
            shapes = {m: tuple(INPUT_SHAPES[m]) for m in graph.modalities}
            self.single = CompiledSingle(name, graph, shapes, macs, backend, self.exits)
            self.backend = backend.name
        else:
            self.graph = graph.eval()
            self.backend = "torch"

    def _whole(self, sample: Sample) -> bool:
        return all(m in sample.payloads and m not in sample.missing for m in self.modalities)

    def process(self, sample: Sample) -> Decision:
        if not self._whole(sample):
            return self.cnn.process(sample)
        if self.single is not None:
            return self.single.process(sample)
        start = time.perf_counter()
        with torch.no_grad():
            xs = [torch.as_tensor(np.asarray(sample.payloads[m], np.float32))[None] for m in self.modalities]
            pred = int(self.graph(*xs)[0])
        ms = (time.perf_counter() - start) * 1000.0
        return Decision(sample_id=sample.sample_id, prediction=pred, label=sample.label, system=self.name,
                        order=list(self.modalities), exits=dict(self.exits), macs=self.macs,
                        latency_ms={"model": ms, "total": ms}, timestamp_ns=sample.timestamp_ns)

    def process_batch(self, samples: list[Sample]) -> list[Decision | Exception]:
        if self.single is not None and all(self._whole(s) for s in samples):
            return self.single.process_batch(samples)
        return one_by_one(self.process, samples)


def strongest_path(cnn_full: Any, encoders: Mapping[str, CNNEarlyExitEncoder], fusion: ExitGridFusion,
                   rung: LastRung, backend: Backend | None) -> StrongestPath:
    """``full`` with ``rung`` behind the CNN's full path ``cnn_full`` (used alone for incomplete samples)."""
    graph = StrongestGraph(encoders, fusion, rung.graph.model, rung.weight)
    last = {m: e.num_exits - 1 for m, e in encoders.items()}
    return StrongestPath(cnn_full, graph, truncation_macs(encoders, fusion, last) + rung.macs, backend)
