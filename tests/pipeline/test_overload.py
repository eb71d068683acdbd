"""Graceful overload: shed samples counted by reason, capacity, the "overloaded" flag in the snapshot,
the live view, /status and the metrics; live accuracy when labels arrive."""

from __future__ import annotations

from rich.console import Console

from exitflow.pipeline.live.core.failures import is_shed
from exitflow.pipeline.live.core.overload import OverloadMonitor, overload_text
from exitflow.pipeline.live.core.stats import LiveStats
from exitflow.pipeline.live.recording.mcap_schemas import status_body
from exitflow.pipeline.live.views.metrics import snapshot_metrics
from exitflow.pipeline.live.views.terminal import render
from exitflow.pipeline.messages import Decision
from tests.pipeline.test_live_views import busy_snapshot


def test_shed_errors_are_recognised() -> None:
    assert is_shed("shed:deadline") and is_shed("shed:service_busy")
    assert not is_shed(None) and not is_shed("") and not is_shed("engine: RuntimeError: boom")


def test_monitor_counts_shed_by_reason_and_says_overloaded_for_a_window() -> None:
    m = OverloadMonitor(window_s=2.0)
    assert m.snapshot(0.0) == {"overloaded": False, "capacity_sps": None, "shed": {}, "shed_total": 0}
    m.engine_ms(4.0)  # one-at-a-time engine: 250 samples/s
    assert m.capacity_sps == 250.0
    drops = []
    m.on_shed = lambda where, reason, n: drops.append((where, reason, n))
    m.count_shed("service", "shed:deadline", now_s=10.0, n=3)
    assert drops == [("service", "shed:deadline", 3)]
    m.queue_drops({"drop_oldest": 2}, now_s=10.5)
    snap = m.snapshot(11.0)
    assert snap["overloaded"] and snap["shed"] == {"shed:deadline": 3, "engine_queue:drop_oldest": 2}
    assert snap["shed_total"] == 5 and snap["capacity_sps"] == 250.0
    m.queue_drops({"drop_oldest": 2}, now_s=12.0)  # no new drop: the flag falls after the window
    assert not m.overloaded(12.6)
    m.service_status({"capacity_sps": 1800.0, "overloaded": True})  # the service's measure wins
    assert m.capacity_sps == 1800.0 and m.overloaded(100.0)
    m.service_status({"capacity_sps": 1750.0, "overloaded": False})
    assert not m.overloaded(100.0)


def overloaded_snapshot() -> dict:
    snap = busy_snapshot()
    m = OverloadMonitor()
    m.service_status({"capacity_sps": 812.4, "overloaded": True})
    m.count_shed("service", "shed:deadline", 1.0, 30)
    m.count_shed("service", "shed:fair_share", 1.0, 7)
    snap["overload"] = m.snapshot(1.0)
    return snap


def test_the_live_view_says_overloaded_with_the_capacity_at_100x24() -> None:
    snap = overloaded_snapshot()
    console = Console(width=100, height=24, record=True, color_system=None)
    console.print(render(snap, height=24, width=100))
    text = console.export_text()
    assert len(text.splitlines()) <= 24
    assert "OVERLOADED at 812 samples/s; shed 37 (shed:deadline 30, shed:fair_share 7)" in text
    assert overload_text({"overloaded": False, "capacity_sps": None, "shed": {}, "shed_total": 0}) == (
        "capacity capacity unknown; shed 0")


def test_status_and_metrics_carry_overload_and_live_accuracy() -> None:
    stats = LiveStats()
    for i, (pred, label) in enumerate([(1, 1), (2, 3), (4, 4), (5, None)]):
        stats.observe_decision(Decision(sample_id=i, prediction=pred, system="t", label=label))
    snap = {**overloaded_snapshot(), **{"accuracy": stats.summary()["accuracy"]}}
    assert snap["accuracy"] == {"labelled": 3, "correct": 2, "accuracy": 2 / 3}
    body = status_body(snap, 0)
    assert body["overload"]["overloaded"] and body["accuracy"]["labelled"] == 3
    families = {f.name: f for f in snapshot_metrics({"robot0": snap})}
    assert families["exitflow_overloaded"].samples[0].value == 1.0
    assert families["exitflow_capacity_samples_per_second"].samples[0].value == 812.4
    shed = {s.labels["reason"]: s.value for s in families["exitflow_shed"].samples if s.name.endswith("_total")}
    assert shed == {"shed:deadline": 30.0, "shed:fair_share": 7.0}
    assert families["exitflow_live_accuracy"].samples[0].value == 2 / 3
    console = Console(width=100, height=24, record=True, color_system=None)
    console.print(render(snap, height=24, width=100))
    assert "accuracy 0.667 (2/3)" in console.export_text()
