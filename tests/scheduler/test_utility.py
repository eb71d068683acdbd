"""UoE (eq. 3), expected utility (eqs. 4 and 6), phi (eq. 7) against the exhaustive search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile
from exitflow.scheduler.synthetic import random_profile
from exitflow.scheduler.utility import UtilityModel, check_lambda


def _ex(m: str, j: int, a: float, p: float, macs: float) -> ExitProfile:
    return ExitProfile(modality=m, exit_index=j, accuracy=a, exit_prob=p, macs=macs)


def _hand_profile() -> Profile:
    # full cost: image 30 + audio 60 + fusion 10 = 100 MACs -> normalized costs are MACs / 100
    return Profile(
        exits={
            "image": (_ex("image", 0, 0.6, 0.5, 10), _ex("image", 1, 0.8, 0.4, 30)),
            "audio": (_ex("audio", 0, 0.7, 0.2, 20), _ex("audio", 1, 0.9, 0.5, 60)),
        },
        fusion=(FusionProfile(("audio", "image"), 0.95, 10),),
        thresholds={"image": 0.3, "audio": 0.3},
    )


def test_uoe_hand_computed():
    model = UtilityModel(_hand_profile(), "macs")
    assert model.scale == pytest.approx(100.0)
    # order image -> audio, exit audio/1: 2 * 0.9 - (image full 0.30 + audio through exit 1 0.60)
    assert model.uoe(2.0, ("image", "audio"), "audio", 1) == pytest.approx(1.8 - 0.9)
    # first modality, first exit: 2 * 0.6 - 0.10
    assert model.uoe(2.0, ("image", "audio"), "image", 0) == pytest.approx(1.1)
    # order audio -> image, exit image/0: 2 * 0.6 - (0.60 + 0.10)
    assert model.uoe(2.0, ("audio", "image"), "image", 0) == pytest.approx(0.5)
    assert model.uoe_fusion(2.0, ("image", "audio")) == pytest.approx(1.9 - 1.0)


def _reference_expected_utility(model: UtilityModel, lam: float, order: tuple[str, ...]) -> float:
    """Eq. 6 written out with eq. 4's probabilities and eq. 3's utilities, plus the fusion exit."""
    total = 0.0
    for x, m in enumerate(order):
        probs = model.terms[m].exit_prob
        for y in range(len(probs)):
            p_before = np.prod([1 - p for prev in order[:x] for p in model.terms[prev].exit_prob])
            p_within = np.prod([1 - p for p in probs[:y]])
            total += p_before * p_within * probs[y] * model.uoe(lam, order, m, y)
    p_fusion = np.prod([1 - p for m in order for p in model.terms[m].exit_prob])
    return total + p_fusion * model.uoe_fusion(lam, order)


def test_hand_expected_utility_by_enumeration():
    model = UtilityModel(_hand_profile(), "macs")
    order = ("image", "audio")
    # exits: image/0 0.5, image/1 0.5*0.4=0.2, audio/0 0.3*0.2=0.06, audio/1 0.3*0.8*0.5=0.12, fusion 0.12
    expected = (
        0.5 * (0.6 - 0.1) + 0.2 * (0.8 - 0.3) + 0.06 * (0.7 - 0.5) + 0.12 * (0.9 - 0.9) + 0.12 * (0.95 - 1.0)
    )
    assert model.expected_utility(1.0, order) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_expected_utility_matches_equations(seed):
    rng = np.random.default_rng(seed)
    model = UtilityModel(random_profile(rng), "macs")
    lam = float(np.exp(rng.uniform(np.log(0.1), np.log(10))))
    for order in itertools.permutations(model.terms):
        assert model.expected_utility(lam, order) == pytest.approx(
            _reference_expected_utility(model, lam, order)
        )


def _match(model: UtilityModel, lam: float, method: str) -> bool:
    _, best = model.exhaustive(lam, model.terms)
    ranked = model.rank(lam, model.terms, method)
    return model.expected_utility(lam, ranked) >= best - 1e-9 * max(1.0, abs(best))


def test_phi_equals_exhaustive_under_paper_assumptions():
    """Equal exit counts and one common p per profile: phi order is always optimal (Theorem 1)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        p = float(rng.uniform(0.05, 0.9))
        model = UtilityModel(random_profile(rng, ("a", "b", "c", "d"), num_exits=3, common_p=p), "mj")
        lam = float(np.exp(rng.uniform(np.log(0.01), np.log(100))))
        assert _match(model, lam, "phi")


def test_exchange_key_always_optimal_and_phi_rate_reported():
    rng = np.random.default_rng(1)
    trials, phi_hits = 300, 0
    for _ in range(trials):
        model = UtilityModel(random_profile(rng, ("a", "b", "c", "d")), "macs")
        lam = float(np.exp(rng.uniform(np.log(0.01), np.log(100))))
        assert _match(model, lam, "exchange")
        phi_hits += _match(model, lam, "phi")
    rate = phi_hits / trials
    print(f"phi matches the exhaustive optimum without the paper's assumptions in {rate:.1%} of {trials}")
    assert 0.0 < rate <= 1.0


def test_lambda_range_and_cost_unit_checks():
    with pytest.raises(ValueError, match="lambda"):
        check_lambda(1e6)
    with pytest.raises(ValueError, match="lambda"):
        check_lambda(float("nan"))
    with pytest.raises(ValueError, match="energy"):
        UtilityModel(_hand_profile(), "mj")  # no energy in the hand profile
