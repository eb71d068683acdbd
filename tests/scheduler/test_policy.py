"""The per-sample walker: table tests of decide/observe without torch."""

from __future__ import annotations

import numpy as np
import pytest

from exitflow.scheduler.errors import SchedulerError
from exitflow.scheduler.plan import order_modalities
from exitflow.scheduler.policy import Action, ActionKind, Policy, PolicySettings
from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile

CONFIDENT = np.array([0.97, 0.01, 0.01, 0.01])  # normalized entropy ~0.12
UNSURE = np.full(4, 0.25)  # normalized entropy 1.0
SURE = np.array([1.0, 0.0, 0.0, 0.0])  # normalized entropy 0


def _ex(m: str, j: int, a: float, p: float, macs: float) -> ExitProfile:
    return ExitProfile(modality=m, exit_index=j, accuracy=a, exit_prob=p, macs=macs, energy_mj=macs / 10)


def _profile() -> Profile:
    # image: cheap and decent; audio: costly and better; text: costly and useless (negative utility)
    return Profile(
        exits={
            "image": (_ex("image", 0, 0.7, 0.6, 10), _ex("image", 1, 0.8, 0.5, 20)),
            "audio": (_ex("audio", 0, 0.75, 0.5, 30), _ex("audio", 1, 0.9, 0.5, 60)),
            "text": (_ex("text", 0, 0.1, 0.5, 100), _ex("text", 1, 0.1, 0.5, 200)),
        },
        fusion=(
            FusionProfile(("audio", "image", "text"), 0.95, 5),
            FusionProfile(("audio", "image"), 0.95, 5),
            FusionProfile(("image",), 0.5, 5),  # fusion with placeholders for the absent modalities
            FusionProfile(("audio",), 0.5, 5),
        ),
        thresholds={"image": 0.3, "audio": 0.3, "text": 0.3},
    )


def _walk(policy: Policy, present, missing, probs_for) -> list[Action]:
    state = policy.start(present, missing)
    actions = []
    while True:
        action = policy.decide(state)
        actions.append(action)
        if action.kind is ActionKind.CONTINUE:
            policy.observe(
                state, action.modality, action.exit_index, probs_for(action.modality, action.exit_index)
            )
        elif action.kind in (ActionKind.EXIT, ActionKind.FUSE):
            return actions


def _kinds(actions: list[Action]) -> list[tuple]:
    return [(a.kind.value, a.modality, a.exit_index) for a in actions]


def test_plan_orders_by_phi_and_skips_negative_utility():
    plan = order_modalities(_profile(), 2.0, ["image", "audio", "text"])
    assert plan.order == ("image", "audio")
    assert plan.skipped == ("text",)
    assert plan.marginal["text"] < 0
    kept = order_modalities(_profile(), 2.0, ["image", "audio", "text"], skip_negative=False)
    assert kept.order == ("image", "audio", "text") and kept.skipped == ()


@pytest.mark.parametrize(
    ("probs_for", "expected"),
    [
        # confident at the first exit: stop there
        (lambda m, j: CONFIDENT, [("continue", "image", 0), ("exit", "image", 0)]),
        # confident only at image's second exit
        (
            lambda m, j: CONFIDENT if j == 1 else UNSURE,
            [("continue", "image", 0), ("continue", "image", 1), ("exit", "image", 1)],
        ),
        # image never confident, audio at its first exit
        (
            lambda m, j: CONFIDENT if m == "audio" else UNSURE,
            [
                ("continue", "image", 0),
                ("continue", "image", 1),
                ("continue", "audio", 0),
                ("exit", "audio", 0),
            ],
        ),
        # nothing confident: everything runs, then fusion
        (
            lambda m, j: UNSURE,
            [
                ("continue", "image", 0),
                ("continue", "image", 1),
                ("continue", "audio", 0),
                ("continue", "audio", 1),
                ("fuse", None, None),
            ],
        ),
    ],
)
def test_walk_table(probs_for, expected):
    policy = Policy(_profile(), PolicySettings(lam=2.0))
    actions = _walk(policy, ["image", "audio", "text"], [], probs_for)
    assert actions[0] == Action(ActionKind.SKIP, "text", reason="negative expected utility")
    assert _kinds(actions[1:]) == expected
    if expected[-1][0] == "fuse":
        assert actions[-1].modalities == ("image", "audio")


def test_missing_modality_is_skipped_and_recorded():
    policy = Policy(_profile(), PolicySettings(lam=2.0, skip_negative=False))
    actions = _walk(policy, ["image", "audio", "text"], ["image"], lambda m, j: UNSURE)
    assert actions[0] == Action(ActionKind.SKIP, "image", reason="missing")
    assert all(a.modality != "image" for a in actions[1:])
    assert actions[-1].kind is ActionKind.FUSE and "image" not in actions[-1].modalities


def test_rule_none_runs_everything_and_patience_rule():
    policy = Policy(_profile(), PolicySettings(lam=2.0, exit_rule="none", skip_negative=False))
    actions = _walk(policy, ["image", "audio", "text"], [], lambda m, j: CONFIDENT)
    assert sum(a.kind is ActionKind.CONTINUE for a in actions) == 6
    assert actions[-1].modalities == ("image", "audio", "text")
    patient = Policy(
        _profile(),
        PolicySettings(
            lam=2.0, exit_rule="patience", thresholds=dict.fromkeys(("image", "audio", "text"), 1)
        ),
    )
    actions = _walk(patient, ["image", "audio"], [], lambda m, j: CONFIDENT)
    # same class at image/0 and image/1 -> patience count 1 at image/1
    assert _kinds(actions) == [("continue", "image", 0), ("continue", "image", 1), ("exit", "image", 1)]


def test_cheapest_mode_and_errors():
    policy = Policy(_profile(), PolicySettings(lam=2.0))
    policy.set_cheapest_mode(True)
    actions = _walk(policy, ["audio", "text", "image"], [], lambda m, j: UNSURE)
    assert _kinds([a for a in actions if a.kind is not ActionKind.SKIP]) == [
        ("continue", "image", 0),
        ("exit", "image", 0),
    ]
    state = policy.start(["image"])
    policy.decide(state)
    with pytest.raises(SchedulerError, match="expected exit 0"):
        policy.observe(state, "image", 1, UNSURE)
    policy.observe(state, "image", 0, UNSURE)
    policy.decide(state)
    with pytest.raises(SchedulerError, match="after the sample's walk ended"):
        policy.decide(state)
    with pytest.raises(ValueError, match="lambda"):
        policy.set_lambda(0.0)
    with pytest.raises(SchedulerError, match="no modality present"):
        policy.start(["image"], ["image"])
    with pytest.raises(ValueError, match="not in the exit profile"):
        policy.start(["lidar"])


def test_lambda_changes_plan_and_coupled_thresholds():
    policy = Policy(_profile(), PolicySettings(lam=1.0, threshold_coupling=1.0))
    policy.set_lambda(0.5)
    assert policy.thresholds["image"] == pytest.approx(0.6)
    policy.set_lambda(0.1)
    cheap = policy.plan(["image", "audio"])
    policy.set_lambda(500.0)
    rich = policy.plan(["image", "audio"])
    assert cheap.order == ("image",) and cheap.skipped == ("audio",)
    assert rich.order == ("image", "audio") and rich.skipped == ()


def test_advance_is_observe_then_decide():
    a, b = Policy(_profile()), Policy(_profile())
    sa, sb = a.start(["image", "audio"]), b.start(["image", "audio"])
    first = a.decide(sa)
    assert b.decide(sb) == first and first.kind is ActionKind.CONTINUE
    got = a.advance(sa, first.modality, first.exit_index, UNSURE.tolist())
    b.observe(sb, first.modality, first.exit_index, UNSURE)
    assert got == b.decide(sb)


def test_plans_are_cached_per_lambda_band():
    policy = Policy(_profile(), PolicySettings(lam=1.0))
    first = policy.plan(["image", "audio"])
    policy.set_lambda(1.01)  # same 5 % band: the cached plan, made at the band's centre
    assert policy.plan(["image", "audio"]) is first and first.lam == pytest.approx(1.0)
    policy.set_lambda(1.2)  # another band: planned afresh near the new lambda
    moved = policy.plan(["image", "audio"])
    assert moved is not first and moved.lam == pytest.approx(1.2, rel=0.03)
    policy.set_lambda(0.99)  # back to the first band: found in the cache
    assert policy.plan(["image", "audio"]) is first


def _fused_walk(policy: Policy, probs_for, fused_probs) -> list[tuple]:
    state = policy.start(["image", "audio"], [])
    steps = []
    while True:
        action = policy.decide(state)
        steps.append((action.kind.value, action.modality, action.exit_index, action.modalities))
        if action.kind is ActionKind.CONTINUE:
            policy.observe(state, action.modality, action.exit_index, probs_for(action.modality, action.exit_index))
        elif action.kind is ActionKind.CHECK:
            policy.observe_fusion(state, fused_probs(state.exits_done))
        else:
            return steps


def test_fused_checks_follow_each_exit_once_two_modalities_ran_and_stop_the_walk():
    profile = _profile()
    profile = Profile(exits={m: profile.exits[m] for m in ("image", "audio")}, fusion=profile.fusion[1:2],
                      thresholds={"image": 0.3, "audio": 0.3, "fusion": 0.3})
    policy = Policy(profile, PolicySettings(lam=10.0, skip_negative=False))
    assert policy.fusion_checks
    # nothing confident: a check after each audio exit but the last (the final fusion is that head)
    steps = _fused_walk(policy, lambda m, j: UNSURE, lambda done: UNSURE)
    kinds = [s[0] for s in steps]
    assert kinds == ["continue", "continue", "continue", "check", "continue", "fuse"]
    assert steps[3][3] == ("image", "audio")
    # the fused check after audio exit 0 is sure: the walk ends with that fusion
    sure_at_audio0 = lambda done: SURE if done.get("audio") == 1 else UNSURE  # noqa: E731
    steps = _fused_walk(policy, lambda m, j: UNSURE, sure_at_audio0)
    assert [s[0] for s in steps] == ["continue", "continue", "continue", "check", "fuse"]
    # without a fusion threshold there are no checks (the ViT family's walk is unchanged)
    plain = Policy(_profile(), PolicySettings(lam=10.0, skip_negative=False))
    assert not plain.fusion_checks
    with pytest.raises(SchedulerError, match="without fused checks"):
        plain.observe_fusion(plain.start(["image", "audio"], []), SURE)
