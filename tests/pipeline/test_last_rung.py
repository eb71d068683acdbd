"""The last rung behind the committed CNN family: who escalates, same answers on every engine and batch size,
``full`` as the strongest path, the walk simulation's rung, and the profile's rung entry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from exitflow.encoders.last_rung import RUNG_KEY, mix_logits
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts, EngineSystem, TruncatedSystem
from exitflow.pipeline.inference.backends import open_backend
from exitflow.pipeline.inference.compiled_systems import compiled_truncation
from exitflow.pipeline.inference.engine import Engine, policy_from_config
from exitflow.pipeline.inference.fast_engine import FastEngine
from exitflow.pipeline.inference.last_rung import LastRung, strongest_path
from exitflow.pipeline.inference.loading import load_baseline
from exitflow.pipeline.messages import Decision
from exitflow.pipeline.training.calibrate import WalkSimulator

WEIGHT = 0.6


@pytest.fixture(scope="module")
def samples(embedded_cfg):
    return list(split_samples(load_split(embedded_cfg, "test", "avmnist", progress=False), 300))


@pytest.fixture(scope="module")
def lf(embedded_cfg):
    return load_baseline(embedded_cfg, "lf", "avmnist")


def _last(parts: AdaptiveParts) -> dict[str, int]:
    return {m: e.num_exits - 1 for m, e in parts.encoders.items()}


def _systems(parts, lf):
    """exitflow with a rung on the fast path and on the eager engine (same thresholds, rung weight)."""
    policy = lambda: policy_from_config(parts.profile, parts.cfg.scheduler)  # noqa: E731
    backend = open_backend("onnxruntime")
    fast = FastEngine(parts.encoders, parts.fusion, policy(), backend, step_costs={"call_ms": 0.003, "step_ms": {}})
    eager = Engine(parts.encoders, parts.fusion, policy())
    rung_fast = LastRung(lf, WEIGHT, "lf", _last(parts), "entropy", backend)
    rung_eager = LastRung(lf, WEIGHT, "lf", _last(parts), "entropy", None)
    return (EngineSystem("exitflow", fast, parts.modalities, rung_fast),
            EngineSystem("exitflow", eager, parts.modalities, rung_eager))


def _cnn_final_logits(parts, sample) -> np.ndarray:
    with torch.no_grad():
        outs = {m: parts.encoders[m](torch.as_tensor(np.asarray(sample.payloads[m], np.float32))[None])
                for m in parts.fusion.modalities}
        emb = {m: outs[m][-1].embedding for m in outs}
        return parts.fusion.fuse(emb, _last(parts), True).numpy()[0]


def test_forced_answers_escalate_and_match_the_mix(parts, lf, samples) -> None:
    fast, eager = _systems(parts, lf)
    escalated = 0
    for s in samples:
        a, b = fast.process(s), eager.process(s)
        assert (a.prediction, a.rung, a.exited_by) == (b.prediction, b.rung, b.exited_by), s.sample_id
        assert a.final_logits is None and b.final_logits is None  # handed over to the rung only
        if a.rung is None:
            continue
        escalated += 1
        with torch.no_grad():
            lf_logits = lf({m: torch.as_tensor(np.asarray(s.payloads[m], np.float32))[None]
                            for m in lf.modalities}).numpy()
        expected = int(mix_logits(_cnn_final_logits(parts, s)[None], lf_logits, WEIGHT).argmax())
        assert a.prediction == expected
        assert fast.rung.macs < a.macs <= b.macs  # the walk plus the rung (the fast path prunes dead heads)
        assert a.latency_ms["rung"] > 0
        assert "final_logits" not in a.to_json_dict()
    assert 0 < escalated < len(samples)  # some samples escalate, most do not


def test_batches_give_the_single_answers(parts, lf, samples) -> None:
    fast, eager = _systems(parts, lf)
    for system in (fast, eager):
        single = [system.process(s) for s in samples[:64]]
        batch = system.process_batch(samples[:64])
        assert [d.prediction for d in single] == [d.prediction for d in batch]
        assert [d.rung for d in single] == [d.rung for d in batch]
        assert [d.macs for d in single] == [d.macs for d in batch]


def test_a_passing_final_check_does_not_escalate(parts, lf, samples) -> None:
    fast, _ = _systems(parts, lf)
    fast.engine.policy.set_thresholds({"fusion": 1.0})  # every fused check passes: nothing is forced
    assert all(fast.process(s).rung is None for s in samples[:50])


def test_strongest_path_is_the_mix_of_both_full_models(parts, lf, samples) -> None:
    rung = LastRung(lf, WEIGHT, "lf", _last(parts), "entropy", None)
    last = _last(parts)
    cnn_compiled = compiled_truncation("full", parts.encoders, parts.fusion, last, open_backend("onnxruntime"))
    cnn_eager = TruncatedSystem("full", parts.encoders, last, parts.fusion)
    compiled = strongest_path(cnn_compiled, parts.encoders, parts.fusion, rung, open_backend("onnxruntime"))
    eager = strongest_path(cnn_eager, parts.encoders, parts.fusion, rung, None)
    for s in samples[:40]:
        with torch.no_grad():
            lf_logits = lf({m: torch.as_tensor(np.asarray(s.payloads[m], np.float32))[None]
                            for m in lf.modalities}).numpy()
        expected = int(mix_logits(_cnn_final_logits(parts, s)[None], lf_logits, WEIGHT).argmax())
        assert compiled.process(s).prediction == expected == eager.process(s).prediction
    assert compiled.macs == eager.macs > rung.macs
    # a sample without audio gets the CNN's full path (lf needs both modalities)
    partial = dataclasses.replace(samples[0], payloads={"image": samples[0].payloads["image"]}, missing=["audio"])
    assert compiled.process(partial).macs < compiled.macs


def test_rung_refuses_bad_payload_shapes(parts, lf, samples) -> None:
    rung = LastRung(lf, WEIGHT, "lf", _last(parts), "entropy", open_backend("onnxruntime"))
    bad = dataclasses.replace(samples[0], payloads={**samples[0].payloads, "audio": np.zeros((1, 5, 5), np.float32)})
    with pytest.raises(ExitflowError, match="audio of shape"):
        rung.run([bad], np.zeros((1, 10), np.float32))


def test_walk_simulation_sends_unanswered_samples_to_the_rung() -> None:
    rng = np.random.default_rng(0)
    n, c = 200, 10
    labels = rng.integers(0, c, n)
    logits = {k: rng.normal(size=(n, c)) for k in ("image0", "audio0", "image0_audio0")}
    rung = np.eye(c)[labels] * 10.0  # a perfect rung
    sim = WalkSimulator(logits, labels, ("image", "audio"), {"image": [1.0], "audio": [2.0]},
                        {"image0_audio0": 0.5}, "entropy", ("image", "audio"), rung=(rung, 100.0))
    never = {"image": -1.0, "audio": -1.0, "fusion": -1.0, RUNG_KEY: -1.0}
    pred, macs = sim.predictions(never)
    assert (pred == labels).all() and np.allclose(macs, 103.5)  # every sample walked on to the rung
    # the full fusion's check has its own threshold: the fused checks' ("fusion") does not decide it
    assert sim.run({**never, "fusion": 2.0}).shares[RUNG_KEY] == 1.0
    result = sim.run({**never, RUNG_KEY: 2.0})  # the full fusion answers everything
    assert result.shares[RUNG_KEY] == 0.0 and result.macs == pytest.approx(3.5)
    assert sim.full_accuracy() == 1.0  # the full path is the walk plus the rung


def test_profile_rung_for_other_weights_is_a_clear_error(parts) -> None:
    profile = dataclasses.replace(parts.profile, rung={"model": "lf", "weight": 0.5, "sha256": "0" * 64})
    stub = AdaptiveParts.__new__(AdaptiveParts)
    on = dataclasses.replace(parts.cfg, scheduler=dataclasses.replace(parts.cfg.scheduler, last_rung="lf"))
    stub.cfg, stub.dataset, stub.profile = on, parts.dataset, profile
    stub.encoders, stub.fusion, stub.device, stub.backend = parts.encoders, parts.fusion, parts.device, None
    with pytest.raises(ExitflowError, match="re-run `exitflow calibrate`"):
        stub._load_rung()
    stub.cfg = dataclasses.replace(parts.cfg, scheduler=dataclasses.replace(parts.cfg.scheduler, last_rung="none"))
    assert stub._load_rung() is None


def test_decision_json_leaves_the_handover_out() -> None:
    d = Decision(sample_id=1, prediction=2, system="exitflow", final_logits=np.zeros(10), rung="lf")
    data = d.to_json_dict()
    assert "final_logits" not in data and data["rung"] == "lf"
