"""The shared inference service: bounded-wait batching, replicas answering many callers, batch-1 equality."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from exitflow.pipeline.config import RayConfig, ServiceConfig
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.batcher import MicroBatcher, ServiceBusyError
from exitflow.pipeline.live.core.failures import FailedDecision
from exitflow.pipeline.live.runtime.ray.service import InferenceService, ServiceReplica
from exitflow.pipeline.messages import Decision, Sample


def key(d: Decision) -> tuple:
    return (d.sample_id, d.prediction, d.exits, d.exited_by, d.macs, d.order, d.skipped, d.missing, d.fused_checks)


# -- the batcher, without Ray ------------------------------------------------------------------
def call_all(fn, items: list) -> list:
    """``fn(item)`` for each item on its own thread (as a threaded actor calls); results (or exceptions)
    in order."""
    out: list = [None] * len(items)

    def call(i: int) -> None:
        try:
            out[i] = fn(items[i])
        except Exception as e:  # noqa: BLE001 - handed to the test
            out[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_concurrent_callers_share_batches_and_each_gets_its_own_result() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        seen.append(list(items))
        gate.wait(10)  # the first batch holds the leader until every caller is queued
        return [x * 10 for x in items]

    batcher = MicroBatcher(run, max_batch_size=4, batch_wait_s=0.0)
    threading.Timer(0.2, gate.set).start()
    assert call_all(batcher.submit, list(range(10))) == [i * 10 for i in range(10)]
    assert all(len(b) <= 4 for b in seen) and sorted(x for b in seen for x in b) == list(range(10))
    assert max(len(b) for b in seen) == 4  # callers that queued behind the first batch went together
    stats = batcher.stats()
    assert stats["items"] == 10 and stats["batches"] == len(seen) and stats["queued"] == 0


def test_a_lone_item_runs_at_once_on_its_own_thread() -> None:
    caller = []
    batcher = MicroBatcher(lambda items: caller.append(threading.get_ident()) or items, max_batch_size=64,
                           batch_wait_s=0.0)
    assert batcher.submit(7) == 7 and caller == [threading.get_ident()]


def test_a_full_queue_refuses_and_a_failing_batch_reaches_only_its_callers() -> None:
    release = threading.Event()
    started = threading.Event()

    def run(items: list[int]) -> list[int]:
        if -1 in items:
            raise RuntimeError("injected")
        started.set()
        release.wait(10)
        return items

    batcher = MicroBatcher(run, max_batch_size=1, batch_wait_s=0.0, max_queued=2)
    first: list = []
    leader = threading.Thread(target=lambda: first.append(batcher.submit(1)))
    leader.start()
    assert started.wait(10)  # item 1 computing: the queue is empty again
    waiting: list = [None, None]
    followers = [threading.Thread(target=lambda i=i: waiting.__setitem__(i, batcher.submit(i + 2))) for i in (0, 1)]
    for t in followers:
        t.start()
    deadline = time.monotonic() + 10
    while batcher.stats()["queued"] < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(ServiceBusyError, match="max_queued"):
        batcher.submit(4)
    release.set()
    for t in (leader, *followers):
        t.join(10)
    assert first == [1] and waiting == [2, 3]
    with pytest.raises(RuntimeError, match="injected"):
        batcher.submit(-1)
    assert batcher.submit(5) == 5  # the batcher survived the failing batch
    assert batcher.stats()["rejected"] == 1


def test_many_callers_under_load_all_get_their_results() -> None:
    batcher = MicroBatcher(lambda items: [x + 1 for x in items], max_batch_size=8, batch_wait_s=0.001)
    assert call_all(batcher.submit, list(range(200))) == list(range(1, 201))
    assert batcher.stats()["items"] == 200


def test_batcher_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda items: items, max_batch_size=0)


# -- a replica on the real engine, without Ray -------------------------------------------------
@pytest.fixture(scope="module")
def rows(embedded_cfg):
    return list(split_samples(load_split(embedded_cfg, "test", "avmnist", progress=False), 48))


def test_replica_batches_callers_and_matches_batch1(parts, rows) -> None:
    expected = [key(parts.exitflow(meter=None, budget=False).engine.process(s)) for s in rows]
    replica = ServiceReplica(lambda: parts.exitflow(meter=None, budget=False),
                             service=ServiceConfig(max_batch_size=16, batch_wait_ms=1000.0))
    bad = Sample(999, 0, {"image": np.full((1, 28, 28), np.nan, np.float32), "audio": rows[0].payloads["audio"]})

    results = call_all(replica.process, [*rows, bad])
    assert [error for _, _, error in results[:-1]] == [None] * len(rows)
    assert [key(d) for d, _, _ in results[:-1]] == expected
    decision, _, error = results[-1]
    assert isinstance(decision, FailedDecision) and "NaN" in error  # one bad sample, its own error
    status = replica.status()
    assert status["items"] == len(rows) + 1 and status["batch_size_mean"] > 1 and status["failures"] == 1


# -- replicas as Ray actors ----------------------------------------------------------------------
@pytest.mark.slow
def test_service_replicas_answer_several_callers_with_batch1_decisions(embedded_cfg, parts, rows) -> None:
    ray = pytest.importorskip("ray")
    from exitflow.pipeline.live.runtime.ray.connect import start_ray

    expected = {s.sample_id: key(parts.exitflow(meter=None, budget=False).engine.process(s)) for s in rows}
    started = start_ray(RayConfig(num_cpus=2, namespace="exitflow-service-test"))
    service = None
    try:
        cfg = ServiceConfig(name="test-service", num_replicas=2, num_cpus=0.5, max_batch_size=8,
                            batch_wait_ms=500.0, detached=False)
        service = InferenceService.start("system:exitflow", embedded_cfg, service=cfg)
        assert len(service.wait_ready(timeout_s=180)) == 2
        other = InferenceService.connect("test-service")  # a second pipeline finds the same replicas
        assert len(other.replicas) == 2
        refs = [(service if i % 2 else other).decide_async(s) for i, s in enumerate(rows)]
        results = ray.get(refs, timeout=180)
        assert {d.sample_id: key(d) for d, _, error in results if error is None} == expected
        assert isinstance(service.decide(rows[0]), Decision)
        stats = service.stats()
        assert stats["items"] == len(rows) + 1 and stats["batch_size_mean"] > 1
        assert all(s["items"] > 0 for s in stats["replicas"])  # both replicas took work
    finally:
        if service is not None:
            service.shutdown()
        if started:
            ray.shutdown()
