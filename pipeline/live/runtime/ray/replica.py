"""What one inference-service replica does with a batch, without Ray: shed, preprocess, run, measure.

:class:`ServiceReplica` is the plain class inside the Ray Serve deployment of
:mod:`~exitflow.pipeline.live.runtime.ray.deployment` (the deployment only adds ``@serve.batch``,
health checks and ``reconfigure``); tests drive it directly. For one batch of requests it

1. **sheds** by policy (:class:`ShedPolicy`) the samples that can no longer be decided in time:
   ``oldest_first`` sheds every sample that waited in the replica longer than
   ``service.shed_after_ms``; ``fair`` also, while a batch is overloaded that way, keeps each
   robot (``client``) to an equal share of a full batch (a robot's oldest samples above its share
   go first), so a robot that sends more loses more and the others keep their rate. Every
   shed sample is answered at once with a :class:`ShedDecision` carrying its reason
   (``shed:deadline``, ``shed:fair_share``), counted in :meth:`ServiceReplica.status`;
2. **preprocesses the batch** in one pass on the replica's own thread
   (:func:`preprocess_batch`: every frame of the batch reduced, every audio window turned into its
   spectrogram, in one pass before the engine runs, not on the callers' threads); model-ready
   payloads pass unchanged and numpy arrays that arrive read-only (Ray's zero-copy deserialisation)
   are handed to the engine as tensors that share their memory: no copy, no "not writable" warning;
3. runs one :class:`~exitflow.pipeline.inference.batch_engine.BatchEngine` batch in which every
   sample keeps its own exits, and isolates failures per sample (a bad sample fails alone, a
   batch-level error fails that batch's samples and the replica lives);
4. **measures its capacity**: samples decided per second of engine-busy time (an exponential
   mean over batches), the figure status, metrics and the live view print as "overloaded at N
   samples/s" while samples are being shed.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from exitflow.pipeline.config import ServiceConfig
from exitflow.pipeline.data.preprocessing import DEFAULT_PREPROCESSING, Preprocessing
from exitflow.pipeline.inference.batch_engine import BatchEngine, as_batch_engine
from exitflow.pipeline.live.core.failures import (
    SHED_PREFIX,
    FailedDecision,
    LiveRuntimeError,
    describe_error,
    failed_decision,
)
from exitflow.pipeline.live.runtime.preprocess import model_preprocessing, preprocess_sample
from exitflow.pipeline.live.runtime.workers import (
    EngineFactory,
    apply_budget,
    holder_status,
    resolve_engine_factory,
)
from exitflow.pipeline.messages import Decision, Sample

log = logging.getLogger(__name__)

Result = tuple[Decision, dict[str, float], "str | None"]  # (decision, stage -> ms, error), the engine actor's
ShedPolicyName = Literal["oldest_first", "fair", "none"]


class ShedDecision(FailedDecision):
    """A sample the service chose not to decide (overload), with ``error`` = ``shed:<reason>``
    (:func:`~exitflow.pipeline.live.core.failures.is_shed`)."""

    @classmethod
    def of(cls, sample: Sample, reason: str) -> ShedDecision:
        failed = failed_decision(sample, f"{SHED_PREFIX}{reason}")
        return cls(**{f: getattr(failed, f) for f in failed.__dataclass_fields__})


@dataclass
class Request:
    """One sample waiting in a replica: who sent it (``client``, e.g. a robot) and when it arrived."""

    sample: Sample
    client: str = ""
    arrived_s: float = field(default_factory=time.perf_counter)  # replica's perf_counter


@dataclass(frozen=True)
class ShedPolicy:
    """Which waiting samples a replica gives up under overload (pure: no clock, no engine).

    Args:
        policy: ``oldest_first`` (a deadline on the time waited), ``fair`` (the deadline, and no
            client above an equal share of a full batch), ``none`` (decide everything, however late).
        shed_after_ms: A sample that waited longer than this is shed (``None``: no deadline).
        max_batch_size: The batch a fair share is taken of.
    """

    policy: ShedPolicyName = "oldest_first"
    shed_after_ms: float | None = 100.0
    max_batch_size: int = 32

    def split(self, requests: list[Request], now_s: float) -> tuple[list[Request], list[tuple[Request, str]]]:
        """``(kept, [(shed, reason)])``; ``kept`` keeps the arrival order.

        ``fair`` caps clients only while the batch is overloaded (a sample of it missed the
        deadline): a full batch alone is load, not overload.
        """
        if self.policy == "none":
            return list(requests), []
        shed: list[tuple[Request, str]] = []
        kept = []
        for r in requests:
            if self.shed_after_ms is not None and (now_s - r.arrived_s) * 1000.0 > self.shed_after_ms:
                shed.append((r, "deadline"))
            else:
                kept.append(r)
        if self.policy == "fair" and shed and kept:
            clients = Counter(r.client for r in kept)
            share = max(1, self.max_batch_size // len(clients))
            seen: Counter[str] = Counter()
            newest_first = []
            for r in reversed(kept):  # each client keeps its newest `share` samples
                seen[r.client] += 1
                if seen[r.client] > share:
                    shed.append((r, "fair_share"))
                else:
                    newest_first.append(r)
            kept = newest_first[::-1]
        return kept, shed


class CapacityMeter:
    """Samples decided per second of engine-busy time, an exponential mean over batches.

    ``capacity_sps`` is what the replica can decide flat out at the batch sizes it sees; under
    overload the batches are full and the figure is the service's real ceiling.
    """

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.capacity_sps: float | None = None

    def add(self, samples: int, busy_s: float) -> None:
        if samples <= 0 or busy_s <= 0:
            return
        rate = samples / busy_s
        self.capacity_sps = rate if self.capacity_sps is None else (1 - self.alpha) * self.capacity_sps + self.alpha * rate


def preprocess_batch(samples: list[Sample], drops: dict[str, int] | None = None,
                     preprocessing: Preprocessing = DEFAULT_PREPROCESSING) -> list[Sample]:
    """Model-ready copies of ``samples`` (see
    :func:`~exitflow.pipeline.live.runtime.preprocess.preprocess_sample`; a payload that fails moves
    its modality to ``missing`` and is counted in ``drops``), one pass over the batch on this thread."""
    return [preprocess_sample(s, drops, preprocessing) for s in samples]


def engine_payload(payload: Any) -> Any:
    """``payload`` as the engine takes it without a copy: a read-only numpy array (Ray deserialises
    arrays zero-copy and read-only) becomes a tensor sharing its memory. The engine never writes to
    its inputs, so torch's "not writable" warning is silenced for this one conversion only."""
    if isinstance(payload, np.ndarray) and not payload.flags.writeable and payload.dtype != np.object_:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(payload)
    return payload


class ServiceReplica:
    """One replica's engine, run one batch of requests at a time (plain class; see module doc).

    Args:
        factory: Zero-argument engine factory, or a ``stream.engine`` name called with ``cfg``.
        cfg: The whole config (for a factory by name, and a bundle's preprocessing).
        service: The ``service`` section (batch size, shedding).
        preprocess: Convert raw payloads to model inputs (a model-ready payload passes unchanged).
    """

    def __init__(self, factory: EngineFactory | str, cfg: Any = None, service: ServiceConfig | None = None,
                 preprocess: bool = True):
        self.service = service or ServiceConfig()
        self.engine = resolve_engine_factory(factory)(cfg) if isinstance(factory, str) else factory()
        self.batch_engine = as_batch_engine(self.engine)
        # the eager torch engine turns arrays into tensors (torch.from_numpy): hand it read-only
        # arrays as tensors already; a numpy engine (the compiled fast path) takes them as they are
        self.tensor_inputs = isinstance(self.batch_engine, BatchEngine)
        self.preprocess = preprocess
        self.preprocessing = model_preprocessing(cfg)  # a bundle's, else the defaults
        self.shed_policy = ShedPolicy(self.service.shed_policy, self.service.shed_after_ms, self.service.max_batch_size)
        self.capacity = CapacityMeter()
        self.failures = 0
        self.preprocess_drops: dict[str, int] = {}
        self.budget: dict[str, Any] = {}
        self.shed: Counter[str] = Counter()
        self.batches = 0
        self.items = 0
        self.busy_s = 0.0
        self.largest_batch = 0
        self.batch_errors_in_a_row = 0
        self.last_shed_s: float | None = None

    # -- the batch ------------------------------------------------------------------------------
    def run_requests(self, requests: list[Request]) -> list[Result]:
        """One result per request, in order: shed ones at once, the rest from one engine batch."""
        start = time.perf_counter()
        kept, shed = self.shed_policy.split(requests, start)
        results: dict[int, Result] = {}
        for r, reason in shed:
            results[id(r)] = self._shed(r, reason, {"batch_wait": (start - r.arrived_s) * 1000.0})
        if kept:
            for r, res in zip(kept, self.run_batch([r.sample for r in kept], [r.arrived_s for r in kept], start),
                              strict=True):
                results[id(r)] = res
        return [results[id(r)] for r in requests]

    def run_batch(self, samples: list[Sample], arrived_s: list[float] | None = None,
                  start: float | None = None) -> list[Result]:
        """Preprocess and run ``samples`` as one batch; one result per sample (a failure stays its own)."""
        start = time.perf_counter() if start is None else start
        arrived_s = arrived_s or [start] * len(samples)
        if self.preprocess:
            ready = preprocess_batch(samples, self.preprocess_drops, self.preprocessing)
        else:
            ready = list(samples)
        if self.tensor_inputs:
            ready = [_zero_copy(s) for s in ready]
        t_engine = time.perf_counter()
        try:
            outs: list[Any] = list(self.batch_engine.process_batch(ready))
            self.batch_errors_in_a_row = 0
        except Exception as e:  # noqa: BLE001 - a batch engine bug: every sample of it fails, the replica lives
            outs = [e] * len(ready)
            self.batch_errors_in_a_row += 1
        end = time.perf_counter()
        engine_ms, preprocess_ms = (end - t_engine) * 1000.0, (t_engine - start) * 1000.0
        self.capacity.add(len(samples), end - start)
        self.busy_s += end - start
        self.batches += 1
        self.items += len(samples)
        self.largest_batch = max(self.largest_batch, len(samples))
        results: list[Result] = []
        stages: dict[float, dict[str, float]] = {}  # one dict per arrival time: a micro-batch shares one
        for sample, arrived, out in zip(samples, arrived_s, outs, strict=True):
            stage_ms = stages.get(arrived)
            if stage_ms is None:
                stage_ms = stages[arrived] = {"batch_wait": (start - arrived) * 1000.0, "preprocess": preprocess_ms,
                                              "engine": engine_ms}
            if isinstance(out, Decision):
                if not out.missing and sample.missing:
                    out.missing = sorted(sample.missing)
                if out.timestamp_ns is None:
                    out.timestamp_ns = sample.timestamp_ns
                results.append((out, stage_ms, None))
            else:
                results.append(self._failed(sample, describe_error("engine", out), stage_ms))
        return results

    def _failed(self, sample: Sample, error: str, stage_ms: dict[str, float]) -> Result:
        self.failures += 1
        if self.failures <= 10 or self.failures % 1000 == 0:
            log.warning("service: sample %s failed (%d so far): %s", sample.sample_id, self.failures, error)
        return failed_decision(sample, error), stage_ms, error

    def _shed(self, request: Request, reason: str, stage_ms: dict[str, float]) -> Result:
        self.shed[reason] += 1
        self.last_shed_s = time.monotonic()
        shed = ShedDecision.of(request.sample, reason)
        return shed, stage_ms, shed.error

    # -- control --------------------------------------------------------------------------------
    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Change the energy budget of this replica's engine.

        Raises:
            LiveRuntimeError: when the engine has no budget to change.
        """
        self.budget = apply_budget(self.engine, mj_per_sample, power_w)
        return self.budget

    def healthy(self, max_batch_errors: int = 3) -> None:
        """Raise when the last ``max_batch_errors`` batches all failed as a whole (a broken engine).

        Raises:
            LiveRuntimeError: naming the count, so Serve replaces the replica.
        """
        if self.batch_errors_in_a_row >= max_batch_errors:
            raise LiveRuntimeError(f"the last {self.batch_errors_in_a_row} batches failed as a whole")

    def overloaded(self, window_s: float = 2.0) -> bool:
        """Whether this replica shed a sample in the last ``window_s`` seconds."""
        return self.last_shed_s is not None and time.monotonic() - self.last_shed_s < window_s

    def status(self) -> dict[str, Any]:
        """Budget, failures, drops, batches, shed samples by reason, capacity and the overload flag."""
        return {
            **holder_status(self),
            "batches": self.batches,
            "items": self.items,
            "batch_size_mean": self.items / self.batches if self.batches else 0.0,
            "batch_size_max": self.largest_batch,
            "busy_s": self.busy_s,
            "shed": dict(self.shed),
            "capacity_sps": self.capacity.capacity_sps,
            "overloaded": self.overloaded(),
        }


def merge_status(replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """The service's status from its replicas' (:meth:`ServiceReplica.status` each): counts, busy time,
    shed samples, failures and drops summed; ``capacity_sps`` summed (replicas decide side by side);
    the largest batch; ``overloaded`` when any replica is; the budget of the first (every replica has
    the deployment's). Empty input gives zeros."""
    shed: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    for r in replicas:
        shed.update(r.get("shed", {}))
        drops.update(r.get("preprocess_drops", {}))
    batches = sum(r.get("batches", 0) for r in replicas)
    items = sum(r.get("items", 0) for r in replicas)
    capacities = [r["capacity_sps"] for r in replicas if r.get("capacity_sps") is not None]
    return {
        "budget": dict(replicas[0].get("budget", {})) if replicas else {},
        "failures": sum(r.get("failures", 0) for r in replicas),
        "preprocess_drops": dict(drops),
        "batches": batches,
        "items": items,
        "batch_size_mean": items / batches if batches else 0.0,
        "batch_size_max": max((r.get("batch_size_max", 0) for r in replicas), default=0),
        "busy_s": sum(r.get("busy_s", 0.0) for r in replicas),
        "shed": dict(shed),
        "capacity_sps": sum(capacities) if capacities else None,
        "overloaded": any(r.get("overloaded", False) for r in replicas),
    }


def _zero_copy(sample: Sample) -> Sample:
    payloads = {m: engine_payload(p) for m, p in sample.payloads.items()}
    if all(payloads[m] is sample.payloads[m] for m in payloads):
        return sample
    return Sample(sample.sample_id, sample.timestamp_ns, payloads, sample.missing, sample.label, sample.timestamps_ns)
