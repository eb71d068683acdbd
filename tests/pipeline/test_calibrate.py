"""The CNN family's walk simulation and operating-point search (calibration data only)."""

from __future__ import annotations

import numpy as np
import pytest

from exitflow.pipeline.training.calibrate import WalkSimulator

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
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, N)
    logits = {
        "image0": _logits(rng, labels, 3.0, 0.5), "image1": _logits(rng, labels, 0.5, 0.6),
        "audio0": _logits(rng, labels, 1.0, 0.7), "audio1": _logits(rng, labels, 4.0, 0.95),
        "image1_audio0": _logits(rng, labels, 6.0, 1.0), "image1_audio1": _logits(rng, labels, 8.0, 1.0),
        "image0_audio0": _logits(rng, labels, 1.0, 0.5), "image0_audio1": _logits(rng, labels, 1.0, 0.5),
    }
    return WalkSimulator(logits, labels, ("image", "audio"), MACS, HEADS, "max_prob")


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
    with pytest.raises(ValueError, match="two modalities"):
        WalkSimulator({}, np.zeros(1), ("image",), MACS, HEADS, "max_prob")


def test_precision_bar_keeps_early_checks_that_are_often_wrong_out(sim):
    # the confident image exit is right half the time: a loose accuracy bar takes it, the precision bar does not
    _, loose = sim.search(max_drop=0.6, max_regret=None)
    assert loose.shares["image0"] == 1.0
    _, strict = sim.search(max_drop=0.6, min_precision=0.95, max_regret=None)
    assert strict.shares["image0"] == 0.0 and strict.accuracy == 1.0
    assert all(strict.precision[k] >= 0.95 for k, v in strict.shares.items() if v)
