"""Rolling statistics of a live run: latency percentiles per stage, drops, exits, energy.

Plain data, no Ray and no rich: the runtime feeds it, the live view and the throughput
benchmark read :meth:`LiveStats.summary`.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import numpy as np

from exitflow.pipeline.live.core.failures import error_kind
from exitflow.pipeline.messages import Decision


class LiveStats:
    """Counters and rolling windows (the last ``window`` values per latency stage).

    Args:
        window: Values kept per latency stage and for energy.
    """

    def __init__(self, window: int = 5000):
        self.window = window
        self.latency_ms: dict[str, deque[float]] = {}
        self.alignment_ms: dict[str, deque[float]] = {}
        self.messages: Counter[str] = Counter()
        self.drops: dict[str, Counter[str]] = {}
        self.exits: dict[str, Counter[int]] = {}
        self.missing: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.decisions = 0
        self.energy_mj: deque[float] = deque(maxlen=window)
        self.energy_source: str | None = None
        self.estimated: bool | None = None
        self.lam: float | None = None
        self.budget_note: str | None = None  # the latest decision's, e.g. budget below the cheapest plan
        self.recalibration: dict[str, Any] | None = None  # online recalibration: the latest shadowed decision's
        self.shadowed = 0
        self.shadow_macs = 0
        self.labelled = 0  # decisions whose ground truth arrived (a label topic, a labelled replay)
        self.correct = 0
        self.last_engine_error: str | None = None
        self.failed = 0
        self.failures: Counter[str] = Counter()  # "stage:ExceptionType" -> n (a bounded key set)

    def observe_latency(self, stage: str, latency_ms: float) -> None:
        self.latency_ms.setdefault(stage, deque(maxlen=self.window)).append(float(latency_ms))

    def observe_alignment(self, modality: str, offset_ms: float) -> None:
        """Signed offset of a modality's message from the sample's trigger time."""
        self.alignment_ms.setdefault(modality, deque(maxlen=self.window)).append(float(offset_ms))

    def max_abs_alignment_ms(self) -> dict[str, float]:
        return {m: float(max(abs(v) for v in vals)) for m, vals in self.alignment_ms.items() if vals}

    def count_message(self, source: str) -> None:
        self.messages[source] += 1

    def count_drop(self, where: str, reason: str, n: int = 1) -> None:
        self.drops.setdefault(where, Counter())[reason] += n

    def observe_decision(self, decision: Decision) -> None:
        self.decisions += 1
        for modality, exit_index in decision.exits.items():
            self.exits.setdefault(modality, Counter())[int(exit_index)] += 1
        self.missing.update(decision.missing)
        self.skipped.update(decision.skipped)
        if decision.energy_mj is not None:
            self.energy_mj.append(float(decision.energy_mj))
            self.energy_source, self.estimated = decision.energy_source, decision.estimated
        self.lam = decision.lam
        self.budget_note = decision.budget_note
        if decision.shadow:
            self.shadowed += 1
            self.shadow_macs += int(decision.shadow_macs)
        if decision.recalibration is not None:
            self.recalibration = decision.recalibration
        if decision.label is not None:
            self.labelled += 1
            self.correct += int(decision.prediction == decision.label)

    def observe_failure(self, error: str) -> None:
        """A sample that failed (``"stage: Type: message"``): counted by stage and type."""
        self.failed += 1
        self.failures[error_kind(error)] += 1
        self.last_engine_error = error

    def percentiles(self) -> dict[str, dict[str, float]]:
        """Stage -> ``{"p50", "p95", "p99", "n"}`` in ms over the rolling window."""
        out = {}
        for stage, values in self.latency_ms.items():
            if not values:
                continue
            p50, p95, p99 = np.percentile(np.fromiter(values, float), [50, 95, 99])
            out[stage] = {"p50": float(p50), "p95": float(p95), "p99": float(p99), "n": len(values)}
        return out

    def recalibration_summary(self) -> dict[str, Any] | None:
        """Online recalibration (pipeline/inference/shadow.py): the controller's latest state and the share
        of this run's decisions that were shadowed; None when nothing was shadowed yet."""
        if self.recalibration is None:
            return None
        return {**self.recalibration, "run_shadow_share": self.shadowed / self.decisions if self.decisions else 0.0,
                "run_shadow_macs": self.shadow_macs}

    def summary(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "failed": self.failed,
            "failures": dict(self.failures),
            "messages": dict(self.messages),
            "drops": {k: dict(v) for k, v in self.drops.items()},
            "exits": {m: dict(sorted(c.items())) for m, c in self.exits.items()},
            "missing": dict(self.missing),
            "skipped": dict(self.skipped),
            "latency_ms": self.percentiles(),
            "max_abs_alignment_ms": self.max_abs_alignment_ms(),
            "energy_mj_mean": float(np.mean(self.energy_mj)) if self.energy_mj else None,
            "energy_source": self.energy_source,
            "estimated": self.estimated,
            "lam": self.lam,
            "budget_note": self.budget_note,
            "recalibration": self.recalibration_summary(),
            "accuracy": {"labelled": self.labelled, "correct": self.correct,
                         "accuracy": self.correct / self.labelled} if self.labelled else None,
            "last_engine_error": self.last_engine_error,
        }
