"""The energy-budget controller, simulated with a deterministic synthetic cost model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from exitflow.scheduler.budget import BudgetController
from exitflow.scheduler.errors import BudgetWarning
from exitflow.scheduler.policy import Policy, PolicySettings
from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile
from exitflow.scheduler.synthetic import simulate_budget


def _ex(m: str, j: int, a: float, mj: float) -> ExitProfile:
    return ExitProfile(modality=m, exit_index=j, accuracy=a, exit_prob=0.5, macs=mj * 1e6, energy_mj=mj)


def _profile() -> Profile:
    # energy per sample ranges from 1 mJ (image exit 0 only) to 18.5 mJ (everything + fusion)
    return Profile(
        exits={
            "image": (_ex("image", 0, 0.5, 1.0), _ex("image", 1, 0.6, 2.0), _ex("image", 2, 0.7, 3.0)),
            "audio": (_ex("audio", 0, 0.8, 3.0), _ex("audio", 1, 0.9, 6.0), _ex("audio", 2, 0.95, 9.0)),
        },
        fusion=(FusionProfile(("audio", "image"), 0.97, 0.5e6, 0.5),),
        thresholds={"image": 0.3, "audio": 0.3},
    )


def _policy() -> Policy:
    return Policy(_profile(), PolicySettings(lam=1.0, cost_unit="mj", threshold_coupling=1.0))


@pytest.mark.parametrize("budget_mj", [1.5, 2.5, 4.0, 6.0, 8.0])
def test_running_average_within_5_percent_after_200_samples(budget_mj):
    controller = BudgetController(mj_per_sample=budget_mj, lam_ref=1.0, cheapest_mj=1.0)
    run = simulate_budget(_policy(), controller, 200, seed=0)
    assert len(run.energy_mj) == 200
    assert run.running_average_mj() == pytest.approx(budget_mj, rel=0.05)
    assert controller.average_mj == pytest.approx(run.running_average_mj())


def test_uncontrolled_energy_differs_from_budget():
    """Guard: without control (zero gains) the same stream misses a 2.5 mJ budget by far."""
    controller = BudgetController(mj_per_sample=2.5, lam_ref=1.0, kp=0.0, ki=0.0)
    run = simulate_budget(_policy(), controller, 200, seed=0)
    assert abs(run.running_average_mj() - 2.5) / 2.5 > 0.5


def test_budget_change_while_running():
    policy = _policy()
    controller = BudgetController(mj_per_sample=6.0, lam_ref=1.0)
    simulate_budget(policy, controller, 200, seed=1)
    controller.set_budget(mj_per_sample=2.5)
    run = simulate_budget(policy, controller, 300, seed=2)
    assert np.mean(run.energy_mj[100:]) == pytest.approx(2.5, rel=0.05)


def test_power_budget_tracks_average_power():
    """A fixed 1 ms sample period: a 4 W budget means 4 mJ per sample on average."""
    controller = BudgetController(power_w=4.0, window_s=0.02, lam_ref=1.0)
    run = simulate_budget(_policy(), controller, 300, seed=3, period_s=1e-3)
    assert controller.mode == "power_w"
    assert np.mean(run.energy_mj[100:]) / 1e-3 / 1000.0 == pytest.approx(4.0, rel=0.05)


def test_budget_below_cheapest_exit_warns_and_sets_cheapest_mode():
    with pytest.warns(BudgetWarning, match="cheapest-exit mode"):
        controller = BudgetController(mj_per_sample=0.5, cheapest_mj=1.0)
    assert controller.cheapest_mode and controller.lam == controller.lam_min
    policy = _policy()
    run = simulate_budget(policy, controller, 20, seed=0)
    assert run.energy_mj == [1.0] * 20  # only the cheapest exit runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        controller.set_budget(mj_per_sample=3.0)
    assert not controller.cheapest_mode


def test_argument_errors():
    with pytest.raises(ValueError, match="lambda"):
        BudgetController(mj_per_sample=1.0, lam_max=1e9)
    with pytest.raises(ValueError, match="exactly one"):
        BudgetController()
    with pytest.raises(ValueError, match="exactly one"):
        BudgetController(mj_per_sample=1.0, power_w=1.0)
    with pytest.raises(ValueError, match="> 0"):
        BudgetController(mj_per_sample=-1.0)
    controller = BudgetController(mj_per_sample=1.0)
    with pytest.raises(ValueError, match="energy_mj"):
        controller.update(float("nan"))
    with pytest.raises(ValueError, match="duration_s"):
        BudgetController(power_w=1.0).update(1.0, 0.0)
