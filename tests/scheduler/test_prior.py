"""PriorPolicy: a cheap exit run first, weighing every later exit (table tests, no torch)."""

from __future__ import annotations

import pytest

from exitflow.scheduler.policy import Action, ActionKind, Policy, PolicySettings
from exitflow.scheduler.prior import PriorPolicy, product_of_experts
from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile

LEANS_0 = [0.7, 0.1, 0.1, 0.1]  # normalized entropy 0.68: does not pass 0.3 alone
SURE_0 = [0.9, 1 / 30, 1 / 30, 1 / 30]
SURE_1 = [0.01, 0.97, 0.01, 0.01]  # entropy 0.12: passes alone
LEANS_1_OVER_0 = [0.3, 0.7, 0.0, 0.0]
UNSURE = [0.25] * 4


def _ex(m: str, j: int, a: float, macs: float) -> ExitProfile:
    return ExitProfile(modality=m, exit_index=j, accuracy=a, exit_prob=0.5, macs=macs, energy_mj=macs / 10)


def _profile() -> Profile:
    # text: a cheap first exit, costly useless later ones (UoE skips text); audio: the workhorse
    return Profile(
        exits={
            "image": (_ex("image", 0, 0.6, 30), _ex("image", 1, 0.65, 60)),
            "audio": (_ex("audio", 0, 0.9, 40), _ex("audio", 1, 0.97, 80)),
            "text": (_ex("text", 0, 0.2, 1), _ex("text", 1, 0.2, 400), _ex("text", 2, 0.2, 800)),
        },
        fusion=tuple(FusionProfile(s, 0.99, 1) for s in
                     [("audio", "image", "text"), ("audio", "image"), ("audio", "text"), ("image", "text"),
                      ("audio",), ("image",), ("text",)]),
        thresholds={"image": 0.3, "audio": 0.3, "text": 0.3},
    )


def _walk(policy: Policy, present, probs: dict[tuple[str, int], list[float]], missing=()) -> list[Action]:
    state = policy.start(present, missing)
    actions = []
    while True:
        action = policy.decide(state)
        actions.append(action)
        if action.kind is ActionKind.CONTINUE:
            policy.observe(state, action.modality, action.exit_index, probs[action.target()])
        elif action.kind in (ActionKind.EXIT, ActionKind.FUSE):
            return actions


def _steps(actions: list[Action]) -> list[tuple]:
    return [(a.kind.value, a.modality, a.exit_index, a.modalities) for a in actions if a.kind is not ActionKind.SKIP]


SETTINGS = PolicySettings(lam=2.0, skip_negative=True)
ALL = ("image", "audio", "text")


def test_the_base_plan_skips_text_the_prior_runs_it_first() -> None:
    assert "text" in Policy(_profile(), SETTINGS).plan(ALL).skipped
    plan = PriorPolicy(_profile(), SETTINGS).plan(ALL)
    assert plan.order[0] == "text" and "text" not in plan.skipped
    assert PriorPolicy(_profile(), SETTINGS).plan(ALL) == plan  # cached plans too


@pytest.mark.parametrize(
    "name, probs, want",
    [
        # text agrees with a leaning audio exit: the product is sure, audio answers at its first exit
        ("agrees", {("text", 0): SURE_0, ("audio", 0): LEANS_0, ("audio", 1): LEANS_0},
         [("continue", "text", 0, ()), ("continue", "audio", 0, ()), ("exit", "audio", 0, ())]),
        # the product is sure of class 0 while audio's own class is 1 (the engine would answer 1): walk on;
        # audio's last exit is sure of 1, the prior of 0: no exit passes, the fusion of what ran answers
        ("contradicts", {("text", 0): SURE_0, ("audio", 0): LEANS_1_OVER_0, ("audio", 1): SURE_1},
         [("continue", "text", 0, ()), ("continue", "audio", 0, ()), ("continue", "audio", 1, ()),
          ("fuse", None, None, ("text", "audio"))]),
        # an uninformative prior changes nothing: audio's sure exit answers alone
        ("uniform", {("text", 0): UNSURE, ("audio", 0): SURE_1},
         [("continue", "text", 0, ()), ("continue", "audio", 0, ()), ("exit", "audio", 0, ())]),
    ],
)
def test_the_prior_weighs_later_exits(name: str, probs: dict, want: list) -> None:
    assert _steps(_walk(PriorPolicy(_profile(), SETTINGS), ALL, probs))[: len(want)] == want


def test_text_stops_at_its_cheap_exit_and_is_fused_at_the_end() -> None:
    probs = {("text", 0): SURE_0, **{(m, j): UNSURE for m in ("image", "audio") for j in range(2)}}
    steps = _steps(_walk(PriorPolicy(_profile(), PolicySettings(lam=2.0, skip_negative=False)), ALL, probs))
    assert [s[1:3] for s in steps if s[0] == "continue"] == [("text", 0), ("audio", 0), ("audio", 1),
                                                             ("image", 0), ("image", 1)]
    assert steps[-1][0] == "fuse" and set(steps[-1][3]) == set(ALL)


def test_without_text_the_walk_is_the_base_policys() -> None:
    probs = {("audio", 0): LEANS_0, ("audio", 1): SURE_1, ("image", 0): UNSURE, ("image", 1): UNSURE}
    base = _walk(Policy(_profile(), SETTINGS), ("image", "audio"), probs, missing=("text",))
    assert _walk(PriorPolicy(_profile(), SETTINGS), ("image", "audio"), probs, missing=("text",)) == base


def test_product_of_experts() -> None:
    assert product_of_experts([0.5, 0.5], [0.9, 0.1]) == pytest.approx([0.9, 0.1])
    assert product_of_experts([0.2, 0.8], [0.5, 0.5]) == pytest.approx([0.2, 0.8])
    assert product_of_experts([1.0, 0.0], [0.0, 1.0]) == [1.0, 0.0]  # disjoint: the exit's own


@pytest.mark.parametrize("kwargs, match", [
    ({"prior": "smell"}, "not in the exit profile"),
    ({"prior_exit": 3}, "must be an exit of text"),
    ({"settings": PolicySettings(exit_rule="patience", thresholds={"image": 2, "audio": 2, "text": 2})},
     "does not read them"),
])
def test_bad_priors_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PriorPolicy(_profile(), **kwargs)
