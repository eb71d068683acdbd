"""ShadowRecalibration on the committed avmnist CNN family: shadow cost, determinism, budget, config."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from exitflow.devices.measurement import Measurement
from exitflow.pipeline.bundles.manifest import read_manifest
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.roots import EMBEDDED_DATA
from exitflow.pipeline.errors import ConfigError
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from exitflow.pipeline.inference.batch_engine import as_batch_engine
from exitflow.pipeline.inference.shadow import (
    ShadowRecalibration,
    bench_systems,
    settings_from_config,
    shadow_columns,
    with_recalibration,
)
from exitflow.pipeline.live.runtime.workers import resolve_engine_factory
from exitflow.scheduler.recalibration import OnlineRecalibrator, RecalibrationSettings
from tests.pipeline.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rows(embedded_cfg):
    return list(split_samples(load_split(embedded_cfg, "test", "avmnist", progress=False), 60))


class CountingMeter:
    """A meter whose every window costs 1 mJ (0.5 attributable): energy then counts windows."""

    def __init__(self) -> None:
        self.windows: list[str] = []

    def begin_window(self, name: str) -> None:
        self.windows.append(name)

    def end_window(self, name: str) -> Measurement:
        return Measurement(energy_mj=1.0, duration_s=0.001, avg_power_mw=1000.0, source="counting", estimated=True,
                           dynamic_energy_mj=0.5, idle_energy_mj=0.5)


def _wrapped(parts, meter=None, **settings) -> ShadowRecalibration:
    system = parts.exitflow(meter=meter, budget=False)
    policy = system.engine.policy
    controller = OnlineRecalibrator(policy.base_thresholds, policy.exit_rule, RecalibrationSettings(**settings))
    return ShadowRecalibration(system, parts.full(), controller)


def test_every_shadowed_decision_carries_the_full_paths_cost(parts, rows):
    wrapped = _wrapped(parts, shadow_share=1.0, warmup_samples=0)
    plain = parts.exitflow(budget=False)
    full = parts.full()
    for sample in rows[:20]:
        before = dict(wrapped.policy.thresholds)
        d = wrapped.process(sample)
        plain.engine.policy.set_thresholds(wrapped.controller.base_thresholds)
        assert d.shadow and d.shadow_prediction == full.process(sample).prediction
        assert "shadow" in d.latency_ms and d.latency_ms["total"] >= d.latency_ms["shadow"]
        if d.shadow_macs:  # an early exit: the full path ran on top
            assert d.shadow_macs == full.macs
        else:  # the walk was the full path: the comparison was free
            assert d.exits == {"image": 2, "audio": 2} and d.exited_by == "fusion"
        assert d.thresholds == before  # a decision records the thresholds it ran with
    assert wrapped.shadow_macs_total > 0


def test_disagreements_tighten_the_policy_thresholds(parts, rows):
    wrapped = _wrapped(parts, shadow_share=1.0, warmup_samples=0, target_disagreement=0.001, step=1.0)
    decisions = [wrapped.process(s) for s in rows]
    cols = shadow_columns(decisions, wrapped)
    assert cols["shadow_share"] == 1.0 and cols["disagreement"] is not None
    status = wrapped.status()
    if status["disagreements"]:  # the embedded rows disagree at least once at the calibrated thresholds
        assert status["shift"] < 0
        assert wrapped.policy.base_thresholds["fusion"] < status["calibrated_thresholds"]["fusion"]
    assert status["thresholds"] == wrapped.policy.base_thresholds
    assert set(status) >= {"target_disagreement", "measured_disagreement", "thresholds", "shadow_share", "shift"}


def test_a_replay_is_deterministic(parts, rows):
    def run() -> list[tuple]:
        wrapped = _wrapped(parts, shadow_share=0.3, warmup_samples=10, warmup_share=0.8, seed=5)
        return [(d.prediction, d.shadow, d.shadow_prediction, d.macs, tuple(sorted(d.thresholds.items())))
                for d in (wrapped.process(s) for s in rows)]

    first = run()
    assert first == run()
    assert any(shadow for _, shadow, *_ in first) and not all(shadow for _, shadow, *_ in first)


def test_shadow_energy_is_in_the_decision_and_the_budget_sees_it(parts, rows):
    meter = CountingMeter()
    system = parts.exitflow(meter=meter, budget_mj=5.0)
    policy = system.engine.policy
    controller = OnlineRecalibrator(policy.base_thresholds, policy.exit_rule,
                                    RecalibrationSettings(shadow_share=1.0, warmup_samples=0))
    wrapped = ShadowRecalibration(system, parts.full(), controller)
    budget = system.engine.budget
    decisions = []
    for sample in rows[:10]:
        before = budget.samples
        decisions.append(wrapped.process(sample))
        assert budget.samples == before + 1  # one budget step per sample, shadow included
    ran = [d for d in decisions if d.shadow_macs]
    assert ran and all(d.shadow_energy_mj > 0 and d.energy_mj > d.shadow_energy_mj for d in ran)
    assert wrapped.status()["held_by_budget"] and controller.shift == 0.0  # the budget owns the thresholds
    # what the budget saw is each decision's energy, the shadow's included
    assert budget.total_energy_mj == pytest.approx(sum(system.engine.budget_energy(d) for d in decisions))


def test_config_switch_and_bench_rows(parts, rows):
    on = with_recalibration(parts.cfg, parts)
    assert isinstance(on, ShadowRecalibration) and on.name == "exitflow"
    off_cfg = dataclasses.replace(parts.cfg, recalibration=dataclasses.replace(parts.cfg.recalibration, enabled=False))
    assert not isinstance(with_recalibration(off_cfg, parts), ShadowRecalibration)
    systems = bench_systems(parts)
    assert list(systems) == ["exitflow", "exitflow-fixed"]
    assert isinstance(systems["exitflow"], ShadowRecalibration)
    assert systems["exitflow-fixed"].process(rows[0]).system == "exitflow-fixed"


def test_inconsistent_settings_are_a_config_error(parts):
    bad = dataclasses.replace(parts.cfg.recalibration, min_shift=0.0)
    with pytest.raises(ConfigError, match="min_shift"):
        settings_from_config(bad)


def test_recalibrate_cli_saves_into_a_bundle_that_still_verifies(tmp_path, embedded_cfg, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / "avmnist", bundle)
    before = json.loads((bundle / "profile.json").read_text())["thresholds"]
    code = run_cli("--set", f"data.root={EMBEDDED_DATA}", "--set", f"data.cache_dir={embedded_cfg.data.cache_dir}",
                   "--set", "recalibration.warmup_samples=0", "--set", "recalibration.shadow_share=1.0",
                   "--set", "recalibration.target_disagreement=0.001", "--set", "power.meter=psutil",
                   "recalibrate", "--bundle", str(bundle), "--limit", "40", "--save")
    assert code == 0
    out = capsys.readouterr().out
    assert "disagreement with the full path" in out and "saved" in out
    after = json.loads((bundle / "profile.json").read_text())["thresholds"]
    assert set(after) == set(before)
    read_manifest(bundle)  # sha256 of the rewritten profile matches the manifest
    if "disagreement with the full path 0.0000" not in out:
        assert after["fusion"] < before["fusion"]


def test_the_live_engine_factory_wraps_exitflow(embedded_cfg, rows):
    engine = resolve_engine_factory("exitflow.pipeline.inference.shadow:exitflow_engine")(embedded_cfg)
    assert isinstance(engine, ShadowRecalibration)
    decisions = [engine.process(s) for s in rows[:12]]
    shadowed = [d for d in decisions if d.shadow]
    assert shadowed and all(d.recalibration is not None for d in shadowed)
    assert shadowed[-1].to_json_dict()["recalibration"]["target_disagreement"] == embedded_cfg.recalibration.target_disagreement


def test_the_eager_engine_measures_the_shadow_in_its_own_window(embedded_cfg, rows):
    cfg = dataclasses.replace(embedded_cfg, engine=dataclasses.replace(embedded_cfg.engine, backend="torch"))
    eager = AdaptiveParts(cfg, "avmnist")
    meter = CountingMeter()
    wrapped = _wrapped(eager, meter=meter, shadow_share=1.0, warmup_samples=0)
    ran = [d for d in (wrapped.process(s) for s in rows[:10]) if d.shadow_macs]
    assert ran and all(d.shadow_energy_mj == 1.0 and d.energy_mj == 2.0 and d.dynamic_energy_mj == 1.0 for d in ran)
    assert "shadow" in meter.windows


def test_batches_shadow_the_same_samples_as_one_at_a_time(parts, rows):
    one = _wrapped(parts, shadow_share=0.4, warmup_samples=0, seed=9)
    batched = _wrapped(parts, shadow_share=0.4, warmup_samples=0, seed=9)
    singles = [one.process(s) for s in rows[:16]]  # thresholds move after each shadowed sample
    batch = batched.process_batch(rows[:16])  # thresholds move after the batch
    assert [d.shadow for d in singles] == [d.shadow for d in batch]
    full = parts.full()
    for d, s in zip(batch, rows[:16], strict=True):
        assert d.system == "exitflow"
        if d.shadow:
            assert d.shadow_prediction == full.process(s).prediction
            assert d.recalibration is not None and d.macs >= d.shadow_macs
    assert batched.controller.shadowed == sum(d.shadow for d in batch)
    assert as_batch_engine(batched) is batched  # the service batches through the wrapper


def test_at_the_floor_no_modality_is_skipped(parts, rows):
    """A walk that skips a modality by utility is not the full path: at the "never" floor skipping is off."""
    wrapped = _wrapped(parts, shadow_share=1.0, warmup_samples=0, step=10.0, min_shift=-1.0)
    wrapped.controller.shift = -0.5  # one disagreement from the floor
    for sample in rows:
        d = wrapped.process(sample)
        if d.shadow and d.prediction != d.shadow_prediction:
            break
    else:  # no sample of the slice disagreed: one disagreement, as a shadowed sample would report it
        d = dataclasses.replace(wrapped.process(rows[0]), prediction=0, shadow_prediction=1)
        wrapped.controller.shift = -0.5
        wrapped._observe(d, held=False)
    assert wrapped.controller.shift <= wrapped.controller.settings.min_shift
    assert wrapped.policy._skip_negative is False
    after = [wrapped.process(s) for s in rows[:10]]
    end = "rung" if parts.rung is not None else "fusion"  # at the floor every walk is the full (strongest) path
    assert all(not d.skipped and d.exited_by == end and d.prediction == d.shadow_prediction for d in after)
