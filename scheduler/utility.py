"""Utility of exit (UoE), expected utility of a modality order, phi, and the exhaustive search.

Pure Python over a :class:`~scheduler.profile.Profile` (MMExit section 3).

**Cost scale.** Costs are divided by the cost of running *everything*: every modality to its
last exit plus the fusion step over all modalities, in the chosen ``cost_unit`` (``"macs"`` or
``"mj"``). A cost is therefore a fraction of the full model, accuracy is a fraction in [0, 1],
and lambda reads as "one unit of accuracy is worth lambda full-model runs": at ``lam = 1`` an
exit that is 10 points more accurate may cost 0.1 of the full model more. Lambda must lie in
[:data:`LAMBDA_MIN`, :data:`LAMBDA_MAX`].

**Objective.** For an order O of modalities the expected utility is MMExit eq. 6,
``sum_i sum_j P_e(o_i, j) * UoE(o_i, j)``, plus the fusion exit, reached with probability
``prod_m Q_m`` (no exit passed) with utility ``lam * a_fusion - (all encoder costs + fusion
cost)``. ``UoE(o_i, j) = lam * a - (cost of o_1..o_{i-1} in full + cost of o_i through exit j)``
(eq. 3), ``P_e`` is eq. 4.

Per modality m everything the objective needs is linear in lambda: with ``P(exit at j | m
entered) = prod_{k<j} (1 - p_k) * p_j``, ``E_m = sum_j`` of it, ``Q_m = 1 - E_m``, ``C_m`` the
full cost of m and ``R_m(lam) = sum_j P(exit at j | entered) * (lam * a_j - c_cum_j)``:

- phi (eq. 7, with per-exit probabilities in place of one common p): ``E_m * (R_m - Q_m C_m)``.
- exchange key: ``(R_m - Q_m C_m) / E_m``. Swapping two adjacent modalities a, b changes the
  expected utility by ``E_a E_b (key_a - key_b)`` times the probability of reaching them, so
  sorting by this key is optimal for any profile (an adjacent-exchange argument). Under the
  paper's assumptions (equal exit counts, one common p) every ``E_m`` is the same and phi
  ranks exactly like it (Theorem 1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile

LAMBDA_MIN = 1e-3
LAMBDA_MAX = 1e3
CostUnit = Literal["macs", "mj", "ms"]  # ms: measured on the backend in use (the fast path)
Ranking = Literal["phi", "exchange", "exhaustive"]
RANKINGS: tuple[str, ...] = ("phi", "exchange", "exhaustive")


def check_lambda(lam: float) -> float:
    """Return ``lam`` as float, or raise ValueError when it is outside [LAMBDA_MIN, LAMBDA_MAX]."""
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not math.isfinite(lam):
        raise ValueError(f"lambda must be a finite number, got {lam!r}")
    if not LAMBDA_MIN <= lam <= LAMBDA_MAX:
        raise ValueError(
            f"lambda must lie in [{LAMBDA_MIN}, {LAMBDA_MAX}] (accuracy per full-model cost), got {lam}"
        )
    return float(lam)


@dataclass(frozen=True)
class ModalityTerms:
    """Lambda-independent figures of one modality, costs normalized by the full-model cost."""

    name: str
    accuracy: tuple[float, ...]
    exit_prob: tuple[float, ...]
    cost_cum: tuple[float, ...]  # cumulative normalized cost through each exit
    exit_mass: tuple[float, ...]  # P(exit at j | modality entered)
    exit_total: float  # E_m
    pass_through: float  # Q_m = 1 - E_m
    full_cost: float  # C_m
    acc_expected: float  # sum_j mass_j * a_j
    cost_expected: float  # sum_j mass_j * c_cum_j

    def within(self, lam: float) -> float:
        """R_m(lam): expected utility of m's own exits, ignoring what ran before it."""
        return lam * self.acc_expected - self.cost_expected


def _terms(name: str, accuracy: list[float], exit_prob: list[float], cost_cum: list[float]) -> ModalityTerms:
    mass, reach = [], 1.0
    for p in exit_prob:
        mass.append(reach * p)
        reach *= 1.0 - p
    exit_total = sum(mass)
    return ModalityTerms(
        name=name,
        accuracy=tuple(accuracy),
        exit_prob=tuple(exit_prob),
        cost_cum=tuple(cost_cum),
        exit_mass=tuple(mass),
        exit_total=exit_total,
        pass_through=reach,
        full_cost=cost_cum[-1],
        acc_expected=sum(m * a for m, a in zip(mass, accuracy, strict=True)),
        cost_expected=sum(m * c for m, c in zip(mass, cost_cum, strict=True)),
    )


AccuracyKind = Literal["exited", "overall"]


def exit_accuracy(ex: ExitProfile, kind: AccuracyKind) -> float:
    """The accuracy credited to exiting at ``ex``.

    ``overall`` is the exit's accuracy over every profiled sample (MMExit's a as written);
    ``exited`` is the accuracy of the samples that actually exit there under the thresholds in
    force (what an exit delivers when the policy takes it), falling back to ``overall`` where no
    profiled sample exits.
    """
    if kind == "exited" and ex.accuracy_exited is not None:
        return float(ex.accuracy_exited)
    return float(ex.accuracy)


class UtilityModel:
    """UoE, expected utility and orderings for one profile in one cost unit.

    Args:
        profile: The exit profile.
        cost_unit: ``"macs"`` or ``"mj"`` (needs measured energy in the profile).
    """

    def __init__(self, profile: Profile, cost_unit: CostUnit = "macs", accuracy: AccuracyKind = "exited"):
        if cost_unit not in ("macs", "mj", "ms"):
            raise ValueError(f"cost_unit must be 'macs', 'mj' or 'ms', got {cost_unit!r}")
        if accuracy not in ("exited", "overall"):
            raise ValueError(f"accuracy must be 'exited' or 'overall', got {accuracy!r}")
        self.profile = profile
        self.cost_unit = cost_unit
        raw = {m: profile.cumulative_costs(m, cost_unit) for m in profile.modalities}
        full_fusion = profile.fusion_for(profile.modalities)
        self.scale = sum(c[-1] for c in raw.values()) + (self._fusion_raw_cost(full_fusion) or 0.0)
        if not self.scale > 0:
            raise ValueError(f"the profile's total cost in {cost_unit} is {self.scale}; costs must be > 0")
        self.terms = {
            m: _terms(
                m,
                [exit_accuracy(ex, accuracy) for ex in profile.exits[m]],
                [ex.exit_prob for ex in profile.exits[m]],
                [c / self.scale for c in raw[m]],
            )
            for m in profile.modalities
        }
        self._fusion_cache: dict[frozenset[str], tuple[float, float]] = {}

    def _fusion_raw_cost(self, entry: FusionProfile | None) -> float | None:
        if entry is None:
            return None
        if self.cost_unit == "macs":
            return float(entry.macs)
        if self.cost_unit == "ms":
            if entry.latency_ms is None:
                raise ValueError("cost_unit 'ms' needs the fusion entries' latency_ms; use engine.backend: onnxruntime")
            return float(entry.latency_ms)
        if entry.energy_mj is None:
            raise ValueError("cost_unit 'mj' needs the fusion entries' energy_mj; profile with a power meter")
        return float(entry.energy_mj)

    def fusion_terms(self, modalities: Iterable[str]) -> tuple[float, float]:
        """(accuracy, normalized cost) of the fusion exit over ``modalities``.

        Without a profiled entry for the set (or a subset of it) the fusion is assumed to be as
        accurate as the best last exit among ``modalities`` and free.
        """
        key = frozenset(modalities)
        cached = self._fusion_cache.get(key)
        if cached is not None:
            return cached
        entry = self.profile.fusion_for(key)
        if entry is None:
            accuracy = max((self.terms[m].accuracy[-1] for m in key), default=0.0)
            result = (accuracy, 0.0)
        else:
            result = (entry.accuracy, (self._fusion_raw_cost(entry) or 0.0) / self.scale)
        self._fusion_cache[key] = result
        return result

    def uoe(self, lam: float, order: Sequence[str], modality: str, exit_index: int) -> float:
        """MMExit eq. 3: ``lam * a - cumulative normalized cost`` of exit ``exit_index`` of ``modality``."""
        position = list(order).index(modality)
        before = sum(self.terms[m].full_cost for m in order[:position])
        t = self.terms[modality]
        return lam * t.accuracy[exit_index] - (before + t.cost_cum[exit_index])

    def uoe_fusion(self, lam: float, order: Sequence[str]) -> float:
        """UoE of the fusion exit after every modality of ``order`` ran in full."""
        accuracy, cost = self.fusion_terms(order)
        return lam * accuracy - (sum(self.terms[m].full_cost for m in order) + cost)

    def expected_utility(self, lam: float, order: Sequence[str], include_fusion: bool = True) -> float:
        """Expected utility of running ``order`` (eq. 6, plus the fusion exit when asked)."""
        total, reach, before = 0.0, 1.0, 0.0
        for m in order:
            t = self.terms[m]
            total += reach * (t.within(lam) - t.exit_total * before)
            reach *= t.pass_through
            before += t.full_cost
        if include_fusion:
            accuracy, cost = self.fusion_terms(order)
            total += reach * (lam * accuracy - before - cost)
        return total

    def phi(self, lam: float, modality: str) -> float:
        """MMExit's phi (eq. 7) with per-exit exit probabilities: ``E_m * (R_m - Q_m * C_m)``."""
        t = self.terms[modality]
        return t.exit_total * (t.within(lam) - t.pass_through * t.full_cost)

    def exchange_key(self, lam: float, modality: str) -> float:
        """``(R_m - Q_m C_m) / E_m``: sorting by it maximizes expected utility (``-inf`` if E_m = 0)."""
        t = self.terms[modality]
        if t.exit_total <= 0.0:
            return -math.inf
        return (t.within(lam) - t.pass_through * t.full_cost) / t.exit_total

    def rank(self, lam: float, modalities: Iterable[str], method: Ranking = "phi") -> list[str]:
        """Order ``modalities`` by ``method`` (best first); ties keep the given order."""
        mods = list(modalities)
        if method == "phi":
            return sorted(mods, key=lambda m: -self.phi(lam, m))
        if method == "exchange":
            return sorted(mods, key=lambda m: -self.exchange_key(lam, m))
        if method == "exhaustive":
            return list(self.exhaustive(lam, mods)[0])
        raise ValueError(f"ranking must be one of {RANKINGS}, got {method!r}")

    def exhaustive(self, lam: float, modalities: Iterable[str]) -> tuple[tuple[str, ...], float]:
        """The order of ``modalities`` with the highest expected utility, tried over all n! orders."""
        best_order: tuple[str, ...] = ()
        best_value = -math.inf
        for order in itertools.permutations(list(modalities)):
            value = self.expected_utility(lam, order)
            if value > best_value + 1e-15:
                best_order, best_value = order, value
        return best_order, best_value
