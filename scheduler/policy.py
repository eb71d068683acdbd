"""The per-sample policy: a small state machine the engine drives one step at a time.

Usage (the engine's loop, no torch here)::

    state = policy.start(present=["image", "audio"], missing=["text"])
    while True:
        action = policy.decide(state)
        if action.kind is ActionKind.CONTINUE:   # run the next exit of action.modality
            probs = ...                          # softmax of that exit's logits, shape (C,)
            policy.observe(state, action.modality, action.exit_index, probs)
        elif action.kind is ActionKind.SKIP:     # record action.modality as skipped
            continue
        else:                                    # EXIT (predict from this exit) or FUSE
            break

``advance(state, modality, exit_index, probs)`` is ``observe`` then ``decide`` in one call (what
the engine uses: every call costs microseconds between torch kernels).

The walk follows the plan (modalities in phi order, their exits in depth order), exits as soon
as an exit's score passes its threshold, and otherwise ends with the fusion exit over the
modalities computed so far. With fused checks (the thresholds name ``fusion``, as the CNN
family's calibration writes them), every exit that does not pass while two or more modalities
have run is followed by a CHECK: the engine runs the fusion exit over the exits so far and shows
its probabilities (:meth:`Policy.observe_fusion`); a fused score that passes ends the walk there. In cheapest-exit mode (set by the budget controller when the budget
is below the cheapest exit) it runs only the cheapest first exit among the present modalities
and exits there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from exitflow.scheduler.errors import SchedulerError
from exitflow.scheduler.plan import Plan, order_modalities
from exitflow.scheduler.profile import Profile
from exitflow.scheduler.rules import check_rule, couple_threshold, entropy_of, passes
from exitflow.scheduler.utility import AccuracyKind, CostUnit, Ranking, UtilityModel, check_lambda

FUSION_KEY = "fusion"  # the threshold of fused checks
PLAN_LAMBDA_STEP = 0.05  # plans are made per 5 % band of lambda (log-spaced), see Policy.set_lambda


@dataclass(frozen=True)
class PolicySettings:
    """How the policy plans and exits.

    Attributes:
        lam: Initial lambda (accuracy per full-model cost, see :mod:`scheduler.utility`).
        cost_unit: ``"macs"`` or ``"mj"``.
        ranking: ``"phi"`` (MMExit), ``"exchange"`` or ``"exhaustive"``.
        exit_rule: Exit rule; None takes the profile's.
        thresholds: Modality -> threshold, overriding the profile's.
        skip_negative: Skip modalities whose marginal expected utility is negative.
        threshold_coupling: Kappa of :func:`scheduler.rules.couple_threshold` (0 = fixed thresholds).
        accuracy: Accuracy credited to an exit: ``exited`` (of the samples that exit there) or
            ``overall`` (over all samples, as MMExit writes a); see :func:`scheduler.utility.exit_accuracy`.
        min_exit_prob: Evaluate only the exits whose profiled exit probability p is at least this
            (the last exit always): a head that rarely fires costs more than it saves. 0 = all.
        min_exit_accuracy: Evaluate only the exits whose profiled accuracy (over the samples that exit
            there; overall where none do) is at least this (the last always): an exit that is often
            confidently wrong costs accuracy whatever the threshold. 0 = all.
    """

    lam: float = 1.0
    cost_unit: CostUnit = "macs"
    ranking: Ranking = "phi"
    exit_rule: str | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)
    skip_negative: bool = True
    threshold_coupling: float = 0.0
    min_exit_prob: float = 0.0
    min_exit_accuracy: float = 0.0
    accuracy: AccuracyKind = "exited"


class ActionKind(str, Enum):
    CONTINUE = "continue"  # run the next exit of `modality`
    EXIT = "exit"  # predict from the exit just observed
    SKIP = "skip"  # record `modality` as skipped (missing or negative utility)
    FUSE = "fuse"  # predict with the fusion exit over `modalities`
    CHECK = "check"  # run the fusion exit over `modalities` now and observe it (a fused early exit)


@dataclass(frozen=True)
class Action:
    """One step of a walk: CONTINUE and EXIT name a modality and exit, SKIP a modality, FUSE modalities."""

    kind: ActionKind
    modality: str | None = None
    exit_index: int | None = None
    modalities: tuple[str, ...] = ()
    reason: str = ""

    def target(self) -> tuple[str, int]:
        """``(modality, exit_index)`` of a CONTINUE or EXIT action; SchedulerError for the others."""
        if self.modality is None or self.exit_index is None:
            raise SchedulerError(f"a {self.kind.value} action names no exit (only continue and exit do)")
        return self.modality, self.exit_index


@dataclass(slots=True)
class WalkState:
    """Where one sample's walk stands; created by :meth:`Policy.start`."""

    plan: Plan
    thresholds: dict[str, float]
    pending: list[Action]
    cheapest: bool = False
    position: int = 0
    exits_done: dict[str, int] = field(default_factory=dict)  # modality -> index after its last exit
    computed: list[str] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)
    last_modality: str | None = None
    last_exit: int | None = None
    last_passed: bool = False
    patience: dict[str, tuple[int, int]] | None = None  # modality -> (last class, count); patience rule only
    finished: bool = False
    check_due: bool = False  # a fused check follows the exit just observed
    fused_passed: bool = False  # the last fused check passed: the walk ends with its prediction
    fused_checks: int = 0


class Policy:
    """Plans per present-modality set and walks one sample at a time.

    Args:
        profile: Exit profile of the loaded checkpoints.
        settings: :class:`PolicySettings`.

    Raises:
        ValueError: unknown rule, missing thresholds, or lambda out of range.
    """

    def __init__(self, profile: Profile, settings: PolicySettings | None = None):
        settings = settings or PolicySettings()
        self.profile = profile
        self.settings = settings
        self.model = UtilityModel(profile, settings.cost_unit, settings.accuracy)
        self.num_exits = {m: profile.num_exits(m) for m in profile.modalities}
        for name in ("min_exit_prob", "min_exit_accuracy"):
            value = getattr(settings, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

        def evaluated(e) -> bool:  # noqa: ANN001 - an ExitProfile
            if e.exit_index == self.num_exits[e.modality] - 1:
                return True  # the last exit always runs
            accuracy = e.accuracy_exited if e.accuracy_exited is not None else e.accuracy
            return e.exit_prob >= settings.min_exit_prob and accuracy >= settings.min_exit_accuracy

        self.exit_sets = {m: tuple(e.exit_index for e in profile.exits[m] if evaluated(e)) for m in profile.modalities}
        # lookup tables so the per-sample walk allocates nothing: the next evaluated exit at or after
        # each index, and one reusable (immutable) Action per (modality, exit)
        self._next = {
            m: tuple(next((j for j in exits if j >= i), None) for i in range(self.num_exits[m] + 1))
            for m, exits in self.exit_sets.items()
        }
        self._continue = {m: tuple(Action(ActionKind.CONTINUE, m, j) for j in range(n)) for m, n in self.num_exits.items()}
        self._exit = {m: tuple(Action(ActionKind.EXIT, m, j) for j in range(n)) for m, n in self.num_exits.items()}
        self.exit_rule = settings.exit_rule or profile.exit_rule
        check_rule(self.exit_rule)
        self._base_thresholds = {**profile.thresholds, **settings.thresholds}
        # fused checks after each exit once two modalities ran: on when a fusion threshold is set
        self.fusion_checks = FUSION_KEY in self._base_thresholds and self.exit_rule in ("max_prob", "entropy")
        absent = [m for m in profile.modalities if m not in self._base_thresholds]
        if absent and self.exit_rule != "none":
            raise ValueError(f"no exit threshold for {absent}; set them in the profile or the settings")
        self._lam_ref = check_lambda(settings.lam)
        self._plans: dict[tuple[int, tuple[str, ...], tuple[str, ...]], Plan] = {}  # (band, present, missing)
        self._plan_band, self._plans_lam = 0, 1.0  # lambda band in force and the lambda its plans use
        self._thresholds: dict[str, float] = {}
        self._walks: dict[tuple[int, tuple[str, ...], tuple[str, ...]], tuple[Plan, tuple[Action, ...]]] = {}
        self.cheapest_mode = False
        self._skip_negative = settings.skip_negative
        self.plan_epoch = 0  # bumped when plans change for another reason than lambda (engines key caches on it)
        self.set_lambda(settings.lam)

    @property
    def lam(self) -> float:
        return self._lam

    @property
    def thresholds(self) -> dict[str, float]:
        """Modality -> threshold in force (after lambda coupling)."""
        return dict(self._thresholds)

    @property
    def base_thresholds(self) -> dict[str, float]:
        """Modality (and ``fusion``) -> threshold before lambda coupling: the profile's, the settings'
        overrides, or the last :meth:`set_thresholds`."""
        return dict(self._base_thresholds)

    def set_thresholds(self, thresholds: Mapping[str, float]) -> None:
        """Replace some or all base thresholds (online recalibration); lambda coupling applies at once.

        Only keys the policy already has may be set (a ``fusion`` key cannot switch fused checks on).
        A walk already started keeps the thresholds it began with.

        Raises:
            ValueError: an unknown key or a non-finite value.
        """
        unknown = sorted(set(thresholds) - set(self._base_thresholds))
        if unknown:
            raise ValueError(f"unknown threshold key(s) {unknown}; this policy has {sorted(self._base_thresholds)}")
        bad = {k: v for k, v in thresholds.items() if not math.isfinite(v)}
        if bad:
            raise ValueError(f"thresholds must be finite numbers, got {bad}")
        self._base_thresholds = {**self._base_thresholds, **{k: float(v) for k, v in thresholds.items()}}
        self._thresholds = {
            m: couple_threshold(self.exit_rule, t, self._lam, self._lam_ref, self.settings.threshold_coupling)
            for m, t in self._base_thresholds.items()
        }

    def set_lambda(self, lam: float) -> None:
        """Change lambda (ValueError outside [LAMBDA_MIN, LAMBDA_MAX]); thresholds follow at once.

        Plans are cached per band of lambda :data:`PLAN_LAMBDA_STEP` wide in log space and made at
        the band's centre: a budget controller nudges lambda every sample, and re-ranking for a
        change of a percent would cost more than the rest of the walk while (almost) never
        changing the order; a lambda that wanders back finds its plans cached.
        """
        self._lam = check_lambda(lam)
        band = round(math.log(self._lam) / PLAN_LAMBDA_STEP)
        self._plan_band, self._plans_lam = band, math.exp(band * PLAN_LAMBDA_STEP)
        coupling = self.settings.threshold_coupling
        if coupling == 0.0 and self._thresholds:
            return  # fixed thresholds: nothing follows lambda
        self._thresholds = {
            m: couple_threshold(self.exit_rule, t, self._lam, self._lam_ref, coupling)
            for m, t in self._base_thresholds.items()
        }

    def set_skip_negative(self, on: bool) -> None:
        """Switch skipping of negative-utility modalities (online recalibration turns it off while its
        thresholds say "never exit early", so the walk is the full path); cached plans are dropped."""
        if bool(on) != self._skip_negative:
            self._skip_negative = bool(on)
            self._plans.clear()
            self._walks.clear()
            self.plan_epoch += 1

    def set_cheapest_mode(self, on: bool) -> None:
        """Run only the cheapest first exit (the budget controller's fallback)."""
        self.cheapest_mode = bool(on)

    def plan(self, present: Iterable[str], missing: Iterable[str] = ()) -> Plan:
        """The (cached) plan for ``present`` modalities at the current lambda's band
        (:data:`PLAN_LAMBDA_STEP`; ``plan.lam`` is the lambda it was made at)."""
        key = (self._plan_band, tuple(present), tuple(missing))
        plan = self._plans.get(key)
        if plan is None:
            plan = order_modalities(
                self.model,
                self._plans_lam,
                key[1],
                method=self.settings.ranking,
                skip_negative=self._skip_negative,
                missing=key[2],
            )
            self._plans[key] = plan
        return plan

    def cheapest_plan(self, present: Iterable[str], missing: Iterable[str] = ()) -> Plan:
        """Only the present modality whose first exit is cheapest; the others are skipped."""
        missing = tuple(missing)
        mods = [m for m in present if m not in missing]
        if not mods:
            raise SchedulerError(f"no modality present in the sample (missing: {sorted(missing)})")
        unknown = [m for m in mods if m not in self.model.terms]
        if unknown:
            raise ValueError(
                f"modalities {unknown} are not in the exit profile (it has {sorted(self.model.terms)})"
            )
        best = min(mods, key=lambda m: self.model.terms[m].cost_cum[0])
        return Plan(
            order=(best,),
            skipped=tuple(m for m in mods if m != best),
            missing=missing,
            lam=self._lam,
        )

    def start(self, present: Iterable[str], missing: Iterable[str] = ()) -> WalkState:
        """Begin one sample's walk."""
        present, missing = tuple(present), tuple(missing)
        if self.cheapest_mode:
            plan = self.cheapest_plan(present, missing)
            skips = self._skip_actions(plan, "cheapest-exit mode")
        else:
            key = (self._plan_band, present, missing)
            entry = self._walks.get(key)
            if entry is None:
                plan = self.plan(present, missing)
                entry = (plan, self._skip_actions(plan, "negative expected utility"))
                if self._plans.get(key) is plan:  # only plans this policy caches (not RExit's random ones)
                    self._walks[key] = entry
            plan, skips = entry
        return WalkState(plan=plan, thresholds=self._thresholds, pending=list(skips), cheapest=self.cheapest_mode)

    @staticmethod
    def _skip_actions(plan: Plan, reason: str) -> tuple[Action, ...]:
        actions = tuple(Action(ActionKind.SKIP, m, reason="missing") for m in plan.missing)
        return actions + tuple(Action(ActionKind.SKIP, m, reason=reason) for m in plan.skipped)

    def decide(self, state: WalkState) -> Action:
        """The next action for this sample; raises SchedulerError once the walk has ended."""
        if state.finished:
            raise SchedulerError("decide() called after the sample's walk ended (EXIT or FUSE)")
        if state.pending:
            return state.pending.pop(0)
        last, last_exit = state.last_modality, state.last_exit
        if last is not None and last_exit is not None and (state.last_passed or state.cheapest):
            state.finished = True
            return self._exit[last][last_exit]
        if state.fused_passed:
            state.finished = True
            return Action(ActionKind.FUSE, modalities=tuple(state.computed), reason="fused check passed")
        order = state.plan.order
        while state.position < len(order):
            modality = order[state.position]
            nxt = self._next[modality][state.exits_done.get(modality, 0)]
            if nxt is not None:
                if state.check_due:  # not at the walk's end: there the final fusion is the same head
                    state.check_due = False
                    return Action(ActionKind.CHECK, modalities=tuple(state.computed))
                return self._continue[modality][nxt]
            state.position += 1
        state.finished = True
        return Action(ActionKind.FUSE, modalities=tuple(state.computed))

    def _next_exit(self, modality: str, start: int) -> int | None:
        """The first evaluated exit of ``modality`` at index >= ``start``, or None."""
        table = self._next[modality]
        return table[start] if start < len(table) else None

    def observe(
        self, state: WalkState, modality: str, exit_index: int, probs: np.ndarray | Sequence[float]
    ) -> float:
        """Record the softmax ``probs`` (shape (C,); a 1-D array or a list) of ``modality``'s exit.

        The rule's score is computed in plain Python over the C values (a list is the fast path:
        a numpy call costs several microseconds per exit, which is the whole budget here).

        Returns:
            The exit's score under the rule in force.
        """
        expected = self._next_exit(modality, state.exits_done.get(modality, 0))
        if exit_index != expected:
            raise SchedulerError(
                f"{modality}: observed exit {exit_index}, but the walk expected exit {expected}"
            )
        values = probs.tolist() if isinstance(probs, np.ndarray) else probs
        rule = self.exit_rule
        if rule == "entropy":
            score = entropy_of(values)
            passed = score <= state.thresholds[modality]
        elif rule == "max_prob":
            score = float(max(values))
            passed = score >= state.thresholds[modality]
        elif rule == "patience":
            cls = max(range(len(values)), key=values.__getitem__)
            if state.patience is None:
                state.patience = {}
            last_cls, last_count = state.patience.get(modality, (-1, -1))
            count = last_count + 1 if last_cls == cls else 0
            state.patience[modality] = (cls, count)
            score = float(count)
            passed = score >= state.thresholds[modality]
        else:
            score, passed = 0.0, False
        state.exits_done[modality] = exit_index + 1
        if modality not in state.computed:
            state.computed.append(modality)
            state.scores[modality] = [score]
        else:
            state.scores[modality].append(score)
        state.last_modality, state.last_exit, state.last_passed = modality, exit_index, passed
        state.check_due = self.fusion_checks and not passed and len(state.computed) >= 2 and not state.cheapest
        return score

    def observe_fusion(self, state: WalkState, probs: np.ndarray | Sequence[float]) -> float:
        """Record the softmax ``probs`` (C,) of a fused check; a passing score ends the walk (FUSE next).

        Returns:
            The fused check's score under the rule in force.
        """
        if not self.fusion_checks:
            raise SchedulerError("observe_fusion() without fused checks (no 'fusion' threshold is set)")
        values = probs.tolist() if isinstance(probs, np.ndarray) else probs
        score = entropy_of(values) if self.exit_rule == "entropy" else float(max(values))
        state.fused_checks += 1
        state.fused_passed = bool(passes(self.exit_rule, score, state.thresholds[FUSION_KEY]))
        return score

    def advance_fusion(self, state: WalkState, probs: np.ndarray | Sequence[float]) -> Action:
        """:meth:`observe_fusion` then :meth:`decide`."""
        self.observe_fusion(state, probs)
        return self.decide(state)

    def advance(
        self, state: WalkState, modality: str, exit_index: int, probs: np.ndarray | Sequence[float]
    ) -> Action:
        """:meth:`observe` then :meth:`decide` in one call (the engine's loop): the next action."""
        self.observe(state, modality, exit_index, probs)
        return self.decide(state)


class RandomOrderPolicy(Policy):
    """MMExit's RExit baseline: exits in a random modality order per sample, no UoE ranking or skipping.

    Thresholds and the exit rule are those of the profile/settings; only the order differs, drawn
    per sample from a generator seeded with ``seed`` (so a run is reproducible).
    """

    def __init__(self, profile: Profile, settings: PolicySettings | None = None, seed: int = 0):
        super().__init__(profile, settings)
        self._rng = np.random.default_rng(seed)

    def plan(self, present: Iterable[str], missing: Iterable[str] = ()) -> Plan:
        missing = tuple(missing)
        mods = [m for m in present if m not in missing]
        if not mods:
            raise SchedulerError(f"no modality present in the sample (missing: {sorted(missing)})")
        order = tuple(mods[i] for i in self._rng.permutation(len(mods)))
        return Plan(order=order, missing=missing, lam=self.lam)
