"""Synthetic profiles and a deterministic sample stream, for tests, benchmarks and docs.

Nothing here is measured: :func:`random_profile` draws exit figures from a seeded generator
and :func:`simulate_budget` drives a :class:`~scheduler.policy.Policy` and a
:class:`~scheduler.budget.BudgetController` with synthetic per-exit confidences and a fixed
energy cost per step taken from the profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from exitflow.scheduler.budget import BudgetController
from exitflow.scheduler.policy import ActionKind, Policy
from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile
from exitflow.scheduler.recalibration import OnlineRecalibrator


def random_profile(
    rng: np.random.Generator,
    modalities: Sequence[str] = ("image", "audio", "text"),
    num_exits: int | None = None,
    common_p: float | None = None,
    max_exits: int = 4,
) -> Profile:
    """A random but plausible profile: accuracy rises with depth, costs grow with depth.

    Args:
        rng: Seeded generator.
        modalities: Modality names.
        num_exits: Exits per modality for all modalities; None draws 1..``max_exits`` each.
        common_p: One exit probability for every exit; None draws each in [0.05, 0.9].
    """
    exits = {}
    for m in modalities:
        e = num_exits if num_exits is not None else int(rng.integers(1, max_exits + 1))
        accuracy = np.sort(rng.uniform(0.3, 0.97, size=e))
        probs = np.full(e, common_p) if common_p is not None else rng.uniform(0.05, 0.9, size=e)
        macs = np.cumsum(rng.uniform(0.2, 5.0, size=e)) * 1e6
        mj_per_mmac = rng.uniform(0.5, 2.0)
        exits[m] = tuple(
            ExitProfile(
                modality=m,
                exit_index=j,
                accuracy=float(accuracy[j]),
                exit_prob=float(probs[j]),
                macs=float(macs[j]),
                energy_mj=float(macs[j] / 1e6 * mj_per_mmac),
                n_reached=100,
            )
            for j in range(e)
        )
    best_last = max(ex[-1].accuracy for ex in exits.values())
    fusion = FusionProfile(
        modalities=tuple(sorted(modalities)),
        accuracy=float(min(1.0, best_last + rng.uniform(0.0, 0.05))),
        macs=float(rng.uniform(0.01, 0.5) * 1e6),
        energy_mj=float(rng.uniform(0.01, 0.5)),
    )
    return Profile(
        exits=exits, fusion=(fusion,), exit_rule="entropy", thresholds=dict.fromkeys(modalities, 0.3)
    )


@dataclass
class BudgetRun:
    """Trajectory of :func:`simulate_budget`: per-sample energy and lambda after the update."""

    energy_mj: list[float]
    lam: list[float]

    def running_average_mj(self) -> float:
        return float(np.mean(self.energy_mj)) if self.energy_mj else float("nan")


def _probs(confidence: float, num_classes: int) -> np.ndarray:
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = np.full(num_classes, rest)  # (C,)
    probs[0] = confidence
    return probs


def simulate_budget(
    policy: Policy,
    controller: BudgetController,
    num_samples: int,
    seed: int = 0,
    num_classes: int = 10,
    power_w: float = 5.0,
    period_s: float | None = None,
    shadow: OnlineRecalibrator | None = None,
) -> BudgetRun:
    """Run ``num_samples`` synthetic samples through ``policy`` under ``controller``.

    Each sample has a difficulty d ~ U(0, 1) (seeded); exit j of modality m reports
    confidence ``sigmoid(8 * (depth_jm - d))`` with ``depth_jm = (j + 1) / E_m``. A step costs
    the profile's energy for that segment, fusion its fusion energy; the sample's duration is
    its energy at ``power_w`` watts, or ``period_s`` when given (a fixed sample period with
    idle time, as for a camera at a fixed frame rate). Deterministic for a given seed.

    With ``shadow`` (online recalibration), a shadowed sample that exited early also pays the full
    path (every exit of every modality, then fusion) and counts as a disagreement when its difficulty
    exceeds the depth it exited at; the recalibrator holds its shift (the budget owns the thresholds),
    as ``pipeline.inference.shadow`` does while a budget is set.
    """
    rng = np.random.default_rng(seed)
    profile = policy.profile
    step_mj = {m: np.diff([0.0] + profile.cumulative_costs(m, "mj")).tolist() for m in profile.modalities}
    fusion = profile.fusion_for(profile.modalities)
    fusion_mj = 0.0 if fusion is None or fusion.energy_mj is None else fusion.energy_mj
    run = BudgetRun(energy_mj=[], lam=[])
    present = profile.modalities
    full_mj = sum(profile.cumulative_costs(m, "mj")[-1] for m in profile.modalities) + fusion_mj
    policy.set_lambda(controller.lam)
    policy.set_cheapest_mode(controller.cheapest_mode)
    for _ in range(num_samples):
        difficulty = float(rng.uniform())
        shadowed = shadow is not None and shadow.begin_sample(held=True) and not policy.cheapest_mode
        state = policy.start(present)
        energy_mj = 0.0
        exited_depth = 1.0
        while True:
            action = policy.decide(state)
            if action.kind is ActionKind.CONTINUE:
                m, j = action.target()
                energy_mj += step_mj[m][j]
                depth = (j + 1) / policy.num_exits[m]
                confidence = 1.0 / (1.0 + np.exp(-8.0 * (depth - difficulty)))
                policy.observe(state, m, j, _probs(float(confidence), num_classes))
            elif action.kind is ActionKind.FUSE:
                energy_mj += fusion_mj
                break
            elif action.kind is ActionKind.EXIT:
                m, j = action.target()
                exited_depth = (j + 1) / policy.num_exits[m]
                break
        if shadowed and shadow is not None and exited_depth < 1.0:
            energy_mj += full_mj
            shadow.observe(difficulty > exited_depth, hold=True)
        duration_s = period_s if period_s is not None else energy_mj / 1000.0 / power_w
        lam = controller.update(energy_mj, duration_s)
        policy.set_lambda(lam)
        policy.set_cheapest_mode(controller.cheapest_mode)
        run.energy_mj.append(energy_mj)
        run.lam.append(lam)
    return run
