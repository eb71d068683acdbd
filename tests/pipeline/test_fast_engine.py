"""The compiled fast path gives the reference engine's decisions (1,000 samples), batched and not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from exitflow.encoders.base import EncoderInputError
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import TruncatedSystem
from exitflow.pipeline.inference.backends import BackendError, open_backend
from exitflow.pipeline.inference.engine import Engine, policy_from_config
from exitflow.pipeline.inference.fast_engine import FastEngine, finite
from exitflow.pipeline.messages import Sample

KEYS = ("prediction", "order", "exits", "exit_layers", "skipped", "missing", "exited_by", "fused_checks", "macs")
FIXED_COSTS = {"call_ms": 0.003, "step_ms": {}}  # measured costs vary by machine; tests fix the cuts instead


@pytest.fixture(scope="module")
def samples(embedded_cfg) -> list[Sample]:
    return list(split_samples(load_split(embedded_cfg, "test", "avmnist"), 1000))


def _fast(parts, cuts: str = "auto", **kw) -> FastEngine:
    policy = policy_from_config(parts.profile, parts.cfg.scheduler)
    return FastEngine(parts.encoders, parts.fusion, policy, open_backend("onnxruntime"), cuts=cuts,
                      step_costs={"call_ms": 0.003, "step_ms": {}}, **kw)


def _reference(parts) -> Engine:
    return Engine(parts.encoders, parts.fusion, policy_from_config(parts.profile, parts.cfg.scheduler))


def _same(a, b) -> dict:
    return {k: (getattr(a, k), getattr(b, k)) for k in KEYS if getattr(a, k) != getattr(b, k)}


def test_parity_on_1000_samples(parts, samples) -> None:
    assert len(samples) == 1000
    ref, fast = _reference(parts), _fast(parts, cuts="steps")
    diffs = [(s.sample_id, _same(a, b), a.macs - b.macs) for s in samples for a, b in [(ref.process(s), fast.process(s))]]
    assert not [d for d in diffs if d[1].keys() - {"macs"}], diffs[:5]
    # the calibrated modality thresholds cannot pass (fused checks decide): their classifiers never run
    dead = {m for m, t in fast.policy.thresholds.items() if m != "fusion" and t < 0}
    if dead:
        heads = sum(e.heads[j].classifier.weight.numel() for m, e in parts.encoders.items() if m in dead
                    for j in range(e.num_exits))
        assert all(0 <= saved <= heads for *_, saved in diffs)


def test_parity_of_macs_when_every_exit_can_pass(parts, samples) -> None:
    """Thresholds that may pass (however rarely): every head runs and MACs equal the reference's exactly."""
    ref, fast = _reference(parts), _fast(parts, cuts="steps")
    live = {m: 1e-9 for m in ref.policy.base_thresholds if m != "fusion"}
    ref.policy.set_thresholds(live)
    fast.policy.set_thresholds(live)
    diffs = [(s.sample_id, _same(ref.process(s), fast.process(s))) for s in samples[:300]]
    assert not [d for d in diffs if d[1]], diffs[:5]


@pytest.mark.parametrize("cuts", ["auto", "one"])
def test_cuts_change_time_and_macs_never_decisions(parts, samples, cuts) -> None:
    ref, steps, fast = _reference(parts), _fast(parts, cuts="steps"), _fast(parts, cuts=cuts)
    for s in samples[:200]:
        a, b, c = ref.process(s), steps.process(s), fast.process(s)
        assert _same(a, c).keys() <= {"macs"}
        assert c.macs >= b.macs  # a cut may run steps after the stop (counted), never fewer
    if cuts == "one":
        assert len(next(iter(fast._compiled.values())).calls) == 1


def test_batches_equal_batch_of_one(parts, samples) -> None:
    fast = _fast(parts, cuts="steps")
    batch = samples[:64]
    ones = [fast.process(s) for s in batch]
    many = fast.process_batch(batch)
    for a, b in zip(ones, many, strict=True):
        assert not isinstance(b, Exception)
        assert not _same(a, b), (a.sample_id, _same(a, b))


def test_a_bad_sample_fails_alone(parts, samples) -> None:
    fast = _fast(parts)
    bad = dataclasses.replace(samples[1], payloads={**samples[1].payloads,
                                                    "audio": np.full((1, 112, 112), np.nan, np.float32)})
    wrong = dataclasses.replace(samples[2], payloads={**samples[2].payloads, "image": np.zeros((3, 5), np.float32)})
    out = fast.process_batch([samples[0], bad, wrong, samples[3]])
    assert isinstance(out[1], EncoderInputError) and "NaN" in str(out[1])
    assert isinstance(out[2], EncoderInputError) and "shape" in str(out[2])
    assert out[0].prediction == fast.process(samples[0]).prediction
    assert out[3].prediction == fast.process(samples[3]).prediction
    with pytest.raises(EncoderInputError, match="NaN"):
        fast.process(bad)


def test_missing_modality_matches_reference(parts, samples) -> None:
    ref, fast = _reference(parts), _fast(parts)
    for s in samples[:20]:
        only_image = Sample(s.sample_id, s.timestamp_ns, {"image": s.payloads["image"]}, label=s.label)
        gone = dataclasses.replace(s, missing=frozenset({"image"}))
        for sample in (only_image, gone):
            a, b = ref.process(sample), fast.process(sample)
            assert _same(a, b).keys() <= {"macs"} and b.macs <= a.macs, _same(a, b)  # dead heads never run
    empty = Sample(1, 0, {}, label=1)
    assert fast.process(empty).prediction == -1


def test_budget_follows_lambda_like_the_reference(parts, samples) -> None:
    from exitflow.pipeline.inference.engine import budget_from_config

    cfg = dataclasses.replace(parts.cfg.budget, mode="mj_per_sample", mj_per_sample=0.01)
    fake_energy = FakeMeter()
    ref = Engine(parts.encoders, parts.fusion, policy_from_config(parts.profile, parts.cfg.scheduler),
                 meter=FakeMeter(), budget=budget_from_config(cfg, parts.cfg.scheduler.lam, parts.profile))
    fast = _fast(parts, meter=fake_energy, budget=budget_from_config(cfg, parts.cfg.scheduler.lam, parts.profile))
    for s in samples[:60]:
        a, b = ref.process(s), fast.process(s)
        assert not _same(a, b) and a.lam == b.lam
    assert b.lam < parts.cfg.scheduler.lam  # the tight budget pulled lambda down on both


class FakeMeter:
    """Energy proportional to nothing: each window is 1 mJ (deterministic), half of it dynamic."""

    def begin_window(self, name: str) -> None:
        pass

    def end_window(self, name: str):  # noqa: ANN201
        from types import SimpleNamespace

        return SimpleNamespace(energy_mj=1.0, dynamic_energy_mj=0.5, idle_energy_mj=0.5, source="fake", estimated=True)


def test_compiled_single_pass_systems_match_eager(parts, samples) -> None:
    for exits in ({"image": 2, "audio": 2}, {"image": 2, "audio": 0}, {"image": 0, "audio": 1}):
        eager = TruncatedSystem("t", parts.encoders, exits, parts.fusion, parts.input_adapter)
        compiled = parts.static(exits)
        assert compiled.backend == "onnxruntime"
        preds = [(eager.process(s).prediction, compiled.process(s).prediction) for s in samples[:300]]
        agree = np.mean([a == b for a, b in preds])
        assert agree >= 0.997, (exits, agree)  # float rounding may flip a near tie, no more
        many = compiled.process_batch(samples[:32])
        assert [d.prediction for d in many] == [compiled.process(s).prediction for s in samples[:32]]


def test_finite_check() -> None:
    zeros = np.zeros(6, dtype=np.float32)
    assert finite(np.arange(6, dtype=np.float32), zeros)
    assert finite(np.full(6, 3e38, dtype=np.float32), zeros)  # huge but finite
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(6, dtype=np.float32)
        x[4] = bad
        assert not finite(x, zeros)


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="choose one of"):
        open_backend("tensorrt")
    with pytest.raises(BackendError, match="engine.backend: torch"):
        open_backend("onnxruntime", device="cuda")


def test_cost_unit_ms_orders_by_measured_time(parts, samples) -> None:
    import dataclasses as dc

    from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts

    cfg = dc.replace(parts.cfg, scheduler=dc.replace(parts.cfg.scheduler, cost_unit="ms"))
    timed_parts = AdaptiveParts(cfg, "avmnist")
    profile = timed_parts.timed_profile()
    assert all(e.latency_ms is not None and e.latency_ms > 0 for rows in profile.exits.values() for e in rows)
    system = timed_parts.exitflow(budget=False)
    assert system.engine.policy.model.cost_unit == "ms"
    decisions = [system.process(s) for s in samples[:50]]
    assert all(d.prediction in range(10) for d in decisions)
    eager = dc.replace(cfg, engine=dc.replace(cfg.engine, backend="torch"))
    with pytest.raises(Exception, match="cost_unit ms needs"):
        AdaptiveParts(eager, "avmnist").exitflow()
