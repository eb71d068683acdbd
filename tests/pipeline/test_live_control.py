"""``exitflow budget set`` on the local runtime: the control socket of a running pipeline (issue 26 item 6)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from exitflow.pipeline.config import SourceConfig, StreamConfig, load_config
from exitflow.pipeline.live.core.failures import LiveRuntimeError
from exitflow.pipeline.live.run import run_live, set_running_budget
from exitflow.pipeline.live.runtime.control import ControlServer, running_pipelines, send_budget
from exitflow.pipeline.messages import Decision, Sample


class BudgetEcho:
    """Predicts the budget in force (mJ per sample), -1 without one: decisions show when it changed."""

    def __init__(self) -> None:
        self.mj_per_sample: float | None = None

    def process(self, sample: Sample) -> Decision:
        budget = -1 if self.mj_per_sample is None else int(self.mj_per_sample)
        return Decision(sample_id=sample.sample_id, prediction=budget, system="echo", timestamp_ns=sample.timestamp_ns)

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> None:
        self.mj_per_sample = mj_per_sample


def test_budget_set_changes_a_running_local_pipeline_within_2_s(tmp_path, monkeypatch):
    monkeypatch.setenv("EXITFLOW_HOME", str(tmp_path / "home"))
    words = tmp_path / "words.txt"
    words.write_text("".join(f"word {i}\n" for i in range(50)))
    cfg = load_config()
    stream = StreamConfig(runtime="local", live_view=False, trigger="text", sources=(
        SourceConfig(name="words", kind="text_file", uri=str(words), loop=True, line_rate_hz=50.0, max_rate_hz=None),))
    cfg = dataclasses.replace(cfg, stream=stream)
    decisions: list[tuple[float, int]] = []
    stop = threading.Event()
    result: dict = {}

    def main() -> None:
        result["snap"] = run_live(cfg, view=False, engine_factory=BudgetEcho, stop=stop, duration_s=60,
                                  on_decision=lambda d: decisions.append((time.monotonic(), d.prediction)))

    runner = threading.Thread(target=main, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not (decisions and running_pipelines(cfg.ray.namespace)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert decisions and decisions[-1][1] == -1, "the pipeline did not start deciding"
        asked = time.monotonic()
        assert set_running_budget(cfg.ray, 7.0, None) == {"mj_per_sample": 7.0, "power_w": None}
        while not any(t > asked and p == 7 for t, p in decisions) and time.monotonic() < asked + 2.0:
            time.sleep(0.01)
        first = next((t for t, p in decisions if t > asked and p == 7), None)
        assert first is not None and first - asked < 2.0, "no decision under the new budget within 2 s"
        assert set_running_budget(cfg.ray, None, None, off=True) == {"mj_per_sample": None, "power_w": None}
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive() and result["snap"]["budget"] == {"mj_per_sample": None, "power_w": None}
    assert running_pipelines(cfg.ray.namespace) == []  # the discovery file went with the run


def test_the_control_socket_refuses_a_wrong_token_and_reports_the_engines_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EXITFLOW_HOME", str(tmp_path))

    def refuse(mj: float | None, power: float | None) -> dict:
        raise LiveRuntimeError("engine X has no energy budget")

    server = ControlServer(refuse, "ns")
    try:
        [record] = running_pipelines("ns")
        with pytest.raises(LiveRuntimeError, match="has no energy budget"):
            send_budget(record, 1.0, None)
        with pytest.raises(LiveRuntimeError, match="wrong token"):
            send_budget({**record, "token": "guess"}, 1.0, None)
        assert (server.path.stat().st_mode & 0o777) == 0o600
    finally:
        server.close()
    assert running_pipelines("ns") == []
