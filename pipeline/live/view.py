"""The live terminal view (rich): sources, drops, exits, power and budget, latency percentiles.

:func:`render` turns :meth:`LivePipeline.snapshot` into rich tables (pure, testable);
:class:`LiveView` refreshes them in place while the pipeline runs.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

STATE_STYLE = {
    "connected": "green",
    "connecting": "yellow",
    "reconnecting": "yellow",
    "failed": "red",
    "finished": "dim",
}


def _fmt_counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"


def render(snap: dict[str, Any]) -> Group:
    """Rich renderable of one pipeline snapshot."""
    sources = Table(title="sources", expand=True)
    for col in (
        "source",
        "modality",
        "state",
        "fps",
        "msgs",
        "reconnects",
        "restarts",
        "drops",
        "last error",
    ):
        sources.add_column(col)
    for name, s in snap.get("sources", {}).items():
        state = s.get("state", s.get("actor", "?"))
        if s.get("actor") == "restarting":
            state = "actor restarting"
        drops = dict(s.get("dropped", {}))
        for reason, n in s.get("queue", {}).get("dropped", {}).items():
            drops[f"queue:{reason}"] = n
        sources.add_row(
            name,
            str(s.get("modality", "?")),
            f"[{STATE_STYLE.get(state, 'yellow')}]{state}[/]",
            f"{s.get('fps', 0.0):.1f}",
            str(s.get("messages", 0)),
            str(s.get("reconnects", 0)),
            str(s.get("actor_restarts", 0)),
            _fmt_counts(drops),
            (s.get("last_error") or "")[:60],
        )

    sync = snap.get("sync", {})
    flow = Table(title="sync and engine", expand=True)
    flow.add_column("what")
    flow.add_column("value")
    flow.add_row("samples emitted / decisions", f"{sync.get('emitted', 0)} / {snap.get('decisions', 0)}")
    flow.add_row("sync drops", _fmt_counts(sync.get("dropped", {})))
    flow.add_row("unmatched", _fmt_counts(sync.get("unmatched", {})))
    flow.add_row(
        "missing", "; ".join(f"{m}: {_fmt_counts(r)}" for m, r in sync.get("missing", {}).items()) or "-"
    )
    q = snap.get("engine_queue", {})
    flow.add_row(
        "engine queue",
        f"{q.get('size', 0)}/{q.get('maxsize', '?')} ({q.get('policy', '?')}), "
        f"drops {_fmt_counts(q.get('dropped', {}))}, in flight {snap.get('in_flight', 0)}",
    )
    flow.add_row(
        "engine drops", "; ".join(f"{k}: {_fmt_counts(v)}" for k, v in snap.get("drops", {}).items()) or "-"
    )
    flow.add_row(
        "failed samples",
        f"{snap.get('failed', 0)} ({_fmt_counts(snap.get('failures', {}))})" if snap.get("failed") else "0",
    )
    if snap.get("preprocess_drops"):
        flow.add_row("preprocess drops", _fmt_counts(snap["preprocess_drops"]))
    if snap.get("outage_events"):
        flow.add_row("outages", _fmt_counts(snap["outage_events"]))
        flow.add_row("last outages", "; ".join(snap.get("recent_outages", [])[-3:])[:120])
    if snap.get("last_engine_error"):
        flow.add_row("last engine error", str(snap["last_engine_error"])[:80])

    exits = Table(title="exits per modality", expand=True)
    exits.add_column("modality")
    exits.add_column("histogram (exit: count)")
    exits.add_column("skipped")
    exits.add_column("missing")
    modalities = sorted(
        set(snap.get("exits", {})) | set(snap.get("missing", {})) | set(snap.get("skipped", {}))
    )
    for m in modalities:
        hist = snap.get("exits", {}).get(m, {})
        total = max(1, sum(hist.values()))
        bars = "  ".join(f"{k}:{v} {'#' * max(1, round(10 * v / total))}" for k, v in sorted(hist.items()))
        exits.add_row(
            m, bars or "-", str(snap.get("skipped", {}).get(m, 0)), str(snap.get("missing", {}).get(m, 0))
        )

    power = Table(title="power and budget", expand=True)
    power.add_column("what")
    power.add_column("value")
    energy = snap.get("energy_mj_mean")
    source = snap.get("energy_source") or "-"
    est = " (estimated)" if snap.get("estimated") else ""
    power.add_row("energy per sample", "-" if energy is None else f"{energy:.2f} mJ from {source}{est}")
    power.add_row("budget", _fmt_counts({k: v for k, v in snap.get("budget", {}).items() if v is not None}))
    power.add_row("lambda", "-" if snap.get("lam") is None else f"{snap['lam']:.4g}")
    if snap.get("budget_note"):
        power.add_row("budget note", str(snap["budget_note"]))

    latency = Table(title="latency (ms)", expand=True)
    for col in ("stage", "p50", "p95", "p99", "n"):
        latency.add_column(col)
    for stage, p in snap.get("latency_ms", {}).items():
        latency.add_row(stage, f"{p['p50']:.1f}", f"{p['p95']:.1f}", f"{p['p99']:.1f}", str(p["n"]))
    return Group(sources, flow, exits, power, latency)


class LiveView:
    """Refreshes :func:`render` in place; use as a context manager and call :meth:`update`."""

    def __init__(self, console: Console | None = None, refresh_per_second: float = 4.0):
        self.console = console or Console()
        self._live = Live(console=self.console, refresh_per_second=refresh_per_second, transient=False)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def update(self, snap: dict[str, Any]) -> None:
        self._live.update(render(snap))
