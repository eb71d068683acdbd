"""A budget below the cheapest plan is said in the live statistics and the live view."""

from __future__ import annotations

from rich.console import Console

from exitflow.pipeline.live.core.stats import LiveStats
from exitflow.pipeline.live.views.terminal import render
from exitflow.pipeline.messages import Decision

NOTE = "budget below the cheapest plan: running the cheapest exit only"


def test_the_latest_budget_note_reaches_the_view() -> None:
    stats = LiveStats()
    stats.observe_decision(Decision(sample_id=1, prediction=3, system="exitflow", budget_note=NOTE))
    summary = stats.summary()
    assert summary["budget_note"] == NOTE
    console = Console(width=100, record=True)
    console.print(render(summary))
    assert "cheapest plan" in console.export_text()
    stats.observe_decision(Decision(sample_id=2, prediction=3, system="exitflow"))
    assert stats.summary()["budget_note"] is None  # the budget is reachable again
