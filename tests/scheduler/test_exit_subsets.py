"""Exit subsets: the policy evaluates only exits with profiled p >= min_exit_prob (and the last)."""

from __future__ import annotations

import numpy as np
import pytest

from exitflow.scheduler.policy import ActionKind, Policy, PolicySettings
from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile


def profile() -> Profile:
    probs = {"a": (0.3, 0.01, 0.02, 0.5), "b": (0.0, 0.2, 0.9)}
    exits = {
        m: tuple(ExitProfile(m, j, accuracy=0.5 + 0.1 * j, exit_prob=p, macs=100.0 * (j + 1)) for j, p in enumerate(ps))
        for m, ps in probs.items()
    }
    return Profile(exits=exits, fusion=(FusionProfile(("a", "b"), 0.95, 10.0),), thresholds={"a": 0.1, "b": 0.1})


def walk(policy: Policy, passes_at: dict[str, int | None]) -> list[tuple[str, int]]:
    """Exit indices the policy asks for; a modality 'passes' (certain) at the given exit."""
    state = policy.start(["a", "b"])
    asked = []
    while True:
        action = policy.decide(state)
        if action.kind is ActionKind.CONTINUE:
            asked.append((action.modality, action.exit_index))
            sure = passes_at.get(action.modality) == action.exit_index
            probs = np.eye(10)[0] if sure else np.full(10, 0.1)
            policy.observe(state, action.modality, action.exit_index, probs)
        elif action.kind in (ActionKind.EXIT, ActionKind.FUSE):
            return asked


def test_min_exit_prob_selects_exits_and_the_walk_skips_the_rest() -> None:
    settings = PolicySettings(skip_negative=False, min_exit_prob=0.1, ranking="exhaustive")
    policy = Policy(profile(), settings)
    assert policy.exit_sets == {"a": (0, 3), "b": (1, 2)}
    asked = walk(policy, {"a": None, "b": None})
    assert sorted(asked) == [("a", 0), ("a", 3), ("b", 1), ("b", 2)]
    assert walk(policy, {"a": 3, "b": 1})[-1] in (("a", 3), ("b", 1))


def test_zero_min_exit_prob_keeps_every_exit_and_bad_values_are_rejected() -> None:
    policy = Policy(profile(), PolicySettings(skip_negative=False))
    assert policy.exit_sets == {"a": (0, 1, 2, 3), "b": (0, 1, 2)}
    with pytest.raises(ValueError, match="min_exit_prob"):
        Policy(profile(), PolicySettings(min_exit_prob=1.5))


def test_min_exit_accuracy_drops_weak_exits_but_never_the_last() -> None:
    # accuracies 0.5, 0.6, 0.7, 0.8 (a) and 0.5, 0.6, 0.7 (b); the last exit of each always stays
    policy = Policy(profile(), PolicySettings(skip_negative=False, min_exit_accuracy=0.65))
    assert policy.exit_sets == {"a": (2, 3), "b": (2,)}
    both = Policy(profile(), PolicySettings(skip_negative=False, min_exit_accuracy=0.55, min_exit_prob=0.1))
    assert both.exit_sets == {"a": (3,), "b": (1, 2)}
    with pytest.raises(ValueError, match="min_exit_accuracy"):
        Policy(profile(), PolicySettings(min_exit_accuracy=-0.1))
