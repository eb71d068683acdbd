"""Attributable vs idle energy in decisions, budgets on attributable energy, budgets set while running."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace

import pytest

from exitflow.pipeline.inference.engine import Engine, cheapest_plan_mj
from exitflow.scheduler.policy import Policy
from tests.pipeline.test_engine import _parts, _profile, _sample


@dataclass
class SplitMeasurement:
    energy_mj: float | None
    dynamic_energy_mj: float | None
    idle_energy_mj: float | None
    duration_s: float = 1e-3
    source: str = "fake"
    estimated: bool = True


class SplitMeter:
    """Every window: 1 mJ in total, of which 0.25 mJ is attributable to the work."""

    def __init__(self, dynamic: bool = True):
        self.dynamic = dynamic

    def begin_window(self, name: str) -> None:
        pass

    def end_window(self, name: str) -> SplitMeasurement:
        return SplitMeasurement(1.0, 0.25 if self.dynamic else None, 0.75 if self.dynamic else None)


def test_decisions_carry_total_dynamic_and_idle_energy() -> None:
    encoders, fusion = _parts()
    d = Engine(encoders, fusion, Policy(_profile()), meter=SplitMeter()).process(_sample(0))
    windows = len(d.latency_ms) - 2  # one window per step and fusion; latency also has policy and total
    assert d.energy_mj == pytest.approx(4 * d.dynamic_energy_mj)
    assert d.idle_energy_mj == pytest.approx(d.energy_mj - d.dynamic_energy_mj)
    assert windows >= 1


def test_budget_controls_attributable_energy_by_default_and_total_when_asked() -> None:
    encoders, fusion = _parts()
    dyn = Engine(encoders, fusion, Policy(_profile()), meter=SplitMeter())
    tot = Engine(encoders, fusion, Policy(_profile()), meter=SplitMeter(), budget_energy="total")
    d1, d2 = dyn.process(_sample(0)), tot.process(_sample(0))
    assert dyn.budget_energy(d1) == pytest.approx(d1.dynamic_energy_mj)
    assert tot.budget_energy(d2) == pytest.approx(d2.energy_mj)
    uncalibrated = Engine(encoders, fusion, Policy(_profile()), meter=SplitMeter(dynamic=False))
    d3 = uncalibrated.process(_sample(0))
    assert uncalibrated.budget_energy(d3) == pytest.approx(d3.energy_mj)  # falls back to total, says so once


def test_a_budget_can_be_set_on_an_engine_started_without_one_and_removed() -> None:
    encoders, fusion = _parts()
    engine = Engine(encoders, fusion, Policy(_profile()), meter=SplitMeter())
    assert engine.budget is None
    assert engine.set_budget(mj_per_sample=100.0)["mj_per_sample"] == 100.0
    assert engine.budget is not None
    lam_before = engine.policy.lam
    for i in range(5):
        engine.process(_sample(i))
    assert engine.policy.lam > lam_before  # far under budget: the controller raises lambda (spends more)
    assert engine.set_budget() == {"mode": "off"}
    assert engine.budget is None


def test_cheapest_plan_is_compared_only_in_the_energy_kind_the_profile_measured() -> None:
    assert cheapest_plan_mj(_profile(), "dynamic") == pytest.approx(2.0)
    assert cheapest_plan_mj(_profile(), "total") is None
    assert cheapest_plan_mj(replace(_profile(), energy_source="old profile"), "dynamic") is None


def test_budget_below_the_cheapest_plan_is_said_in_the_decision() -> None:
    encoders, fusion = _parts()
    engine = Engine(encoders, fusion, Policy(_profile()), meter=SplitMeter(), cheapest_mj=2.0)
    with pytest.warns(UserWarning, match="cheapest"):
        engine.set_budget(mj_per_sample=0.01)
    d = engine.process(_sample(0))
    assert d.budget_note is not None and "cheapest" in d.budget_note


def test_devices_json_names_the_host_and_a_zeus_entry() -> None:
    res = subprocess.run([sys.executable, "-m", "exitflow.pipeline.cli", "devices", "--json"],
                         capture_output=True, text=True, timeout=120)
    report = json.loads(res.stdout)
    assert report["host"]["host"]["model_name"]
    assert report["host"]["assumptions"]
    zeus = next(m for m in report["meters"] if m["name"] == "zeus")
    assert zeus["available"] or zeus["detail"]


def test_budget_set_arguments_are_checked_before_ray_is_touched() -> None:
    from exitflow.pipeline.config import RayConfig
    from exitflow.pipeline.live.core.failures import LiveRuntimeError
    from exitflow.pipeline.live.run import set_running_budget

    for kwargs in ({"mj_per_sample": None, "power_w": None},
                   {"mj_per_sample": float("nan"), "power_w": None},
                   {"mj_per_sample": -1.0, "power_w": None},
                   {"mj_per_sample": 5.0, "power_w": None, "off": True}):
        with pytest.raises(LiveRuntimeError):
            set_running_budget(RayConfig(), **kwargs)


def test_the_engine_system_takes_a_budget_and_removes_it() -> None:
    from exitflow.pipeline.inference.adaptive_systems import EngineSystem

    encoders, fusion = _parts()
    system = EngineSystem("exitflow", Engine(encoders, fusion, Policy(_profile()), meter=SplitMeter()), ("image",))
    assert system.set_budget(mj_per_sample=3.0)["mj_per_sample"] == 3.0
    assert system.set_budget() == {"mode": "off"} and system.engine.budget is None
