"""Prometheus metrics of a live run: per-stage latency, drops by reason, exits, energy, budget, clocks.

Opt-in (``stream.metrics_port``; bound to ``stream.metrics_host``, loopback unless set): a
``prometheus_client`` HTTP endpoint whose collector turns the driver's latest snapshot
(:meth:`~exitflow.pipeline.live.runtime.driver.PipelineDriver.snapshot`) into metric families at scrape
time, so the run pays nothing per sample for it and the figures are exactly those of the live
view. ``prometheus_client`` is the reference client library, needs no agent and works the same
under both runtimes (``ray.util.metrics`` would need Ray's metrics agent, absent in
``runtime: local``). Several pipelines in one process (the fleet benchmark) share one endpoint:
every family carries a ``pipeline`` label.

Families (all prefixed ``exitflow_``): ``latency_ms{stage,quantile}``, ``decisions_total``,
``failed_decisions_total``, ``messages_total{source}``, ``drops_total{where,reason}``,
``exits_total{modality,exit}``, ``missing_total{modality}``, ``energy_mj_per_sample``,
``budget{kind}``, ``lambda``, ``in_flight``, ``clock_skew_ms{source}``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Snapshot = dict[str, Any]


def _flat_drops(snap: Snapshot) -> dict[tuple[str, str], float]:
    """(where, reason) -> count from every drop counter the snapshot holds."""
    out: dict[tuple[str, str], float] = {}
    for where, reasons in (snap.get("drops") or {}).items():
        for reason, n in (reasons or {}).items():
            out[(str(where), str(reason))] = float(n)
    for reason, n in ((snap.get("sync") or {}).get("dropped") or {}).items():
        out[("sync", str(reason))] = float(n)
    for modality, n in ((snap.get("sync") or {}).get("unmatched") or {}).items():
        out[("sync", f"unmatched_{modality}")] = float(n)
    for reason, n in ((snap.get("engine_queue") or {}).get("dropped") or {}).items():
        out[("engine_queue", str(reason))] = float(n)
    for name, src in (snap.get("sources") or {}).items():
        for reason, n in (src.get("dropped") or {}).items():
            out[(f"source:{name}", str(reason))] = float(n)
        for reason, n in ((src.get("queue") or {}).get("dropped") or {}).items():
            out[(f"queue:{name}", str(reason))] = float(n)
    for key, n in (snap.get("preprocess_drops") or {}).items():
        out[("preprocess", str(key))] = float(n)
    return out


def snapshot_metrics(snaps: dict[str, Snapshot]) -> list[Metric]:
    """Metric families for pipeline name -> snapshot (pure: the collector and the tests call it)."""
    latency = GaugeMetricFamily("exitflow_latency_ms", "Latency per stage over the rolling window (ms)",
                                labels=["pipeline", "stage", "quantile"])
    decisions = CounterMetricFamily("exitflow_decisions", "Samples decided", labels=["pipeline"])
    failed = CounterMetricFamily("exitflow_failed_decisions", "Samples that failed", labels=["pipeline"])
    messages = CounterMetricFamily("exitflow_messages", "Messages received per source", labels=["pipeline", "source"])
    drops = CounterMetricFamily("exitflow_drops", "Messages or samples dropped, by where and reason",
                                labels=["pipeline", "where", "reason"])
    exits = CounterMetricFamily("exitflow_exits", "Exits taken per modality and exit index",
                                labels=["pipeline", "modality", "exit"])
    missing = CounterMetricFamily("exitflow_missing", "Samples with a modality missing", labels=["pipeline", "modality"])
    energy = GaugeMetricFamily("exitflow_energy_mj_per_sample", "Mean energy per sample (mJ)",
                               labels=["pipeline", "source", "estimated"])
    budget = GaugeMetricFamily("exitflow_budget", "Energy budget in force (mj_per_sample or power_w)",
                               labels=["pipeline", "kind"])
    lam = GaugeMetricFamily("exitflow_lambda", "Budget controller's lambda", labels=["pipeline"])
    in_flight = GaugeMetricFamily("exitflow_in_flight", "Samples inside the engine", labels=["pipeline"])
    disagreement = GaugeMetricFamily("exitflow_recalibration_disagreement", "Online recalibration: disagreement "
                                     "with the full path (target and measured over shadowed samples)",
                                     labels=["pipeline", "kind"])
    shadow = GaugeMetricFamily("exitflow_recalibration_shadow_share", "Share of samples the full path shadows now",
                               labels=["pipeline"])
    threshold = GaugeMetricFamily("exitflow_recalibration_threshold", "Exit thresholds the recalibration holds",
                                  labels=["pipeline", "key"])
    skew = GaugeMetricFamily("exitflow_clock_skew_ms", "Source clock minus the driver's wall clock (ms)",
                             labels=["pipeline", "source"])
    overloaded = GaugeMetricFamily("exitflow_overloaded", "1 while samples are being shed (overload)",
                                   labels=["pipeline"])
    capacity = GaugeMetricFamily("exitflow_capacity_samples_per_second",
                                 "Measured capacity of the engine or service (samples/s)", labels=["pipeline"])
    shed = CounterMetricFamily("exitflow_shed", "Samples shed under overload, by reason", labels=["pipeline", "reason"])
    accuracy = GaugeMetricFamily("exitflow_live_accuracy", "Share of labelled decisions that were right",
                                 labels=["pipeline"])
    for name, snap in snaps.items():
        over = snap.get("overload") or {}
        if over:
            overloaded.add_metric([name], 1.0 if over.get("overloaded") else 0.0)
            if over.get("capacity_sps") is not None:
                capacity.add_metric([name], float(over["capacity_sps"]))
            for reason, n in (over.get("shed") or {}).items():
                shed.add_metric([name, str(reason)], float(n))
        if (snap.get("accuracy") or {}).get("accuracy") is not None:
            accuracy.add_metric([name], float(snap["accuracy"]["accuracy"]))
        for stage, p in (snap.get("latency_ms") or {}).items():
            for q in ("p50", "p95", "p99"):
                latency.add_metric([name, stage, f"0.{q[1:]}"], float(p[q]))
        decisions.add_metric([name], float(snap.get("decisions", 0)))
        failed.add_metric([name], float(snap.get("failed", 0)))
        for source, n in (snap.get("messages") or {}).items():
            messages.add_metric([name, str(source)], float(n))
        for (where, reason), n in sorted(_flat_drops(snap).items()):
            drops.add_metric([name, where, reason], n)
        for modality, hist in (snap.get("exits") or {}).items():
            for index, n in hist.items():
                exits.add_metric([name, str(modality), str(index)], float(n))
        for modality, n in (snap.get("missing") or {}).items():
            missing.add_metric([name, str(modality)], float(n))
        if snap.get("energy_mj_mean") is not None:
            energy.add_metric([name, str(snap.get("energy_source") or "unknown"), str(bool(snap.get("estimated")))],
                              float(snap["energy_mj_mean"]))
        for kind, value in (snap.get("budget") or {}).items():
            if isinstance(value, (int, float)):
                budget.add_metric([name, str(kind)], float(value))
        if snap.get("lam") is not None:
            lam.add_metric([name], float(snap["lam"]))
        in_flight.add_metric([name], float(snap.get("in_flight", 0)))
        recal = snap.get("recalibration")
        if recal:
            disagreement.add_metric([name, "target"], float(recal["target_disagreement"]))
            if recal.get("measured_disagreement") is not None:
                disagreement.add_metric([name, "measured"], float(recal["measured_disagreement"]))
            shadow.add_metric([name], float(recal["shadow_share"]))
            for key, value in (recal.get("thresholds") or {}).items():
                threshold.add_metric([name, str(key)], float(value))
        for source, s in (snap.get("sources") or {}).items():
            if "clock" in s:
                skew.add_metric([name, str(source)], float(s["clock"]["skew_ms"]))
    return [latency, decisions, failed, messages, drops, exits, missing, energy, budget, lam, in_flight, skew,
            disagreement, shadow, threshold, overloaded, capacity, shed, accuracy]


class SnapshotCollector(Collector):
    """Reads the latest snapshot of each registered pipeline at scrape time."""

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Snapshot]] = {}
        self._latest: dict[str, Snapshot] = {}
        self._lock = threading.Lock()

    def publish(self, pipeline: str, snap: Snapshot) -> None:
        """Hand in a fresh snapshot (the driver's view tick calls this)."""
        with self._lock:
            self._latest[pipeline] = snap

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snaps = dict(self._latest)
        yield from snapshot_metrics(snaps)


class MetricsExporter:
    """A Prometheus endpoint at ``http://host:port/metrics`` serving :class:`SnapshotCollector`.

    Args:
        port: TCP port (0 picks a free one; :attr:`port` tells which).
        host: Address to bind (loopback unless told otherwise).
    """

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port = int(self._server.server_address[1])

    def publish(self, pipeline: str, snap: Snapshot) -> None:
        self.collector.publish(pipeline, snap)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)
