"""``scheduler.prior`` picks the prior policy; a prior the profile lacks is a clear error; the compiled walk refuses it."""

from __future__ import annotations

import dataclasses

import pytest

from exitflow.pipeline.inference.engine import EngineError, policy_from_config
from exitflow.scheduler.policy import Policy
from exitflow.scheduler.prior import PriorPolicy


def _sched(parts, **kw):
    return dataclasses.replace(parts.cfg.scheduler, **kw)


def test_prior_from_config(parts) -> None:
    assert type(policy_from_config(parts.profile, parts.cfg.scheduler)) is Policy
    policy = policy_from_config(parts.profile, _sched(parts, prior="image", prior_exit=1))
    assert isinstance(policy, PriorPolicy) and (policy.prior, policy.prior_exit) == ("image", 1)


def test_unknown_prior_is_a_clear_error(parts) -> None:
    with pytest.raises(EngineError, match="scheduler.prior: prior modality 'text'"):
        policy_from_config(parts.profile, _sched(parts, prior="text"))
    with pytest.raises(EngineError, match="prior_exit"):
        policy_from_config(parts.profile, _sched(parts, prior="image", prior_exit=9))


def test_the_compiled_walk_refuses_a_prior(parts) -> None:
    cfg = dataclasses.replace(parts.cfg, scheduler=_sched(parts, prior="image"))
    stub = type(parts).__new__(type(parts))
    stub.cfg, stub.device, stub.encoders, stub.fusion, stub.profile = cfg, parts.device, parts.encoders, parts.fusion, parts.profile
    assert "prior" in stub.fast_path_refusal()
