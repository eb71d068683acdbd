"""A cheap exit as a prior: one modality stops at a chosen exit and weighs every later exit (issue 25 item 5).

On ``avmnist-t`` the text encoder's embedding exit costs 0.2 M MACs (no transformer layer runs) and is
0.71 accurate on its own, while MiniLM's layers add nothing to it (0.72 at layer 6, 84 M MACs): UoE skips
text, and the late fusion cannot read an early audio exit's embedding (it was trained on last exits).
:class:`PriorPolicy` uses the cheap exit where it helps without either:

- the prior modality runs first, up to ``prior_exit`` only, and never answers alone;
- every later exit is scored on the product of its probabilities and the prior's, renormalized
  (a product of experts: ``q_c = p_c r_c / sum_k p_k r_k``); it answers when that score passes the exit's
  threshold *and* its own class is the product's class, so the engine's answer (the exit's own argmax)
  is the product's. An exit that the prior contradicts walks on;
- a walk that no exit ends fuses what ran, the prior's exit included (its embedding stands in for the
  last exit's feature: :class:`encoders.text.TextEmbeddingExitHead`).

A sample without the prior modality walks as under :class:`~scheduler.policy.Policy`. The walk's
driving loop is the base policy's (module docstring of :mod:`scheduler.policy`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from exitflow.scheduler.plan import Plan
from exitflow.scheduler.policy import Policy, PolicySettings, WalkState
from exitflow.scheduler.profile import Profile

PRIOR_RULES = ("entropy", "max_prob")  # rules that read probabilities (patience counts classes)


@dataclass(slots=True)
class PriorWalkState(WalkState):
    """A walk under :class:`PriorPolicy`: the base state plus the prior exit's probabilities, once run."""

    prior: list[float] | None = None


def product_of_experts(probs: Sequence[float], prior: Sequence[float]) -> list[float]:
    """``probs`` weighted by ``prior`` class by class and renormalized (a uniform prior changes nothing)."""
    joint = [p * r for p, r in zip(probs, prior, strict=True)]
    total = sum(joint)
    if total <= 0.0:  # the two put all their mass on different classes: no information, keep the exit's own
        return list(probs)
    return [v / total for v in joint]


class PriorPolicy(Policy):
    """:class:`Policy` with ``prior`` run first to ``prior_exit`` and weighing every later exit.

    Args:
        profile: Exit profile of the loaded checkpoints.
        settings: :class:`PolicySettings` (exit rule ``entropy`` or ``max_prob``).
        prior: The modality whose cheap exit is the prior (``text`` on avmnist-t).
        prior_exit: The exit it stops at (0: text's embedding exit).

    Raises:
        ValueError: ``prior`` not in the profile, ``prior_exit`` out of range, or an exit rule that does
            not read probabilities.
    """

    def __init__(self, profile: Profile, settings: PolicySettings | None = None, prior: str = "text",
                 prior_exit: int = 0):
        super().__init__(profile, settings)
        if prior not in self.num_exits:
            raise ValueError(f"prior modality {prior!r} is not in the exit profile (it has {sorted(self.num_exits)})")
        if not 0 <= prior_exit < self.num_exits[prior]:
            raise ValueError(f"prior_exit must be an exit of {prior} (0..{self.num_exits[prior] - 1}), got {prior_exit}")
        if self.exit_rule not in PRIOR_RULES:
            raise ValueError(f"a prior weighs probabilities; exit rule {self.exit_rule!r} does not read them "
                             f"(use one of {PRIOR_RULES})")
        self.prior, self.prior_exit = prior, prior_exit
        n = self.num_exits[prior]
        self.exit_sets = {**self.exit_sets, prior: (prior_exit,)}
        self._next[prior] = tuple(prior_exit if i <= prior_exit else None for i in range(n + 1))

    def plan(self, present: Iterable[str], missing: Iterable[str] = ()) -> Plan:
        """The base plan with the prior first, never skipped (when present)."""
        present, missing = tuple(present), tuple(missing)
        base = super().plan(present, missing)
        if self.prior not in present or self.prior in missing or base.order[:1] == (self.prior,):
            return base
        plan = replace(base, order=(self.prior, *(m for m in base.order if m != self.prior)),
                       skipped=tuple(m for m in base.skipped if m != self.prior))
        self._plans[(self._plan_band, present, missing)] = plan  # cached as the base caches its own
        return plan

    def start(self, present: Iterable[str], missing: Iterable[str] = ()) -> PriorWalkState:
        s = super().start(present, missing)
        return PriorWalkState(plan=s.plan, thresholds=s.thresholds, pending=s.pending, cheapest=s.cheapest)

    def observe(
        self, state: WalkState, modality: str, exit_index: int, probs: np.ndarray | Sequence[float]
    ) -> float:
        """The base :meth:`Policy.observe` on the exit's probabilities weighted by the prior's (see the module
        docstring); the prior's own exit is recorded and never answers."""
        values = probs.tolist() if isinstance(probs, np.ndarray) else list(probs)
        prior = state.prior if isinstance(state, PriorWalkState) else None
        if modality == self.prior or prior is None:
            score = super().observe(state, modality, exit_index, values)
            if modality == self.prior and isinstance(state, PriorWalkState) and not state.cheapest:
                state.prior, state.last_passed, state.check_due = values, False, False
            return score
        joint = product_of_experts(values, prior)
        score = super().observe(state, modality, exit_index, joint)
        if state.last_passed and _argmax(joint) != _argmax(values):  # the prior contradicts the exit: walk on
            state.last_passed = False
            state.check_due = self.fusion_checks and len(state.computed) >= 2
        return score


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
