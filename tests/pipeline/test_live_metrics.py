"""The opt-in Prometheus endpoint: loopback, figures of the snapshot, one label set per pipeline."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from exitflow.pipeline.live.core.stats import LiveStats
from exitflow.pipeline.live.views.metrics import MetricsExporter, snapshot_metrics
from exitflow.pipeline.messages import Decision


def snapshot(decisions: int) -> dict:
    stats = LiveStats()
    for ms in (10.0, 20.0, 30.0):
        stats.observe_latency("end_to_end", ms)
    for i in range(decisions):
        stats.observe_decision(Decision(sample_id=i, prediction=1, system="t", exits={"image": i % 2},
                                        energy_mj=2.0, energy_source="rapl", estimated=False, lam=0.25))
    stats.count_drop("cam", "sync_refused", 3)
    return {**stats.summary(), "sync": {"dropped": {"non_monotonic": 2}, "unmatched": {"text": 1}},
            "engine_queue": {"dropped": {"drop_oldest": 5}}, "budget": {"mj_per_sample": 4.0, "power_w": None},
            "in_flight": 1, "sources": {"cam": {"dropped": {"wrong_shape": 1}, "queue": {"dropped": {}},
                                                "clock": {"skew_ms": 3600000.0, "rtt_ms": 0.2, "skewed": True}}}}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_endpoint_serves_the_snapshot_on_loopback():
    exporter = MetricsExporter(0)
    try:
        assert exporter.host == "127.0.0.1"
        exporter.publish("robot0", snapshot(4))
        exporter.publish("robot1", snapshot(2))
        text = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5).read().decode()
    finally:
        exporter.close()
    got = samples(text)
    assert got[("exitflow_decisions_total", (("pipeline", "robot0"),))] == 4
    assert got[("exitflow_decisions_total", (("pipeline", "robot1"),))] == 2
    assert got[("exitflow_latency_ms", (("pipeline", "robot0"), ("quantile", "0.50"), ("stage", "end_to_end")))] == 20
    drops = {labels: v for (name, labels), v in got.items() if name == "exitflow_drops_total"
             and ("pipeline", "robot0") in labels}
    reasons = {dict(labels)["where"] + ":" + dict(labels)["reason"]: v for labels, v in drops.items()}
    assert reasons == {"cam:sync_refused": 3, "sync:non_monotonic": 2, "sync:unmatched_text": 1,
                       "engine_queue:drop_oldest": 5, "source:cam:wrong_shape": 1}
    assert got[("exitflow_exits_total", (("exit", "0"), ("modality", "image"), ("pipeline", "robot0")))] == 2
    assert got[("exitflow_budget", (("kind", "mj_per_sample"), ("pipeline", "robot0")))] == 4.0
    assert got[("exitflow_energy_mj_per_sample", (("estimated", "False"), ("pipeline", "robot0"),
                                                  ("source", "rapl")))] == 2.0
    assert got[("exitflow_clock_skew_ms", (("pipeline", "robot0"), ("source", "cam")))] == 3600000.0
    assert got[("exitflow_lambda", (("pipeline", "robot0"),))] == 0.25


def test_an_empty_snapshot_gives_empty_families_not_an_error():
    families = snapshot_metrics({"p": {}})
    assert {f.name for f in families} >= {"exitflow_latency_ms", "exitflow_drops", "exitflow_decisions"}
