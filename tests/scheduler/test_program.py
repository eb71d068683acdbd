"""The walk program equals the policy's walk; the cut chooser finds the least expected time."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from exitflow.scheduler.errors import SchedulerError
from exitflow.scheduler.policy import ActionKind, Policy, PolicySettings
from exitflow.scheduler.program import choose_cuts, expected_ms, reach_probabilities, walk_program
from exitflow.scheduler.synthetic import random_profile


def synthetic_profile():
    return random_profile(np.random.default_rng(3), ("image", "audio", "text"), num_exits=3)


def _probs(confident: bool, classes: int = 10) -> list[float]:
    if confident:
        return [0.991] + [0.001] * (classes - 1)
    return [1.0 / classes] * classes


def _drive(policy: Policy, present, passes: dict[int, bool]) -> list[tuple[str, tuple]]:
    """The reference walk's actions; observation i (exits and checks counted together) passes if passes[i]."""
    state = policy.start(present)
    seen, i = [], 0
    action = policy.decide(state)
    while True:
        if action.kind is ActionKind.SKIP:
            action = policy.decide(state)
            continue
        if action.kind is ActionKind.CONTINUE:
            seen.append(("exit", ((action.modality, action.exit_index),)))
            action = policy.advance(state, action.modality, action.exit_index, _probs(passes.get(i, False)))
            i += 1
        elif action.kind is ActionKind.CHECK:
            seen.append(("check", tuple((m, state.exits_done[m] - 1) for m in action.modalities)))
            action = policy.advance_fusion(state, _probs(passes.get(i, False)))
            i += 1
        else:
            seen.append((action.kind.value, ()))
            return seen


@pytest.mark.parametrize("fusion_checks", [True, False])
@pytest.mark.parametrize("stop_at", [None, 0, 2, 3, 4, 6])
def test_program_is_the_walk(fusion_checks: bool, stop_at: int | None) -> None:
    profile = synthetic_profile()
    thresholds = {m: 0.2 for m in profile.modalities}
    if fusion_checks:
        thresholds["fusion"] = 0.2
    policy = Policy(profile, PolicySettings(lam=1.0, exit_rule="entropy", thresholds=thresholds, skip_negative=False))
    present = profile.modalities
    program = walk_program(policy, present)
    walk = _drive(policy, present, {} if stop_at is None else {stop_at: True})
    steps = [(s.kind, s.exits) for s in program.steps]
    if stop_at is None or stop_at >= len(steps) - 1:  # nothing passed: the walk is the program to the final fusion
        assert [w[0] for w in walk[:-1]] == [k for k, _ in steps[:-1]]
        assert walk[:-1] == steps[:-1]
        assert walk[-1][0] == "fuse" and steps[-1][0] == "final"
    else:  # the walk stopped at the first passing step, and that step is the program's step `stop_at`
        assert walk[:-1] == steps[: stop_at + 1]
        assert walk[-1][0] == ("exit" if steps[stop_at][0] == "exit" else "fuse")
    if fusion_checks:
        assert any(k == "check" for k, _ in steps)
    else:
        assert all(k != "check" for k, _ in steps)


def test_cheapest_mode_is_one_forced_exit() -> None:
    profile = synthetic_profile()
    policy = Policy(profile, PolicySettings(exit_rule="entropy", thresholds=dict.fromkeys(profile.modalities, 0.1)))
    policy.set_cheapest_mode(True)
    program = walk_program(policy, profile.modalities)
    assert program.cheapest and len(program.steps) == 1
    assert program.steps[0].key is None and program.steps[0].kind == "exit"


def test_patience_has_no_static_walk() -> None:
    profile = synthetic_profile()
    policy = Policy(profile, PolicySettings(exit_rule="patience", thresholds=dict.fromkeys(profile.modalities, 2)))
    with pytest.raises(SchedulerError, match="no static walk"):
        walk_program(policy, profile.modalities)


def _brute(step_ms, call_ms, pass_prob):
    n, reach = len(step_ms), reach_probabilities(pass_prob)
    best = None
    for mask in itertools.product([0, 1], repeat=n - 1):
        cuts = (0, *[i + 1 for i, b in enumerate(mask) if b], n)
        cost = expected_ms(cuts, step_ms, call_ms, reach)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, cuts)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_cuts_are_least_expected_time(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 8)
    step_ms = [rng.uniform(0.0, 0.1) for _ in range(n)]
    pass_prob = [rng.choice([0.0, 0.05, 0.5, 0.9, 1.0]) for _ in range(n)]
    call_ms = rng.choice([0.0, 0.003, 0.05])
    cuts = choose_cuts(step_ms, call_ms, pass_prob)
    best_cost, _ = _brute(step_ms, call_ms, pass_prob)
    assert math.isclose(expected_ms(cuts, step_ms, call_ms, reach_probabilities(pass_prob)), best_cost, rel_tol=1e-9)


def test_cut_table() -> None:
    # a cheap encoder that never exits, then an expensive step reached 10 % of the time
    assert choose_cuts([0.01, 0.01, 0.01, 0.02, 0.1], 0.005, [0.0, 0.0, 0.0, 0.9, 1.0]) == (0, 4, 5)
    # no call overhead: every step its own call (no speculative compute)
    assert choose_cuts([0.01, 0.01, 0.01], 0.0, [0.5, 0.5, 1.0]) == (0, 1, 2, 3)
    # steps that never stop the walk: one call
    assert choose_cuts([0.01, 0.01, 0.01], 0.001, [0.0, 0.0, 1.0]) == (0, 3)


def test_cut_inputs_are_checked() -> None:
    with pytest.raises(SchedulerError):
        choose_cuts([], 0.0, [])
    with pytest.raises(ValueError):
        choose_cuts([0.1, float("nan")], 0.0, [0.5, 1.0])
    with pytest.raises(ValueError):
        choose_cuts([0.1], -1.0, [1.0])


def test_timed_profile_is_cumulative_and_orders_by_time() -> None:
    from exitflow.scheduler.program import timed_profile
    from exitflow.scheduler.utility import UtilityModel

    profile = synthetic_profile()
    policy = Policy(profile, PolicySettings(lam=1.0, exit_rule="entropy", skip_negative=False,
                                            thresholds={**dict.fromkeys(profile.modalities, 0.2), "fusion": 0.2}))
    program = walk_program(policy, profile.modalities)
    step_ms = [0.01 * (i + 1) for i in range(len(program.steps))]
    timed = timed_profile(profile, program, step_ms, call_ms=0.003)
    for rows in timed.exits.values():
        times = [r.latency_ms for r in rows]
        assert all(t is not None and t > 0.003 for t in times) and times == sorted(times)
    assert all(f.latency_ms is not None for f in timed.fusion)
    model = UtilityModel(timed, "ms")
    assert model.scale > 0
    with pytest.raises(ValueError, match="cost_unit 'ms' needs measured step times"):
        UtilityModel(profile, "ms")
    with pytest.raises(ValueError, match="step times"):
        timed_profile(profile, program, step_ms[:-1], 0.0)
