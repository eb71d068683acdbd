"""Per-sample plans: which present modalities run, in which order, and which are skipped.

``order_modalities(model, lam, present)`` ranks the present modalities (phi by default) and,
when ``skip_negative`` is on, drops a modality whose *marginal* expected utility is negative:
the plan's expected utility with it is lower than without it (the rest re-ranked, the fusion
exit then over fewer modalities). Removal is greedy, the worst modality first, and never empties
the plan. The result is cached by the policy per (lambda, present set).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from exitflow.scheduler.errors import SchedulerError
from exitflow.scheduler.profile import Profile
from exitflow.scheduler.utility import CostUnit, Ranking, UtilityModel, check_lambda


@dataclass(frozen=True)
class Plan:
    """What to run for one sample.

    Attributes:
        order: Modalities to run, best first.
        skipped: Present modalities left out because their marginal expected utility was negative.
        missing: Modalities absent from the sample.
        lam: Lambda the plan was made for.
        expected_utility: Expected utility of ``order`` (normalized cost units).
        marginal: Modality -> expected utility gained by including it (negative for skipped ones).
        keys: Modality -> its ranking key (phi, exchange key, or position for exhaustive).
    """

    order: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    lam: float = 1.0
    expected_utility: float = 0.0
    marginal: dict[str, float] = field(default_factory=dict)
    keys: dict[str, float] = field(default_factory=dict)


def _keys(model: UtilityModel, lam: float, order: list[str], method: Ranking) -> dict[str, float]:
    if method == "phi":
        return {m: model.phi(lam, m) for m in order}
    if method == "exchange":
        return {m: model.exchange_key(lam, m) for m in order}
    return {m: float(-i) for i, m in enumerate(order)}


def order_modalities(
    model: UtilityModel | Profile,
    lam: float,
    present: Iterable[str],
    method: Ranking = "phi",
    skip_negative: bool = True,
    missing: Iterable[str] = (),
    cost_unit: CostUnit = "macs",
) -> Plan:
    """Plan the modality order for a sample with the ``present`` modalities.

    Args:
        model: A :class:`UtilityModel`, or a profile to build one from (with ``cost_unit``).
        lam: Accuracy-versus-cost preference, in [LAMBDA_MIN, LAMBDA_MAX].
        present: Modalities the sample carries; ones unknown to the profile raise.
        method: ``"phi"`` (MMExit), ``"exchange"`` or ``"exhaustive"``.
        skip_negative: Drop modalities whose marginal expected utility is negative.
        missing: Modalities absent from the sample (recorded in the plan).

    Raises:
        ValueError: lambda out of range, an unknown modality or ranking.
        SchedulerError: no modality is present.
    """
    lam = check_lambda(lam)
    missing = tuple(missing)
    if isinstance(model, Profile):
        model = UtilityModel(model, cost_unit)
    mods = [m for m in present if m not in missing]
    unknown = [m for m in mods if m not in model.terms]
    if unknown:
        raise ValueError(f"modalities {unknown} are not in the exit profile (it has {sorted(model.terms)})")
    if not mods:
        raise SchedulerError(
            f"no modality present in the sample (missing: {sorted(missing)}); nothing to run"
        )
    order = model.rank(lam, mods, method)
    value = model.expected_utility(lam, order)
    skipped: list[str] = []
    marginal: dict[str, float] = {}
    while len(order) > 1:
        without = {m: model.rank(lam, [x for x in order if x != m], method) for m in order}
        gains = {m: value - model.expected_utility(lam, rest) for m, rest in without.items()}
        marginal.update(gains)
        worst = min(order, key=lambda m: gains[m])
        if not skip_negative or gains[worst] >= 0.0:
            break
        skipped.append(worst)
        order = without[worst]
        value = model.expected_utility(lam, order)
    return Plan(
        order=tuple(order),
        skipped=tuple(skipped),
        missing=missing,
        lam=lam,
        expected_utility=value,
        marginal=marginal,
        keys=_keys(model, lam, order, method),
    )
