"""A walk as a program: the steps a policy takes for a present-modality set, and where to cut them.

For the threshold rules (``entropy``, ``max_prob``) a policy's walk is *static* once the plan is
made: the modalities in plan order, each through its evaluated exits, a fused check after every
exit that does not pass once two modalities ran (except at the walk's end), and the final fusion.
What differs per sample is only *where it stops*: at the first step whose score passes its
threshold. So a walk is a list of :class:`Step` and a sample's decision is "the first passing
step" — which a compiled backend can evaluate in its own graph, leaving the policy a table look-up::

    program = walk_program(policy, present=("image", "audio"))
    # program.steps: image/0, image/1, image/2, audio/0, check(image2, audio0), audio/1,
    #                check(image2, audio1), audio/2, final(image2, audio2)
    cuts = choose_cuts(step_ms, call_ms, pass_prob)   # e.g. (0, 5, 9): two calls

:func:`choose_cuts` groups consecutive steps into *calls* (one graph run each) so that the expected
time per sample is least: a call costs a fixed overhead plus its steps' compute, and a later call
runs only when no earlier step passed. On a compiled backend a cheap encoder's whole path in one
call can cost less than its first exit as a separate call; an expensive step that is rarely reached
is better left to a call of its own. Steps of a call run whether or not an earlier step of the
same call passes: their compute is spent (and counted in the decision's MACs) but never changes the
decision, which is always the first passing step's.

Pure Python (no torch, no numpy in the hot path): the scheduler's rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from exitflow.scheduler.errors import SchedulerError
from exitflow.scheduler.plan import Plan
from exitflow.scheduler.profile import Profile

if TYPE_CHECKING:  # a type only: policy imports nothing of this module
    from exitflow.scheduler.policy import Policy

StepKind = Literal["exit", "check", "final"]
STATIC_RULES = ("entropy", "max_prob")  # rules whose walk is a fixed program (patience counts across exits)


@dataclass(frozen=True)
class Step:
    """One step of a walk.

    Attributes:
        kind: ``exit`` (an encoder exit), ``check`` (a fused early check) or ``final`` (the fusion
            that ends a walk nothing stopped).
        exits: ``((modality, exit index), ...)``: the exit run (one pair) or the exits fused, in the
            order the modalities were computed.
        key: The threshold that decides the step (a modality or ``fusion``); None: the step always
            ends the walk (the final fusion; the only exit of cheapest-exit mode).
    """

    kind: StepKind
    exits: tuple[tuple[str, int], ...]
    key: str | None

    @property
    def modality(self) -> str:
        """The modality of an exit step."""
        return self.exits[0][0]

    @property
    def exit_index(self) -> int:
        return self.exits[0][1]

    @property
    def name(self) -> str:
        """``image/2``, ``fusion/image2_audio0`` or ``fusion``: the stage name in a decision's latency."""
        if self.kind == "exit":
            return f"{self.modality}/{self.exit_index}"
        return "fusion" if self.kind == "final" else "fusion/" + "_".join(f"{m}{e}" for m, e in self.exits)


@dataclass(frozen=True)
class Program:
    """The steps of one plan's walk, in the order the policy takes them (see the module doc)."""

    plan: Plan
    steps: tuple[Step, ...]
    cheapest: bool = False


def walk_program(policy: Policy, present: Sequence[str], missing: Sequence[str] = ()) -> Program:
    """The program of ``policy``'s walk for ``present`` modalities at its current lambda band.

    It equals the sequence of CONTINUE / CHECK / FUSE actions :meth:`Policy.decide` yields for a
    sample none of whose exits pass (``tests/scheduler/test_program.py`` drives both).

    Raises:
        SchedulerError: the exit rule's walk is not static (``patience``, ``none``).
    """
    if policy.exit_rule not in STATIC_RULES:
        raise SchedulerError(
            f"exit rule {policy.exit_rule!r} has no static walk (its score depends on earlier exits); "
            f"use engine.backend: torch for it, or one of {STATIC_RULES}"
        )
    present, missing = tuple(present), tuple(missing)
    if policy.cheapest_mode:
        plan = policy.cheapest_plan(present, missing)
        m = plan.order[0]
        first = policy.exit_sets[m][0]
        return Program(plan=plan, steps=(Step("exit", ((m, first),), None),), cheapest=True)
    plan = policy.plan(present, missing)
    steps: list[Step] = []
    last: dict[str, int] = {}  # modality -> its last exit so far, in computed order
    check_due = False
    for m in plan.order:
        for j in policy.exit_sets[m]:
            if check_due:
                steps.append(Step("check", tuple(last.items()), "fusion"))
            steps.append(Step("exit", ((m, j),), m))
            last[m] = j
            check_due = policy.fusion_checks and len(last) >= 2
    steps.append(Step("final", tuple(last.items()), None))
    return Program(plan=plan, steps=tuple(steps))


def reach_probabilities(pass_prob: Sequence[float]) -> list[float]:
    """P(a walk reaches step i) when step i passes with probability ``pass_prob[i]`` given it is reached."""
    reach, p = [], 1.0
    for q in pass_prob:
        reach.append(p)
        p *= 1.0 - min(max(float(q), 0.0), 1.0)
    return reach


def expected_ms(cuts: Sequence[int], step_ms: Sequence[float], call_ms: float, reach: Sequence[float]) -> float:
    """Expected time of a walk cut at ``cuts`` (call boundaries, 0 first and ``len(step_ms)`` last)."""
    return sum(reach[a] * (call_ms + sum(step_ms[a:b])) for a, b in zip(cuts[:-1], cuts[1:], strict=True))


def choose_cuts(step_ms: Sequence[float], call_ms: float, pass_prob: Sequence[float]) -> tuple[int, ...]:
    """Call boundaries that minimise the expected time per sample (dynamic programming, O(n^2)).

    Args:
        step_ms: Compute time of each step alone, without the call overhead (>= 0).
        call_ms: Fixed cost of one call (the backend's per-run overhead), >= 0.
        pass_prob: P(step passes | reached), per step (the last step always ends the walk).

    Returns:
        ``(0, c1, ..., n)``: call k runs steps ``cuts[k]:cuts[k + 1]``.
    """
    n = len(step_ms)
    if n == 0:
        raise SchedulerError("a walk program has at least one step")
    if len(pass_prob) != n or call_ms < 0 or any(not math.isfinite(s) or s < 0 for s in step_ms):
        raise ValueError(f"need {n} pass probabilities and finite costs >= 0, got {list(pass_prob)}, {call_ms}")
    reach = reach_probabilities(pass_prob)
    prefix = [0.0]
    for s in step_ms:
        prefix.append(prefix[-1] + float(s))
    # best[i]: least expected cost of steps i..n-1, given the walk reaches step i's call start
    best = [0.0] * (n + 1)
    nxt = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        options = [(reach[i] * (call_ms + prefix[j] - prefix[i]) + best[j], j) for j in range(i + 1, n + 1)]
        best[i], nxt[i] = min(options)  # ties: the earlier cut (less speculative compute)
    cuts, i = [0], 0
    while i < n:
        i = nxt[i]
        cuts.append(i)
    return tuple(cuts)


def timed_profile(profile: Profile, program: Program, step_ms: Sequence[float], call_ms: float) -> Profile:
    """``profile`` with ``latency_ms`` filled from steps timed on a backend (``cost_unit: ms``).

    ``program`` is a walk over every modality (each exit it evaluates is one of its steps); an exit's
    latency is the cumulative time of its modality's steps through it, plus one call's fixed cost (a
    modality starts at least one call); a fused step's time prices every fusion entry (one head each).
    Exits the walk leaves out take the time of the next exit that runs (their blocks run in its step).
    """
    if len(step_ms) != len(program.steps):
        raise ValueError(f"need {len(program.steps)} step times, got {len(step_ms)}")
    by_exit: dict[tuple[str, int], float] = {}
    fused = [ms for s, ms in zip(program.steps, step_ms, strict=True) if s.kind != "exit"]
    for s, ms in zip(program.steps, step_ms, strict=True):
        if s.kind == "exit":
            by_exit[s.exits[0]] = float(ms)
    exits = {}
    for m, rows in profile.exits.items():
        total, timed, pending = float(call_ms), [], 0
        for ex in rows:
            if (m, ex.exit_index) in by_exit:
                total += by_exit[(m, ex.exit_index)]
                timed += [replace(r, latency_ms=total) for r in rows[pending : ex.exit_index + 1]]
                pending = ex.exit_index + 1
        timed += [replace(r, latency_ms=total) for r in rows[pending:]]
        exits[m] = tuple(timed)
    fusion_ms = max(fused) if fused else 0.0
    fusion = tuple(replace(f, latency_ms=fusion_ms) for f in profile.fusion)
    return replace(profile, exits=exits, fusion=fusion)
