"""Online recalibration in the live views: the stats snapshot, /status, Prometheus and the terminal view."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry
from rich.console import Console

from exitflow.pipeline.live.core.stats import LiveStats
from exitflow.pipeline.live.recording.mcap_schemas import STATUS_SCHEMA, status_body
from exitflow.pipeline.live.views.metrics import snapshot_metrics
from exitflow.pipeline.live.views.terminal import power_section
from exitflow.pipeline.messages import Decision

STATE = {"target_disagreement": 0.005, "measured_disagreement": 0.02, "shadow_share": 0.03, "shift": -0.75,
         "thresholds": {"image": -1.0, "audio": -1.0, "fusion": 0.14}, "shadowed": 50, "disagreements": 1,
         "held_by_budget": False}


def _stats() -> LiveStats:
    stats = LiveStats()
    for i in range(10):
        shadow = i % 5 == 0
        stats.observe_decision(Decision(sample_id=i, prediction=1, system="exitflow", shadow=shadow,
                                        shadow_prediction=1 if shadow else None, shadow_macs=6_000_000 if shadow else 0,
                                        recalibration=dict(STATE) if shadow else None))
    return stats


def test_snapshot_and_status_carry_the_recalibration_state():
    snap = _stats().summary()
    recal = snap["recalibration"]
    assert recal["target_disagreement"] == 0.005 and recal["thresholds"]["fusion"] == 0.14
    assert recal["run_shadow_share"] == 0.2 and recal["run_shadow_macs"] == 12_000_000
    body = status_body(snap, 123)
    assert body["recalibration"] == recal and "recalibration" in STATUS_SCHEMA["properties"]
    assert status_body(LiveStats().summary(), 1)["recalibration"] is None  # off / nothing shadowed yet


class _Collector:
    def __init__(self, snaps: dict) -> None:
        self.snaps = snaps

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        return iter(snapshot_metrics(self.snaps))


def test_prometheus_gauges():
    registry = CollectorRegistry()
    registry.register(_Collector({"robot0": _stats().summary()}))
    text = generate_latest(registry).decode()
    assert 'exitflow_recalibration_disagreement{kind="target",pipeline="robot0"} 0.005' in text
    assert 'exitflow_recalibration_disagreement{kind="measured",pipeline="robot0"} 0.02' in text
    assert 'exitflow_recalibration_shadow_share{pipeline="robot0"} 0.03' in text
    assert 'exitflow_recalibration_threshold{key="fusion",pipeline="robot0"} 0.14' in text


def test_terminal_view_row():
    console = Console(width=200, record=True)
    console.print(power_section(_stats().summary()))
    text = console.export_text()
    assert "recalibration" in text and "disagreement 0.020 (target 0.005)" in text and "fusion 0.14" in text
