"""A light rule engine for trying the streaming layer without trained checkpoints.

``stream.engine: exitflow.pipeline.live.runtime.rule_engine:build_rule_engine`` runs the live pipeline
(sources, sync, preprocess, Ray, record and replay) with an engine that costs almost nothing:
one deterministic vote per present modality from its model-ready payload. The soak, fault and
throughput benchmarks use it so their figures measure the streaming layer, not a model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exitflow.pipeline.messages import Decision, Sample


class RuleEngine:
    """``process(sample) -> Decision``: vote ``int(mean * 100) % 10`` per array, ``len % 10`` for text."""

    def __init__(self) -> None:
        self.budget: float | None = None

    def process(self, sample: Sample) -> Decision:
        present = sample.present()
        votes = [int(float(np.mean(sample.payloads[m])) * 100) % 10 for m in present if m != "text"]
        votes += [len(sample.payloads["text"]) % 10] if "text" in present else []
        return Decision(
            sample_id=sample.sample_id,
            prediction=max(votes) if votes else -1,
            system="rule",
            order=present,
            exits={m: 0 for m in present},
            missing=sorted(sample.missing),
            timestamp_ns=sample.timestamp_ns,
        )

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> None:
        self.budget = mj_per_sample


def build_rule_engine(cfg: Any = None) -> RuleEngine:
    """Engine factory for ``stream.engine: exitflow.pipeline.live.runtime.rule_engine:build_rule_engine``."""
    return RuleEngine()
