"""The CNN family's walk simulation and operating-point search (calibration data only)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from exitflow.devices import get_power_meter
from exitflow.pipeline.artifacts import cnn_folder
from exitflow.pipeline.training.calibrate import (
    WalkSimulator,
    binomial_pvalue,
    calibrate_family,
    risk_controlled_shift,
)
from tests.conftest import requires_shared

N, C = 400, 4
MACS = {"image": [1.0, 2.0], "audio": [10.0, 30.0]}
HEADS = {"image0_audio0": 0.5, "image0_audio1": 0.5, "image1_audio0": 0.5, "image1_audio1": 0.5}


def _logits(rng, labels, sharp: float, right: float) -> np.ndarray:
    """Logits that name the label for a share ``right`` of the samples, with confidence ``sharp``."""
    pred = np.where(rng.random(N) < right, labels, (labels + 1) % C)
    out = rng.normal(0, 0.1, (N, C))
    out[np.arange(N), pred] += sharp
    return out


@pytest.fixture
def sim() -> WalkSimulator:
    return _make_sim()


def _make_sim(agreement: bool = False) -> WalkSimulator:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, N)
    logits = {
        "image0": _logits(rng, labels, 3.0, 0.5), "image1": _logits(rng, labels, 0.5, 0.6),
        "audio0": _logits(rng, labels, 1.0, 0.7), "audio1": _logits(rng, labels, 4.0, 0.95),
        "image1_audio0": _logits(rng, labels, 6.0, 1.0), "image1_audio1": _logits(rng, labels, 8.0, 1.0),
        "image0_audio0": _logits(rng, labels, 1.0, 0.5), "image0_audio1": _logits(rng, labels, 1.0, 0.5),
    }
    return WalkSimulator(logits, labels, ("image", "audio"), MACS, HEADS, "max_prob", agreement=agreement)


def test_never_exiting_costs_the_full_walk_and_equals_full_accuracy(sim):
    never = sim.run({"image": 2.0, "audio": 2.0, "fusion": 2.0})
    assert never.accuracy == sim.full_accuracy() == 1.0
    assert never.macs == pytest.approx(2.0 + 30.0 + 1.0)  # both fused heads ran (check + final)
    assert never.shares["image1_audio1"] == 1.0


def test_fused_check_after_the_cheap_audio_exit_answers_at_its_cost(sim):
    result = sim.run({"image": 2.0, "audio": 2.0, "fusion": 0.9})
    assert result.shares["image1_audio0"] == 1.0 and result.accuracy == 1.0
    assert result.macs == pytest.approx(2.0 + 10.0 + 0.5)


def test_search_takes_the_cheapest_thresholds_within_the_allowed_drop(sim):
    thresholds, result = sim.search(max_drop=0.0)
    assert result.accuracy == 1.0
    assert result.macs == pytest.approx(12.5)  # the fused check at audio exit 0 answers everything
    assert result.shares["image0"] == 0.0  # the image's own exit is wrong half the time: never taken
    loose, cheap = sim.search(max_drop=0.6, max_regret=None)
    assert cheap.macs == pytest.approx(1.0) and cheap.accuracy >= 0.4  # the confident image exit answers
    _, no_regret = sim.search(max_drop=0.6)  # default: no check may be worse than full on its samples
    assert no_regret.shares["image0"] == 0.0 and no_regret.accuracy == 1.0


def test_bad_rule_or_order_raises():
    with pytest.raises(ValueError, match="supports"):
        WalkSimulator({}, np.zeros(1), ("image", "audio"), MACS, HEADS, "patience")
    with pytest.raises(ValueError, match="one, two or three"):
        WalkSimulator({}, np.zeros(1), ("image", "image"), MACS, HEADS, "max_prob")
    with pytest.raises(ValueError, match="one, two or three"):
        WalkSimulator({}, np.zeros(1), ("image", "audio", "text", "depth"), MACS, HEADS, "max_prob")


def test_one_modality_walk_is_its_exits_the_last_answering_the_rest():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, C, N)
    logits = {"audio0": _logits(rng, labels, 2.0, 0.9), "audio1": _logits(rng, labels, 4.0, 1.0)}
    sim = WalkSimulator(logits, labels, ("audio",), {"audio": [10.0, 30.0]}, {}, "max_prob")
    assert [c[0] for c in sim.checks] == ["audio0", "audio1"]
    never = sim.run({"audio": 2.0, "fusion": 2.0})
    assert never.macs == pytest.approx(30.0) and never.shares["audio1"] == 1.0 and never.accuracy == 1.0
    thresholds, best = sim.search(max_drop=0.0)
    assert best.accuracy == 1.0 and best.macs == pytest.approx(30.0)  # exit 0 is wrong a tenth of the time
    assert set(thresholds) == {"audio", "fusion"}
    _, loose = sim.search(max_drop=0.2, max_regret=None)
    assert loose.macs < 30.0 and loose.shares["audio0"] > 0


def test_three_modality_walk_checks_with_the_later_modalities_absent():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, C, N)
    macs = {"image": [1.0, 2.0], "audio": [10.0, 30.0], "text": [3.0, 4.0]}
    heads = {f"image{i}_audio{j}_text{k}": 0.5 for i in range(2) for j in range(2) for k in range(2)}
    logits = {f"{m}{e}": _logits(rng, labels, 0.5, 0.3) for m in macs for e in range(2)}
    logits |= {k: _logits(rng, labels, 0.5, 0.3) for k in heads}
    logits |= {f"image1_audio{j}": _logits(rng, labels, 0.5, 0.3) for j in range(2)}
    logits["image1_audio1"] = _logits(rng, labels, 9.0, 1.0)  # the pair fused before text is decisive
    sim = WalkSimulator(logits, labels, ("image", "audio", "text"), macs, heads, "max_prob")
    names = [c[0] for c in sim.checks]
    assert names == ["image0", "image1", "audio0", "image1_audio0", "audio1", "image1_audio1",
                     "text0", "image1_audio1_text0", "text1", "image1_audio1_text1"]
    checked = sim.run({"image": 2.0, "audio": 2.0, "text": 2.0, "fusion": 0.9})
    assert checked.shares["image1_audio1"] == 1.0 and checked.accuracy == 1.0
    assert checked.macs == pytest.approx(2.0 + 30.0 + 0.5 + 0.5)  # two fused checks (text absent) ran
    never = sim.run({"image": 2.0, "audio": 2.0, "text": 2.0, "fusion": 2.0})
    assert never.macs == pytest.approx(2.0 + 30.0 + 4.0 + 4 * 0.5)


def test_precision_bar_keeps_early_checks_that_are_often_wrong_out(sim):
    # the confident image exit is right half the time: a loose accuracy bar takes it, the precision bar does not
    _, loose = sim.search(max_drop=0.6, max_regret=None)
    assert loose.shares["image0"] == 1.0
    _, strict = sim.search(max_drop=0.6, min_precision=0.95, max_regret=None)
    assert strict.shares["image0"] == 0.0 and strict.accuracy == 1.0
    assert all(strict.precision[k] >= 0.95 for k, v in strict.shares.items() if v)


def test_predictions_agree_with_run(sim):
    thresholds = {"image": 0.9, "audio": 0.8, "fusion": 0.7}
    pred, macs = sim.predictions(thresholds)
    result = sim.run(thresholds)
    assert (pred == sim.labels).mean() == pytest.approx(result.accuracy)
    assert macs.mean() == pytest.approx(result.macs)
    assert (sim.full_predictions() == sim.predictions({"image": 2.0, "audio": 2.0, "fusion": 2.0})[0]).all()


@pytest.mark.parametrize(("k", "n", "alpha", "below"), [(0, 1000, 0.01, 0.001), (10, 1000, 0.01, 0.6), (3, 100, 0.01, 1.0)])
def test_binomial_pvalue(k, n, alpha, below):
    assert 0.0 <= binomial_pvalue(k, n, alpha) <= below


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_risk_control_keeps_the_val_disagreement_under_alpha(sim, alpha):
    base = {"image": 0.9, "audio": 0.8, "fusion": 0.7}
    chosen = risk_controlled_shift(sim, base, alpha, delta=0.1)
    pred, _ = sim.predictions(chosen.thresholds)
    assert (pred != sim.full_predictions()).mean() == pytest.approx(chosen.val_disagreement)
    assert chosen.val_disagreement <= alpha and chosen.pvalue <= 0.1 + 1e-12
    looser = risk_controlled_shift(sim, base, min(0.5, 2 * alpha), delta=0.1)
    assert looser.shift >= chosen.shift  # a larger alpha never certifies stricter thresholds


@pytest.mark.parametrize("tau", [0.3, 0.5, 0.8])
def test_agreement_only_removes_early_answers(sim, tau):
    agree = _make_sim(agreement=True)
    thresholds = {"image": tau, "audio": tau, "fusion": tau}
    plain, agreed = sim.run(thresholds), agree.run(thresholds)
    assert agreed.shares[agree.checks[0][0]] == 0.0  # the first check has nothing to agree with
    final = sim.checks[-1][0]
    assert sum(v for k, v in agreed.shares.items() if k != final) <= sum(v for k, v in plain.shares.items() if k != final)
    pred, _ = agree.predictions(thresholds)
    assert (pred == agree.labels).mean() == pytest.approx(agreed.accuracy)


@requires_shared
def test_calibrate_with_risk_control_writes_tighter_thresholds(tmp_path, shared_cfg):
    """``scheduler.calibration_criterion: risk_control`` on a copy of the committed CNN family (1,000 val rows)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(cnn_folder(shared_cfg, "avmnist"), ckpt / "cnn_avmnist")
    base = dataclasses.replace(shared_cfg, train=dataclasses.replace(shared_cfg.train, checkpoint_dir=str(ckpt)))
    reports = {}
    for criterion in ("no_regret", "risk_control"):
        cfg = dataclasses.replace(base, scheduler=dataclasses.replace(
            base.scheduler, calibration_criterion=criterion, calibration_alpha=0.01))
        with get_power_meter("psutil") as meter:
            reports[criterion] = calibrate_family(cfg, "avmnist", meter, energy_samples=2, progress=False, limit=1000)
    plain, risk = reports["no_regret"], reports["risk_control"]
    assert plain["risk_control"] is None and risk["risk_control"]["alpha"] == 0.01
    assert risk["risk_control"]["shift"] <= 0.0 and risk["val_disagreement"] <= 0.01
    assert risk["val_macs"] >= plain["val_macs"]
    saved = json.loads((ckpt / "cnn_avmnist" / "profile.json").read_text())["thresholds"]
    assert saved == pytest.approx(risk["thresholds"])


@requires_shared
def test_calibrate_with_the_last_rung_fits_and_stores_it(tmp_path, shared_cfg):
    """``scheduler.last_rung: lf`` on a copy of the committed CNN family and lf (1,000 val rows): the profile
    holds the rung (model, a weight in [0, 1], lf's hash) and a ``rung`` threshold; the loaded parts run it."""
    from exitflow.encoders.checkpoint import file_sha256
    from exitflow.pipeline.artifacts import baseline_folder
    from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts

    ckpt = tmp_path / "ckpt"
    shutil.copytree(cnn_folder(shared_cfg, "avmnist"), ckpt / "cnn_avmnist")
    shutil.copytree(baseline_folder(shared_cfg, "lf", "avmnist"), ckpt / "baseline_lf_avmnist")
    cfg = dataclasses.replace(
        shared_cfg, train=dataclasses.replace(shared_cfg.train, checkpoint_dir=str(ckpt)),
        scheduler=dataclasses.replace(shared_cfg.scheduler, last_rung="lf"))
    with get_power_meter("psutil") as meter:
        report = calibrate_family(cfg, "avmnist", meter, energy_samples=2, progress=False, limit=1000)
    profile = json.loads((ckpt / "cnn_avmnist" / "profile.json").read_text())
    rung = profile["rung"]
    assert rung["model"] == "lf" and 0.0 <= rung["weight"] <= 1.0 and rung == report["rung"]
    assert rung["sha256"] == file_sha256(ckpt / "baseline_lf_avmnist" / "model.safetensors")
    assert "rung" in profile["thresholds"] and report["full_macs"] > 18e6  # the full path includes lf
    parts = AdaptiveParts(cfg, "avmnist")
    assert parts.rung is not None and parts.rung.weight == rung["weight"]
    off = dataclasses.replace(cfg, scheduler=dataclasses.replace(cfg.scheduler, last_rung="none"))
    with get_power_meter("psutil") as meter:
        assert calibrate_family(off, "avmnist", meter, energy_samples=2, progress=False, limit=1000)["rung"] is None
