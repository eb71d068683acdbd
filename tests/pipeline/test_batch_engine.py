"""BatchEngine: batched decisions equal batch-1 decisions on real rows, compaction, isolation, energy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from exitflow.devices.measurement import Measurement
from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.roots import EMBEDDED_DATA
from exitflow.pipeline.errors import CheckpointError
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from exitflow.pipeline.inference.batch_engine import BatchEngine
from exitflow.pipeline.messages import Decision, Sample


@pytest.fixture(scope="module")
def eager(embedded_cfg) -> AdaptiveParts:
    """The default CNN family on the eager reference engine (``engine.backend: torch``): the batch engine
    under test batches that engine (the compiled fast path batches itself: tests/pipeline/test_fast_engine.py)."""
    cfg = dataclasses.replace(embedded_cfg, engine=dataclasses.replace(embedded_cfg.engine, backend="torch"))
    try:
        loaded = AdaptiveParts(cfg, "avmnist")
    except CheckpointError as e:
        pytest.skip(f"no default CNN checkpoints: {e}")
    return loaded


def key(d: Decision) -> tuple:
    return (d.sample_id, d.prediction, d.exits, d.exit_layers, d.exited_by, d.macs, d.order, d.skipped,
            d.missing, d.fused_checks)


@pytest.fixture(scope="module")
def rows(embedded_cfg):
    return list(split_samples(load_split(embedded_cfg, "test", "avmnist", progress=False), 96))


def test_batched_decisions_equal_batch1_decisions_on_real_rows(parts, eager, rows) -> None:
    engine = eager.exitflow(meter=None, budget=False).engine
    single = [engine.process(s) for s in rows]
    batched = BatchEngine(engine)
    got: list = []
    for i in range(0, len(rows), 32):
        got += batched.process_batch(rows[i : i + 32])
    assert all(isinstance(d, Decision) for d in got)
    assert [key(d) for d in got] == [key(d) for d in single]
    # the walk exits at different places in these rows: equality covers early and deep samples
    assert len({tuple(sorted(d.exits.items())) for d in single}) >= 2


def test_batched_exit_logits_match_batch1_within_tolerance(parts, rows) -> None:
    enc = parts.encoders["audio"]
    x = torch.from_numpy(np.stack([s.payloads["audio"] for s in rows[:16]])).float()  # (16, 1, 112, 112)
    with torch.inference_mode():
        state = enc.start(x)
        batch = [enc.step(state).logits for _ in range(enc.num_exits)]  # (16, C) each
        for i in range(16):
            one = enc.start(x[i : i + 1])
            for j in range(enc.num_exits):
                torch.testing.assert_close(enc.step(one).logits[0], batch[j][i], atol=1e-4, rtol=1e-4)


def test_compaction_runs_deeper_blocks_only_on_samples_still_active(parts, eager, rows) -> None:
    engine = eager.exitflow(meter=None, budget=False).engine
    enc = eager.encoders["audio"]
    seen: list[list[int]] = [[] for _ in enc.blocks]
    hooks = [block.register_forward_hook(lambda mod, inp, out, i=i: seen[i].append(inp[0].shape[0]))
             for i, block in enumerate(enc.blocks)]
    try:
        decisions = BatchEngine(engine).process_batch(rows[:64])
    finally:
        for h in hooks:
            h.remove()
    reached = [sum(1 for d in decisions if d.exits.get("audio", -1) >= i) for i in range(len(enc.blocks))]
    assert [sum(n) for n in seen] == reached  # block i ran on exactly the samples that went that deep
    assert reached[0] == 64 and reached[-1] < reached[0]  # some samples exited: deeper blocks ran on fewer


def test_one_bad_sample_never_fails_the_batch(parts, eager, rows) -> None:
    engine = eager.exitflow(meter=None, budget=False).engine
    good = rows[:6]
    nan = Sample(100, 0, {"image": np.full((1, 28, 28), np.nan, np.float32), "audio": rows[6].payloads["audio"]})
    wrong = Sample(101, 0, {"image": rows[7].payloads["image"], "audio": np.zeros((1, 50, 50), np.float32)})
    image_only = Sample(102, 0, {"image": rows[8].payloads["image"]}, missing=frozenset({"audio"}))
    nothing = Sample(103, 0, {"text": "no model input"})
    batch = [good[0], nan, good[1], wrong, good[2], image_only, nothing, *good[3:]]
    got = BatchEngine(engine).process_batch(batch)
    for sample, result in zip(batch, got, strict=True):
        if sample in (nan, wrong):
            assert isinstance(result, Exception)
            with pytest.raises(type(result)):
                engine.process(sample)  # the batch-1 engine fails on it the same way
        else:
            assert isinstance(result, Decision) and key(result) == key(engine.process(sample))
    assert got[5].missing == ["audio"] and got[6].prediction == -1


def test_a_failing_batched_fusion_is_rerun_sample_by_sample(parts, eager, rows, monkeypatch) -> None:
    engine = eager.exitflow(meter=None, budget=False).engine
    expected = [key(engine.process(s)) for s in rows[:12]]
    fuse = engine.fusion.fuse_exits

    def only_batch_one(outputs):
        if next(iter(outputs.values())).logits.shape[0] > 1:
            raise RuntimeError("injected: this fusion cannot batch")
        return fuse(outputs)

    monkeypatch.setattr(engine.fusion, "fuse_exits", only_batch_one)
    got = BatchEngine(engine).process_batch(rows[:12])
    assert [key(d) for d in got] == expected


class FixedMeter:
    """Every window measures 120 mJ (100 dynamic, 20 idle); counts windows."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def begin_window(self, name: str) -> None:
        self.names.append(name)

    def end_window(self, name: str) -> Measurement:
        return Measurement(energy_mj=120.0, duration_s=0.01, avg_power_mw=12000.0, source="fixed", estimated=True, name=name,
                           idle_energy_mj=20.0, dynamic_energy_mj=100.0)


def test_one_meter_window_per_batch_apportioned_by_macs(parts, eager, rows) -> None:
    meter = FixedMeter()
    engine = eager.exitflow(meter=meter, budget=False).engine
    got = BatchEngine(engine).process_batch(rows[:20])
    assert meter.names == ["batch"]
    total_macs = sum(d.macs for d in got)
    assert sum(d.energy_mj for d in got) == pytest.approx(120.0)
    for d in got:
        assert d.energy_mj == pytest.approx(120.0 * d.macs / total_macs)
        assert d.dynamic_energy_mj == pytest.approx(100.0 * d.macs / total_macs)
        assert d.energy_source == "fixed" and d.estimated is True


def test_samples_with_different_plans_share_a_batch(parts, eager, rows) -> None:
    """Audio-only samples start their audio blocks rounds before the full ones: two audio cohorts."""
    engine = eager.exitflow(meter=None, budget=False).engine
    batch = []
    for i, s in enumerate(rows[:36]):
        if i % 3 == 1:  # audio only
            s = Sample(s.sample_id, 0, {"audio": s.payloads["audio"]}, missing=frozenset({"image"}), label=s.label)
        elif i % 3 == 2:  # image only
            s = Sample(s.sample_id, 0, {"image": s.payloads["image"]}, missing=frozenset({"audio"}), label=s.label)
        batch.append(s)
    got = BatchEngine(engine).process_batch(batch)
    assert [key(d) for d in got] == [key(engine.process(s)) for s in batch]
    assert {tuple(d.order) for d in got} >= {("audio",), ("image",)}


def test_a_budget_moves_lambda_once_per_batch(parts, eager, rows) -> None:
    meter = FixedMeter()  # 100 mJ attributable a batch of 16: 6.25 mJ a sample on average
    engine = eager.exitflow(meter=meter, budget_mj=3.0).engine
    before = engine.policy.lam
    batched = BatchEngine(engine)
    first = batched.process_batch(rows[:16])
    assert {d.lam for d in first} == {before}  # the whole batch decided at the lambda it began with
    after = engine.policy.lam
    assert after < before and engine.budget.samples == 16  # over budget: lambda fell, fed 16 samples
    second = batched.process_batch(rows[16:32])
    assert {d.lam for d in second} == {after}


@pytest.mark.slow
@pytest.mark.parametrize("fusion_exit", ["transformer", "late"])
def test_vit_text_family_batched_equals_batch1(data_cache, fusion_exit) -> None:
    """avmnist-t: ViT image/audio, the BERT text encoder (padded in a batch) and either fusion exit."""
    cfg = load_config(None, [f"data.root={EMBEDDED_DATA}", f"data.cache_dir={data_cache}",
                             f"fusion.exit={fusion_exit}"])
    try:
        parts = AdaptiveParts(cfg, "avmnist-t")
    except CheckpointError as e:
        pytest.skip(f"no avmnist-t checkpoints: {e}")
    samples = list(split_samples(load_split(cfg, "test", "avmnist-t", progress=False), 32))
    engine = parts.exitflow(meter=None, budget=False).engine  # the ViT family: the eager engine either way
    got = BatchEngine(engine).process_batch(samples)
    assert [(*key(d), d.fusion_layers) for d in got] == [(*key(d), d.fusion_layers)
                                                           for d in map(engine.process, samples)]
