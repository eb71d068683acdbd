"""Online self-recalibration: settings, threshold shifts, the seeded shadow choice and the long-run bound."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from exitflow.scheduler.budget import BudgetController
from exitflow.scheduler.policy import Policy, PolicySettings
from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile
from exitflow.scheduler.recalibration import (
    NEVER,
    OnlineRecalibrator,
    RecalibrationSettings,
    shadow_draw,
    shifted_threshold,
)
from exitflow.scheduler.synthetic import simulate_budget

BASE = {"image": -1.0, "audio": 0.2, "fusion": 0.3}  # entropy: image never exits alone (as the CNN family's)


@pytest.mark.parametrize(("field", "value"), [
    ("target_disagreement", 0.0), ("target_disagreement", 1.0), ("target_disagreement", -0.1),
    ("shadow_share", 1.5), ("warmup_share", -0.01), ("step", 0.0), ("step", 11.0), ("warmup_step", -1.0),
    ("warmup_samples", -1), ("warmup_samples", 2.5), ("min_shift", 0.0), ("max_shift", -0.5),
    ("min_shift", math.inf), ("seed", -1), ("seed", True),
])
def test_settings_reject_out_of_range_values(field, value):
    with pytest.raises(ValueError, match=field):
        RecalibrationSettings(**{field: value})


@pytest.mark.parametrize(("rule", "t0", "shift", "expected"), [
    ("entropy", 0.3, 0.0, 0.3),
    ("entropy", 0.3, math.log(2), 0.6),
    ("entropy", 0.3, math.log(0.5), 0.15),
    ("entropy", 0.8, 1.0, 1.0),  # capped at 1 (always exits)
    ("entropy", -1.0, 1.0, -1.0),  # a "never" threshold stays never
    ("entropy", 0.3, -4.0, NEVER["entropy"]),  # at min_shift: no early exit at all
    ("max_prob", 0.9, 0.0, 0.9),
    ("max_prob", 0.9, math.log(2), 0.8),
    ("max_prob", 0.9, math.log(0.5), 0.95),
    ("max_prob", 0.2, 2.0, 0.0),  # floored at 0
    ("max_prob", 2.0, 1.0, 2.0),
    ("max_prob", 0.9, -5.0, NEVER["max_prob"]),
])
def test_shifted_threshold(rule, t0, shift, expected):
    assert shifted_threshold(rule, t0, shift, min_shift=-4.0) == pytest.approx(expected)


@pytest.mark.parametrize("share", [0.03, 0.2, 0.5])
def test_shadow_draw_is_uniform_and_seeded(share):
    draws = [shadow_draw(7, i) for i in range(40_000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert sum(d < share for d in draws) / len(draws) == pytest.approx(share, abs=0.01)
    assert draws[:50] == [shadow_draw(7, i) for i in range(50)]  # a replay draws the same
    assert draws[:50] != [shadow_draw(8, i) for i in range(50)]


def test_warmup_then_steady_share():
    rec = OnlineRecalibrator(BASE, "entropy", RecalibrationSettings(warmup_samples=1000, warmup_share=0.2,
                                                                     shadow_share=0.03, seed=3))
    warm = sum(rec.begin_sample() for _ in range(1000))
    assert not rec.warming_up
    steady = sum(rec.begin_sample() for _ in range(20_000))
    assert warm / 1000 == pytest.approx(0.2, abs=0.04)
    assert steady / 20_000 == pytest.approx(0.03, abs=0.005)


@pytest.mark.parametrize(("err", "direction"), [(True, -1), (False, +1)])
def test_a_disagreement_tightens_an_agreement_loosens(err, direction):
    rec = OnlineRecalibrator(BASE, "entropy", RecalibrationSettings(step=0.5, target_disagreement=0.01))
    rec.begin_sample()
    new = rec.observe(err)
    assert math.copysign(1, rec.shift) == direction
    assert (new["fusion"] - BASE["fusion"]) * direction > 0 and (new["audio"] - BASE["audio"]) * direction > 0
    assert new["image"] == -1.0


def test_hold_counts_but_does_not_move():
    rec = OnlineRecalibrator(BASE, "entropy")
    rec.begin_sample()
    rec.observe(True, hold=True)
    assert rec.shift == 0.0 and rec.thresholds == BASE
    assert rec.status()["measured_disagreement"] == 1.0 and rec.status()["held"] == 1


def _room(rec: OnlineRecalibrator, rate_at_zero: float, n: int, seed: int) -> list[int]:
    """A synthetic room: P(disagree) = rate_at_zero * exp(2 * shift), 0 at the full path (shift <= min)."""
    rng = random.Random(seed)
    errs = []
    for _ in range(n):
        if not rec.begin_sample():
            continue
        p = 0.0 if rec.shift <= rec.settings.min_shift else min(1.0, rate_at_zero * math.exp(2.0 * rec.shift))
        errs.append(int(rng.random() < p))
        rec.observe(bool(errs[-1]))
    return errs


@pytest.mark.parametrize(("rate_at_zero", "target"), [
    (0.05, 0.005),  # a harder room than calibrated: tighten
    (0.002, 0.005),  # an easier room: loosen
    (0.2, 0.01),
])
def test_long_run_rate_tracks_the_target(rate_at_zero, target):
    settings = RecalibrationSettings(target_disagreement=target, shadow_share=0.5, warmup_samples=200,
                                     warmup_share=1.0, step=0.3, seed=1)
    rec = OnlineRecalibrator(BASE, "entropy", settings)
    errs = _room(rec, rate_at_zero, 60_000, seed=2)
    after = rec.status()["disagreement_after_warmup"]
    assert after <= target + rec.bound() + 1e-12  # the stated guarantee
    assert after == pytest.approx(target, abs=max(0.5 * target, 0.003))
    assert len(errs) > 25_000


@pytest.mark.parametrize("pattern", ["always", "alternating", "burst"])
def test_bound_holds_on_adversarial_streams(pattern):
    """The guarantee is deterministic: whatever the 0/1 sequence (as long as the full path agrees)."""
    settings = RecalibrationSettings(target_disagreement=0.01, shadow_share=1.0, warmup_samples=0, step=0.5)
    rec = OnlineRecalibrator(BASE, "entropy", settings)
    for i in range(3000):
        rec.begin_sample()
        if rec.shift <= settings.min_shift:
            err = False  # no early exit: the answer is the full answer
        elif pattern == "always":
            err = True
        elif pattern == "alternating":
            err = i % 2 == 0
        else:
            err = (i // 100) % 2 == 0
        rec.observe(err)
        assert rec.shift >= settings.min_shift - settings.step
        assert rec.shift <= settings.max_shift
    status = rec.status()
    assert status["disagreement_after_warmup"] <= 0.01 + rec.bound() + 1e-12


def test_same_seed_and_outcomes_give_the_same_state():
    def run() -> dict:
        rec = OnlineRecalibrator(BASE, "entropy", RecalibrationSettings(seed=11))
        _room(rec, 0.05, 3000, seed=4)
        return rec.status()

    assert run() == run()


@pytest.mark.parametrize("rule", ["patience", "none"])
def test_unsupported_rules_are_refused(rule):
    with pytest.raises(ValueError, match="entropy or max_prob"):
        OnlineRecalibrator(BASE, rule)


def test_initial_shift_above_max_is_refused():
    with pytest.raises(ValueError, match="max_shift"):
        OnlineRecalibrator(BASE, "entropy", shift=5.0)


def _profile() -> Profile:
    ex = lambda m, j: ExitProfile(modality=m, exit_index=j, accuracy=0.8, exit_prob=0.5, macs=1e6 * (j + 1))  # noqa: E731
    return Profile(exits={"image": (ex("image", 0), ex("image", 1)), "audio": (ex("audio", 0), ex("audio", 1))},
                   fusion=(FusionProfile(("audio", "image"), 0.9, 1e5),),
                   thresholds={"image": 0.3, "audio": 0.3, "fusion": 0.3})


@pytest.mark.parametrize(("coupling", "lam", "expected"), [(0.0, 1.0, 0.1), (1.0, 1.0, 0.1), (1.0, 0.5, 0.2)])
def test_policy_set_thresholds_applies_lambda_coupling(coupling, lam, expected):
    policy = Policy(_profile(), PolicySettings(lam=1.0, threshold_coupling=coupling))
    policy.set_lambda(lam)
    policy.set_thresholds({"fusion": 0.1})
    assert policy.base_thresholds["fusion"] == 0.1
    assert policy.thresholds["fusion"] == pytest.approx(expected)
    assert policy.start(["image", "audio"]).thresholds["fusion"] == pytest.approx(expected)


@pytest.mark.parametrize(("update", "match"), [({"text": 0.1}, "unknown"), ({"fusion": math.nan}, "finite")])
def test_policy_set_thresholds_rejects_bad_input(update, match):
    policy = Policy(_profile())
    with pytest.raises(ValueError, match=match):
        policy.set_thresholds(update)


@pytest.mark.parametrize("budget_mj", [2.5, 4.0, 6.0, 8.0])
def test_budget_holds_5_percent_after_200_samples_with_the_shadow_on(budget_mj):
    """The shadow's full-path energy is part of each sample's energy; the budget still holds its mean."""
    profile = Profile(
        exits={"image": tuple(ExitProfile("image", j, 0.5 + 0.1 * j, 0.5, (j + 1) * 1e6, energy_mj=j + 1.0) for j in range(3)),
               "audio": tuple(ExitProfile("audio", j, 0.8 + 0.05 * j, 0.5, (j + 1) * 3e6, energy_mj=3.0 * (j + 1)) for j in range(3))},
        fusion=(FusionProfile(("audio", "image"), 0.97, 0.5e6, 0.5),), thresholds={"image": 0.3, "audio": 0.3})
    policy = Policy(profile, PolicySettings(lam=1.0, cost_unit="mj", threshold_coupling=1.0))
    controller = BudgetController(mj_per_sample=budget_mj, lam_ref=1.0, cheapest_mj=1.0)
    rec = OnlineRecalibrator(policy.base_thresholds, "entropy", RecalibrationSettings(seed=0))
    run = simulate_budget(policy, controller, 1000, seed=0, shadow=rec)
    running = np.cumsum(run.energy_mj) / np.arange(1, 1001)
    assert rec.shadowed > 0 and rec.held == rec.shadowed  # shadows ran and the budget owned the thresholds
    assert np.max(np.abs(running[200:] - budget_mj)) / budget_mj <= 0.05
