"""The inference service: the replica's batch (shedding, preprocessing, zero-copy, isolation) without Ray,
and the Ray Serve deployment answering several clients with batch-1 decisions."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from exitflow.pipeline.config import RayConfig, ServiceConfig
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.roots import SHARED_DATA
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.live.core.failures import FailedDecision, is_shed
from exitflow.pipeline.live.core.sample_batch import SampleBatch
from exitflow.pipeline.live.core.sync import AudioWindow
from exitflow.pipeline.live.runtime.ray.replica import (
    CapacityMeter,
    Request,
    ServiceReplica,
    ShedDecision,
    ShedPolicy,
    engine_payload,
    merge_status,
)
from exitflow.pipeline.messages import Decision, Sample


def key(d: Decision) -> tuple:
    return (d.sample_id, d.prediction, d.exits, d.exited_by, d.macs, d.order, d.skipped, d.missing, d.fused_checks)


# -- shedding, pure ------------------------------------------------------------------------------
def reqs(spec: str) -> list[Request]:
    """``"AAb"`` -> requests of clients a, a, b (sample ids 0, 1, 2); upper case arrived at 0 s, lower
    case at 1 s."""
    return [Request(Sample(i, 0, {}), c.lower(), 0.0 if c.isupper() else 1.0) for i, c in enumerate(spec)]


@pytest.mark.parametrize(
    ("policy", "after_ms", "batch", "spec", "kept", "shed"),
    [  # "now" is 1.05 s: upper case waited 1050 ms, lower case 50 ms
        ("none", 10.0, 4, "AAAA", [0, 1, 2, 3], []),
        ("oldest_first", 100.0, 4, "aab", [0, 1, 2], []),
        ("oldest_first", 100.0, 4, "AAb", [2], [(0, "deadline"), (1, "deadline")]),
        ("oldest_first", None, 2, "AAAA", [0, 1, 2, 3], []),  # no deadline: nothing is shed
        ("fair", 100.0, 4, "aaaab", [0, 1, 2, 3, 4], []),  # a full batch is load, not overload
        ("fair", 100.0, 4, "Baaaab", [3, 4, 5], [(0, "deadline"), (1, "fair_share"), (2, "fair_share")]),
        ("fair", 100.0, 6, "Caaaabb", [2, 3, 4, 5, 6], [(0, "deadline"), (1, "fair_share")]),  # share 6 // 2
        ("fair", None, 4, "AAAAAb", [0, 1, 2, 3, 4, 5], []),
    ],
)
def test_shed_policy(policy, after_ms, batch, spec, kept, shed) -> None:
    got_kept, got_shed = ShedPolicy(policy, after_ms, batch).split(reqs(spec), 1.05)
    assert [r.sample.sample_id for r in got_kept] == kept
    assert sorted((r.sample.sample_id, why) for r, why in got_shed) == shed


def test_fair_share_keeps_each_clients_newest_and_the_arrival_order() -> None:
    requests = reqs("Daaaaaabc")  # overloaded, a floods a batch of 8 shared by three robots: share 8 // 3
    kept, shed = ShedPolicy("fair", 100.0, 8).split(requests, 1.05)
    assert [(r.client, r.sample.sample_id) for r in kept] == [("a", 5), ("a", 6), ("b", 7), ("c", 8)]
    assert sorted(r.sample.sample_id for r, _ in shed) == [0, 1, 2, 3, 4]


def test_capacity_meter_follows_batches() -> None:
    meter = CapacityMeter(alpha=0.5)
    assert meter.capacity_sps is None
    meter.add(32, 0.01)  # 3200/s
    meter.add(0, 0.0)  # ignored
    meter.add(16, 0.01)  # 1600/s
    assert meter.capacity_sps == pytest.approx(2400.0)


def test_read_only_arrays_reach_the_engine_without_a_copy_or_warning() -> None:
    base = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    base.setflags(write=False)  # as Ray deserialises it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = engine_payload(base)
    assert t.data_ptr() == base.ctypes.data  # the same memory
    writable = np.zeros(3, np.float32)
    assert engine_payload(writable) is writable and engine_payload("text") == "text"


# -- a replica on the real engine, without Ray -----------------------------------------------------
@pytest.fixture(scope="module")
def rows(embedded_cfg):
    return list(split_samples(load_split(embedded_cfg, "test", "avmnist", progress=False), 48))


def test_replica_batch_matches_batch1_and_isolates_a_bad_sample(parts, rows) -> None:
    expected = [key(parts.exitflow(meter=None, budget=False).process(s)) for s in rows]
    replica = ServiceReplica(lambda: parts.exitflow(meter=None, budget=False),
                             service=ServiceConfig(max_batch_size=64, shed_after_ms=None))
    bad = Sample(999, 0, {"image": np.full((1, 28, 28), np.nan, np.float32), "audio": rows[0].payloads["audio"]})
    frozen = []
    for s in rows[:8]:  # payloads as Ray hands them over: read-only
        payloads = {m: p.copy() for m, p in s.payloads.items()}
        for p in payloads.values():
            p.setflags(write=False)
        frozen.append(Sample(s.sample_id, s.timestamp_ns, payloads, s.missing, s.label))

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The given NumPy array is not writable")
        results = replica.run_requests([Request(s, "robot0") for s in [*rows, bad, *frozen]])
    n = len(rows)
    assert [error for _, _, error in results[:n]] == [None] * n
    assert [key(d) for d, _, _ in results[:n]] == expected
    decision, _, error = results[n]
    assert isinstance(decision, FailedDecision) and "NaN" in error and not is_shed(error)
    assert [key(d) for d, _, _ in results[n + 1:]] == expected[:8]
    status = replica.status()
    assert status["items"] == n + 9 and status["batches"] == 1 and status["failures"] == 1
    assert status["capacity_sps"] > 0 and status["overloaded"] is False


def test_a_gathered_micro_batch_gets_batch1_decisions_per_client_and_isolates_a_bad_row(parts, rows) -> None:
    """The micro-batch path: rows of several robots packed as columns (one array per modality),
    read-only as they come out of Ray's store, unpacked in the replica, one result per row."""
    expected = [key(parts.exitflow(meter=None, budget=False).process(s)) for s in rows[:16]]
    replica = ServiceReplica(lambda: parts.exitflow(meter=None, budget=False),
                             service=ServiceConfig(max_batch_size=32, shed_after_ms=None))
    bad = Sample(999, 0, {"image": np.full((1, 28, 28), np.nan, np.float32), "audio": rows[0].payloads["audio"]})
    samples = [*rows[:8], bad, *rows[8:16]]
    batch = SampleBatch.pack(samples, [f"robot{i % 3}" for i in range(len(samples))])
    for column in batch.payloads.values():
        assert isinstance(column, np.ndarray)  # one contiguous array per modality
        column.setflags(write=False)
    now = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The given NumPy array is not writable")
        results = replica.run_requests([Request(s, c, now) for s, c in zip(batch.unpack(), batch.clients, strict=True)])
    assert [key(d) for d, _, e in results if e is None] == expected
    assert results[8][2] is not None and "NaN" in results[8][2]
    assert replica.status()["batches"] == 1


@pytest.mark.parametrize(
    ("replicas", "summed"),
    [
        ([], {"batches": 0, "items": 0, "batch_size_mean": 0.0, "capacity_sps": None, "overloaded": False}),
        ([{"batches": 2, "items": 40, "batch_size_max": 32, "busy_s": 1.0, "shed": {"deadline": 1},
           "capacity_sps": 900.0, "overloaded": False, "failures": 1, "budget": {"mj_per_sample": 5.0},
           "preprocess_drops": {"audio:ValueError": 2}},
          {"batches": 3, "items": 20, "batch_size_max": 8, "busy_s": 0.5, "shed": {"deadline": 2, "fair_share": 4},
           "capacity_sps": None, "overloaded": True, "failures": 0, "budget": {"mj_per_sample": 5.0},
           "preprocess_drops": {"audio:ValueError": 1}}],
         {"batches": 5, "items": 60, "batch_size_mean": 12.0, "batch_size_max": 32, "busy_s": 1.5,
          "shed": {"deadline": 3, "fair_share": 4}, "capacity_sps": 900.0, "overloaded": True, "failures": 1,
          "budget": {"mj_per_sample": 5.0}, "preprocess_drops": {"audio:ValueError": 3}}),
    ],
)
def test_service_status_sums_its_replicas(replicas, summed) -> None:
    got = merge_status(replicas)
    assert {k: got[k] for k in summed} == summed


def test_stats_reach_every_replica_through_calls_routed_to_one_each(monkeypatch) -> None:
    """Serve routes each status call to one replica: the client asks in rounds until each of the
    replicas the deployment reports has answered, and sums them (no Ray: the call is faked)."""
    import itertools

    from exitflow.pipeline.live.runtime.ray.service import InferenceService

    turn = itertools.cycle([0, 0, 2, 1])  # a router that picks replica 0 twice before the others

    async def fake_call(method: str, *args) -> dict:
        i = next(turn)
        return {"replica": f"r{i}", "replicas_running": 3, "batches": 1, "items": 10 * (i + 1), "busy_s": 0.1,
                "capacity_sps": 100.0, "shed": {}, "overloaded": i == 2}

    service = InferenceService("app", "deployment")
    monkeypatch.setattr(service, "_call", fake_call)
    stats = service.stats(timeout_s=30)
    assert sorted(stats["replicas"]) == ["r0", "r1", "r2"] and stats["replicas_reached"] == 3
    assert stats["items"] == 60 and stats["batches"] == 3 and stats["capacity_sps"] == 300.0
    assert stats["overloaded"] is True


def test_replica_preprocesses_raw_payloads_in_the_batch(parts) -> None:
    replica = ServiceReplica(lambda: parts.exitflow(meter=None, budget=False), service=ServiceConfig())
    rng = np.random.default_rng(0)
    raw = [Sample(i, 0, {"image": rng.integers(0, 255, (96, 128), dtype=np.uint8),
                         "audio": AudioWindow(rng.normal(0, 0.1, 16000).astype(np.float32), 16000)})
           for i in range(4)]
    silent = Sample(9, 0, {"image": raw[0].payloads["image"], "audio": AudioWindow(np.zeros(8, np.float32), 16000)})
    results = replica.run_batch([*raw, silent])
    assert all(error is None for _, _, error in results[:4])
    assert results[4][0].missing == ["audio"]  # a payload that does not convert is missing, counted
    assert sum(replica.status()["preprocess_drops"].values()) == 1


def test_replica_sheds_samples_past_the_deadline_with_their_reason(parts, rows) -> None:
    replica = ServiceReplica(lambda: parts.exitflow(meter=None, budget=False),
                             service=ServiceConfig(shed_policy="oldest_first", shed_after_ms=50.0))
    now = time.perf_counter()
    results = replica.run_requests([Request(rows[0], "a", now - 1.0), Request(rows[1], "a", now)])
    assert isinstance(results[0][0], ShedDecision) and results[0][2] == "shed:deadline"
    assert results[1][2] is None
    status = replica.status()
    assert status["shed"] == {"deadline": 1} and status["overloaded"] is True and status["items"] == 1


# -- the Ray Serve deployment ----------------------------------------------------------------------
@pytest.mark.slow
def test_serve_deployment_answers_two_clients_per_sample_and_micro_batch_with_batch1_decisions(
    embedded_cfg, parts, rows
) -> None:
    import dataclasses

    from exitflow.pipeline.live.runtime.ray.connect import start_ray
    from exitflow.pipeline.live.runtime.ray.service import InferenceService, service_shutdown

    # the batching under test, without the online recalibration's shadow draws (its own tests cover those)
    embedded_cfg = dataclasses.replace(
        embedded_cfg, recalibration=dataclasses.replace(embedded_cfg.recalibration, enabled=False))
    expected = {s.sample_id: key(parts.exitflow(meter=None, budget=False).process(s)) for s in rows}
    start_ray(RayConfig(num_cpus=2, namespace="exitflow-service-test"))
    try:
        cfg = ServiceConfig(name="test-service", num_cpus=0.5, max_batch_size=8, batch_wait_ms=200.0,
                            shed_policy="none")
        service = InferenceService.start("system:exitflow", embedded_cfg, service=cfg, client="robot0")
        assert service.deployment == "system-exitflow"
        other = InferenceService.connect("test-service", client="robot1")  # a second pipeline, same replicas
        # two robots of this process submit one sample at a time: gathered into micro-batch calls
        futures = [(service if i % 2 else other).submit(s) for i, s in enumerate(rows[:24])]
        results = [f.result(120) for f in futures]
        assert service.gather_stats()["calls"] < 24
        results += service.submit_many(rows[24:]).result(120)  # one call, one batch
        assert {d.sample_id: key(d) for d, _, error in results if error is None} == expected
        assert isinstance(service.decide(rows[0]), Decision)
        stats = service.stats()
        assert stats["items"] == len(rows) + 1 and stats["batch_size_mean"] > 1
        assert stats["replicas_reached"] == stats["replicas_running"] == 1 and len(stats["replicas"]) == 1
        replica_before = next(iter(stats["replicas"]))
        assert service.set_budget.remote(5.0, None).result(120) == {"mj_per_sample": 5.0, "power_w": None}
        stats = service.stats()
        assert stats["budget"] == {"mj_per_sample": 5.0, "power_w": None}  # reconfigured ...
        assert list(stats["replicas"]) == [replica_before]  # ... in place: the same replica
        assert isinstance(service.decide(rows[1]), Decision)
        # `exitflow budget set` finds no engine actor here and reaches the service instead, in place too
        from exitflow.pipeline.live.runtime.ray.control import set_ray_budget

        assert set_ray_budget(RayConfig(namespace="exitflow-service-test"), 7.0, None, service_app="test-service") == {
            "mj_per_sample": 7.0, "power_w": None}
        stats = service.stats()
        assert stats["budget"] == {"mj_per_sample": 7.0, "power_w": None} and list(stats["replicas"]) == [replica_before]
        if (SHARED_DATA / "fsdd" / "fsdd_test.npz").is_file():  # a Ray pipeline on the service: futures wake it
            from exitflow.pipeline.config import StreamConfig
            from exitflow.pipeline.live.runtime.ray.pipeline import RayPipeline
            from exitflow.pipeline.live.sources.robot import DigitRobotFactory, digit_stream

            robot = DigitRobotFactory("robot0", digit_stream(SHARED_DATA, n=3), fps=10, chunk_ms=50)
            pipe = RayPipeline(StreamConfig(live_view=False), "system:exitflow", embedded_cfg,
                               sources={"robot0": robot}, engine=service.for_client("robot0"))
            try:
                pipe.start()
                pipe.wait_ready(timeout_s=120)
                pipe.run(duration_s=4.0)
                snap = pipe.snapshot()
            finally:
                pipe.shutdown()
            assert snap["decisions"] >= 10 and snap["accuracy"]["labelled"] == snap["decisions"]
            assert snap["latency_ms"]["engine_call"]["p50"] < 1000.0
    finally:
        service_shutdown()


def test_deployment_options_follow_the_service_section() -> None:
    from exitflow.pipeline.live.runtime.ray.deployment import deployment_name, deployment_options

    assert deployment_name("system:exitflow") == "system-exitflow"
    fixed = deployment_options(ServiceConfig(num_replicas=2, max_batch_size=16), "m")
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["user_config"] == {"max_batch_size": 16, "batch_wait_ms": 5.0, "budget": None}
    auto = deployment_options(ServiceConfig(num_replicas=1, max_replicas=4, num_gpus=1.0), "m",
                              budget={"mj_per_sample": 2.0, "power_w": None})
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32.0}
    assert "num_replicas" not in auto and auto["ray_actor_options"]["num_gpus"] == 1.0
    assert auto["user_config"]["budget"] == {"mj_per_sample": 2.0, "power_w": None}
