"""The shared inference service: bounded-wait batching, replicas answering many callers, batch-1 equality."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from exitflow.pipeline.config import RayConfig, ServiceConfig
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.errors import CheckpointError
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from exitflow.pipeline.inference.batcher import MicroBatcher, ServiceBusyError
from exitflow.pipeline.live.failures import FailedDecision
from exitflow.pipeline.live.service import InferenceService, ServiceReplica
from exitflow.pipeline.messages import Decision, Sample


def key(d: Decision) -> tuple:
    return (d.sample_id, d.prediction, d.exits, d.exited_by, d.macs, d.order, d.skipped, d.missing, d.fused_checks)


# -- the batcher, without Ray ------------------------------------------------------------------
def test_concurrent_callers_share_batches_and_each_gets_its_own_result() -> None:
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [x * 10 for x in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(run, max_batch_size=4, batch_wait_s=5.0)  # full batches leave at once
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(10))))
        finally:
            batcher.shutdown()

    assert asyncio.run(main()) == [i * 10 for i in range(10)]
    assert [len(b) for b in seen[:2]] == [4, 4] and sorted(x for b in seen for x in b) == list(range(10))


def test_a_lone_item_does_not_wait_for_a_full_batch() -> None:
    async def main() -> int:
        batcher = MicroBatcher(lambda items: items, max_batch_size=64, batch_wait_s=0.0)
        try:
            return await batcher.submit(7)
        finally:
            batcher.shutdown()

    assert asyncio.run(main()) == 7


def test_a_full_queue_refuses_and_a_failing_batch_reaches_only_its_callers() -> None:
    release = threading.Event()
    calls = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        if -1 in items:
            raise RuntimeError("injected")
        release.wait(5)
        return items

    async def main() -> None:
        batcher = MicroBatcher(run, max_batch_size=1, batch_wait_s=0.0, max_queued=2)
        try:
            first = asyncio.ensure_future(batcher.submit(1))  # computing, holds the worker thread
            while not calls:
                await asyncio.sleep(0.001)
            waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
            await asyncio.sleep(0)
            with pytest.raises(ServiceBusyError, match="max_queued"):
                await batcher.submit(4)
            release.set()
            assert await first == 1 and await asyncio.gather(*waiting) == [2, 3]
            with pytest.raises(RuntimeError, match="injected"):
                await batcher.submit(-1)
            assert await batcher.submit(5) == 5  # the loop survived the failing batch
            assert batcher.stats()["rejected"] == 1
        finally:
            batcher.shutdown()

    asyncio.run(main())


def test_batcher_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda items: items, max_batch_size=0)


# -- a replica on the real engine, without Ray -------------------------------------------------
@pytest.fixture(scope="module")
def parts(embedded_cfg):
    try:
        parts = AdaptiveParts(embedded_cfg, "avmnist")
    except CheckpointError as e:
        pytest.skip(f"no default CNN checkpoints: {e}")
    torch.set_num_threads(1)
    return parts


@pytest.fixture(scope="module")
def rows(embedded_cfg):
    return list(split_samples(load_split(embedded_cfg, "test", "avmnist", progress=False), 48))


def test_replica_batches_callers_and_matches_batch1(parts, rows) -> None:
    expected = [key(parts.exitflow(meter=None, budget=False).engine.process(s)) for s in rows]
    replica = ServiceReplica(lambda: parts.exitflow(meter=None, budget=False),
                             service=ServiceConfig(max_batch_size=16, batch_wait_ms=1000.0))
    bad = Sample(999, 0, {"image": np.full((1, 28, 28), np.nan, np.float32), "audio": rows[0].payloads["audio"]})

    async def main() -> list:
        try:
            return list(await asyncio.gather(*(replica.process(s) for s in [*rows, bad])))
        finally:
            replica.batcher.shutdown()

    results = asyncio.run(main())
    assert [key(d) for d, _, error in results[:-1] if error is None] == expected
    decision, _, error = results[-1]
    assert isinstance(decision, FailedDecision) and "NaN" in error  # one bad sample, its own error
    status = replica.status()
    assert status["items"] == len(rows) + 1 and status["batch_size_mean"] > 1 and status["failures"] == 1


# -- replicas as Ray actors ----------------------------------------------------------------------
@pytest.mark.slow
def test_service_replicas_answer_several_callers_with_batch1_decisions(embedded_cfg, parts, rows) -> None:
    ray = pytest.importorskip("ray")
    from exitflow.pipeline.live.ray_connect import start_ray

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
