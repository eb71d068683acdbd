"""The single-pass systems on the compiled backend: ``full`` / ``static`` (a fixed truncation of the
CNN family) and the LeNet baselines (``lf``, ``image``, ``audio``), each one graph, one call a sample.

A fair comparison gives the systems a user could pick instead of exitflow the same backend and
their best form on it: a single-pass system has nothing to decide, so its whole network is one
graph (no per-exit scores, no exit heads other than the embeddings its fusion reads). The bench
prints the backend of every row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.call_graph import FusedHead, PooledHead, classifier_macs, map_shapes
from exitflow.encoders.cnn import CNNEarlyExitEncoder, ExitHead
from exitflow.encoders.fusion_grid import ExitGridFusion, grid_key
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.inference.backends import Backend
from exitflow.pipeline.inference.compiled_walk import cnn_family
from exitflow.pipeline.inference.engine import EngineError
from exitflow.pipeline.messages import Decision, Sample


class TruncationGraph(nn.Module):
    """Every modality through its blocks up to a fixed exit, that exit's embedding, the grid head -> class."""

    def __init__(self, encoders: Mapping[str, CNNEarlyExitEncoder], fusion: ExitGridFusion, exits: Mapping[str, int],
                 logits: bool = False):
        super().__init__()
        self.logits = logits  # return the calibrated logits (B, C), not the class (the last rung mixes them)
        self.exits = dict(exits)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.passthrough = fusion.passthrough
        self.heads = nn.ModuleDict()
        for m, j in self.exits.items():
            c, h, w = map_shapes(encoders[m])[j]
            head = cast(ExitHead, encoders[m].heads[j])
            self.heads[m] = PooledHead(head, float(encoders[m].temperatures[j]), c, h, w, encoders[m].config.head_pool)
        self.modalities = list(self.exits)
        self.fused = FusedHead(fusion, self.exits) if not fusion.passthrough else None

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        embeddings, logits = {}, {}
        for m, x in zip(self.modalities, inputs, strict=True):
            enc = cast(CNNEarlyExitEncoder, self.encoders[m])
            head = cast(PooledHead, self.heads[m])
            h = enc.stem(x)  # (B, C0, H/s, W/s)
            for block in enc.blocks[: self.exits[m] + 1]:
                h = block(h)  # (B, C_j, H_j, W_j)
            if self.fused is None:
                logits[m], embeddings[m] = head(h)
            else:  # the grid reads the embedding only: the exit's classifier is not computed
                embeddings[m] = head.embed(h)  # (B, D)
        out = logits[self.modalities[0]] if self.fused is None else self.fused(
            [embeddings[m] for m in self.fused.present])  # (B, C)
        return out if self.logits else out.argmax(dim=-1)


def truncation_macs(encoders: Mapping[str, CNNEarlyExitEncoder], fusion: ExitGridFusion, exits: Mapping[str, int]) -> int:
    """Per-sample MACs of :class:`TruncationGraph`: blocks, the exits' pools (+ classifier for a one-modality
    grid) and the grid head."""
    total = 0
    for m, j in exits.items():
        enc = encoders[m]
        total += sum(enc.segment_macs()[: j + 1]) + enc.head_macs()[j]
        if not fusion.passthrough:
            total -= classifier_macs(enc, j)  # not computed: the grid reads the embedding
    if not fusion.passthrough:
        full = {m: exits.get(m, len(fusion.dims[m]) - 1) for m in fusion.modalities}
        total += fusion.head_macs[grid_key(full, fusion.modalities)]
    return int(total)


class _Inputs:
    """Payload -> (1, C, H, W) float32 array with the shape checked (one error type for every system)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]):
        self.shapes = dict(shapes)

    def __call__(self, name: str, sample: Sample) -> list[np.ndarray]:
        absent = [m for m in self.shapes if m in sample.missing or m not in sample.payloads]
        if absent:
            raise ExitflowError(
                f"system {name!r} needs {', '.join(absent)} but sample {sample.sample_id} lacks it; "
                f"use an adaptive system (exitflow) for samples with missing modalities")
        out = []
        for m, want in self.shapes.items():
            x = np.ascontiguousarray(sample.payloads[m], dtype=np.float32)
            if x.shape != want:
                raise ExitflowError(f"{m} input must have shape {want}, got {x.shape}")
            if not np.isfinite(x).all():
                raise ExitflowError(f"{m} input of sample {sample.sample_id} has NaN/inf values")
            out.append(x[None])
        return out


class CompiledSingle:
    """A single-pass system as one compiled graph (see the module doc)."""

    def __init__(self, name: str, graph: nn.Module, shapes: Mapping[str, tuple[int, ...]], macs: int,
                 backend: Backend, exits: Mapping[str, int] | None = None):
        self.name = name
        self.modalities = tuple(shapes)
        self.exits = dict(exits or {})
        self.macs = int(macs)
        self.backend = backend.name
        examples = [np.zeros((2, *s), dtype=np.float32) for s in shapes.values()]
        names = [f"x_{m}" for m in shapes]
        self.call = backend.compile(graph.eval(), examples, names, ["pred"], names)
        self._inputs = _Inputs(shapes)

    def process(self, sample: Sample) -> Decision:
        start = time.perf_counter()
        pred = int(self.call(self._inputs(self.name, sample))[0][0])
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Decision(
            sample_id=sample.sample_id, prediction=pred, label=sample.label, system=self.name,
            order=list(self.modalities), exits=dict(self.exits), macs=self.macs,
            latency_ms={"model": latency_ms, "total": latency_ms}, timestamp_ns=sample.timestamp_ns)

    def process_batch(self, samples: list[Sample]) -> list[Decision | Exception]:
        """One call over the batch (samples with bad inputs get their own error)."""
        start = time.perf_counter()
        rows, arrays = [], []
        results: list[Decision | Exception | None] = [None] * len(samples)
        for i, s in enumerate(samples):
            try:
                arrays.append(self._inputs(self.name, s))
                rows.append(i)
            except ExitflowError as e:
                results[i] = e
        if rows:
            stacked = [np.concatenate([a[k] for a in arrays]) for k in range(len(self.modalities))]
            preds = self.call(stacked)[0]
            ms = (time.perf_counter() - start) * 1000.0
            for i, p in zip(rows, preds, strict=True):
                s = samples[i]
                results[i] = Decision(
                    sample_id=s.sample_id, prediction=int(p), label=s.label, system=self.name,
                    order=list(self.modalities), exits=dict(self.exits), macs=self.macs,
                    latency_ms={"model": ms, "total": ms}, timestamp_ns=s.timestamp_ns)
        return [r if r is not None else ExitflowError("no result") for r in results]


def one_by_one(process: Callable[[Sample], Decision], samples: list[Sample]) -> list[Decision | Exception]:
    """``process`` over ``samples`` one at a time, a sample's ExitflowError in its own place (the fallback of
    a batch that cannot run as one call)."""
    out: list[Decision | Exception] = []
    for s in samples:
        try:
            out.append(process(s))
        except ExitflowError as e:
            out.append(e)
    return out


class CompiledTruncation:
    """``full`` / ``static``: a graph per set of present modalities (the absent ones enter the grid as its
    placeholders, as the eager :class:`TruncatedSystem` fuses them), compiled on first use."""

    def __init__(self, name: str, encoders: Mapping[str, CNNEarlyExitEncoder], fusion: ExitGridFusion,
                 exits: Mapping[str, int], backend: Backend):
        for m, k in exits.items():
            if not 0 <= k < encoders[m].num_exits:
                raise ExitflowError(f"{name}: exit {k} of {m} does not exist (it has {encoders[m].num_exits})")
        self.name, self.encoders, self.fusion, self.exits = name, dict(encoders), fusion, dict(exits)
        self.modalities = tuple(exits)
        self.backend = backend.name
        self._backend = backend
        self._systems: dict[tuple[str, ...], CompiledSingle] = {}
        self.macs = self._system(self.modalities).macs  # every modality present, compiled now

    def _system(self, present: tuple[str, ...]) -> CompiledSingle:
        system = self._systems.get(present)
        if system is None:
            encs = {m: self.encoders[m] for m in present}
            exits = {m: self.exits[m] for m in present}
            shapes = {m: (e.config.num_channels, e.config.input_size, e.config.input_size) for m, e in encs.items()}
            graph = TruncationGraph(encs, self.fusion, exits)
            system = CompiledSingle(self.name, graph, shapes, truncation_macs(encs, self.fusion, exits),
                                    self._backend, exits)
            self._systems[present] = system
        return system

    def _present(self, sample: Sample) -> tuple[str, ...]:
        present = tuple(m for m in self.modalities if m in sample.payloads and m not in sample.missing)
        if not present:
            raise ExitflowError(f"sample {sample.sample_id} has none of {self.modalities}")
        return present

    def process(self, sample: Sample) -> Decision:
        present = self._present(sample)
        decision = self._system(present).process(sample)
        decision.missing = [m for m in self.modalities if m not in present]
        return decision

    def process_batch(self, samples: list[Sample]) -> list[Decision | Exception]:
        """Samples with every modality in one call; the others one by one (each with its own errors)."""
        whole = [s for s in samples if all(m in s.payloads and m not in s.missing for m in self.modalities)]
        if len(whole) == len(samples):
            return self._system(self.modalities).process_batch(samples)
        return one_by_one(self.process, samples)


def compiled_truncation(name: str, encoders: Mapping[str, EarlyExitEncoder], fusion: Any,
                        exits: Mapping[str, int], backend: Backend) -> CompiledTruncation:
    """``full`` (every last exit) or ``static`` (any fixed exits) on the compiled backend (the CNN family with
    the exit grid; EngineError otherwise)."""
    cnn, grid = cnn_family(encoders, fusion)
    if grid is None:
        raise EngineError(f"{name}: a compiled truncation fuses with the exit grid; there is none")
    return CompiledTruncation(name, cnn, grid, exits, backend)


class _BaselineGraph(nn.Module):
    """A LeNet late-fusion / uni-modal baseline with positional inputs -> class."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.modalities = list(model.modalities)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.modalities, inputs, strict=True))).argmax(dim=1)


def compiled_baseline(name: str, model: Any, macs: int, shapes: Mapping[str, tuple[int, ...]],
                      backend: Backend) -> CompiledSingle:
    """A trained LeNet baseline (``encoders/baseline.py``) as one graph."""
    return CompiledSingle(name, _BaselineGraph(model), {m: tuple(shapes[m]) for m in model.modalities}, macs, backend)
