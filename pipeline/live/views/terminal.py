"""The live terminal view (rich): the most important figures first, fitted to the terminal.

:func:`render` turns :meth:`PipelineDriver.snapshot` into rich renderables (pure, testable). Sections
in order of importance: an overview (decisions, failures, energy against the budget, lambda,
end-to-end latency), power and budget, latency per stage, exits per modality, sources, then the
sync and engine details. Given a terminal ``height``, whole sections are kept from the top while
they fit and the rest is replaced by one line naming what was left out, so a 100x24 terminal
shows power, budget and latency first; without a height every section is shown.
:class:`LiveView` refreshes it in place at the terminal's size while the pipeline runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from exitflow.pipeline.live.core.overload import overload_text

STATE_STYLE = {
    "connected": "green",
    "connecting": "yellow",
    "reconnecting": "yellow",
    "failed": "red",
    "finished": "dim",
}
DRIVER_STAGES = ("end_to_end", "engine_call", "sync", "queue", "source")  # most telling first


def _fmt_counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"


def _table(title: str, *columns: str, header: bool = True) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", expand=True, box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False, show_edge=False, show_header=header)
    for col in columns:
        table.add_column(col, overflow="ellipsis", no_wrap=True)
    return table


def _energy_text(snap: dict[str, Any]) -> str:
    energy = snap.get("energy_mj_mean")
    if energy is None:
        return "-"
    est = " (estimated)" if snap.get("estimated") else ""
    return f"{energy:.2f} mJ from {snap.get('energy_source') or '-'}{est}"


def _budget_text(snap: dict[str, Any]) -> str:
    return _fmt_counts({k: v for k, v in (snap.get("budget") or {}).items() if v is not None})


def overview(snap: dict[str, Any]) -> ConsoleRenderable:
    """Two lines: throughput, failures and lambda; end-to-end latency, sources up, drops (and a third
    naming a source clock off by more than the slop)."""
    decisions = snap.get("decisions_total", snap.get("decisions", 0))
    failed = snap.get("failed_decisions", snap.get("failed", 0))
    e2e = (snap.get("latency_ms") or {}).get("end_to_end")
    lam = snap.get("lam")
    sources = snap.get("sources", {})
    up = sum(1 for s in sources.values() if s.get("state", s.get("actor")) in ("connected", "alive"))
    drops = sum(sum(v.values()) for v in (snap.get("drops") or {}).values() if isinstance(v, dict))
    line1 = Text.assemble(
        ("exitflow live  ", "bold"), f"decisions {decisions}  ",
        (f"failed {failed}", "red" if failed else "green"),
        f"  lambda {'-' if lam is None else f'{lam:.4g}'}  sources up {up}/{len(sources)}",
    )
    line2 = Text(
        "end-to-end " + ("-" if not e2e else f"p50 {e2e['p50']:.1f} / p95 {e2e['p95']:.1f} / p99 {e2e['p99']:.1f} ms")
        + f"  in flight {snap.get('in_flight', 0)}  drops {drops}",
        overflow="ellipsis", no_wrap=True,
    )
    acc = snap.get("accuracy") or {}
    if acc.get("labelled"):  # labels arrive (a label topic, a labelled replay)
        line1.append(f"  accuracy {acc['accuracy']:.3f} ({acc['correct']}/{acc['labelled']})")
    lines = [line1, line2]
    over = snap.get("overload") or {}
    if over.get("overloaded"):  # a line only while samples are being shed
        lines.append(Text(overload_text(over), style="red", overflow="ellipsis", no_wrap=True))
    skewed = clock_warning(snap)
    if skewed:  # a line only while a clock is off
        lines.append(Text(skewed, style="yellow", overflow="ellipsis", no_wrap=True))
    return Group(*lines)


def clock_warning(snap: dict[str, Any]) -> str:
    """``"clock off: cam +3600.0 s"`` for sources whose clock is off by more than the slop (corrected)."""
    names = snap.get("clock_skewed") or []
    if not names:
        return ""
    sources = snap.get("sources", {})
    worst = max(names, key=lambda n: abs(sources.get(n, {}).get("clock", {}).get("skew_ms", 0.0)))
    skew_s = sources.get(worst, {}).get("clock", {}).get("skew_ms", 0.0) / 1e3
    more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
    return f"clock off: {worst} {skew_s:+.3f} s{more}, corrected"


def power_section(snap: dict[str, Any]) -> ConsoleRenderable:
    power = _table("power and budget", "what", "value", header=False)
    power.add_row("energy per sample", _energy_text(snap))
    power.add_row("budget", _budget_text(snap))
    power.add_row("lambda", "-" if snap.get("lam") is None else f"{snap['lam']:.4g}")
    if snap.get("budget_note"):
        power.add_row("budget note", str(snap["budget_note"]))
    if snap.get("recalibration"):
        power.add_row("recalibration", _recalibration_text(snap["recalibration"]))
    return power


def _recalibration_text(recal: dict[str, Any]) -> str:
    """``disagreement 0.021 (target 0.005) over 94 shadowed, shadow 3 %, fusion 0.14``."""
    measured = recal.get("measured_disagreement")
    held = ", held by the budget" if recal.get("held_by_budget") else ""
    thresholds = ", ".join(f"{k} {v:.3g}" for k, v in (recal.get("thresholds") or {}).items())
    return (f"disagreement {'-' if measured is None else f'{measured:.3f}'} (target {recal['target_disagreement']:g}) "
            f"over {recal.get('shadowed', 0)} shadowed, shadow {100 * recal['shadow_share']:.0f} %{held}; {thresholds}")


def latency_section(snap: dict[str, Any]) -> ConsoleRenderable:
    latency = _table("latency (ms)", "stage", "p50", "p95", "p99", "n")
    stages = snap.get("latency_ms", {})
    order = [s for s in DRIVER_STAGES if s in stages] + [s for s in stages if s not in DRIVER_STAGES]
    for stage in order:
        p = stages[stage]
        latency.add_row(stage, f"{p['p50']:.1f}", f"{p['p95']:.1f}", f"{p['p99']:.1f}", str(p["n"]))
    return latency


def exits_section(snap: dict[str, Any]) -> ConsoleRenderable:
    exits = _table("exits per modality", "modality", "histogram (exit: count)", "skipped", "missing")
    modalities = sorted(set(snap.get("exits", {})) | set(snap.get("missing", {})) | set(snap.get("skipped", {})))
    for m in modalities:
        hist = snap.get("exits", {}).get(m, {})
        total = max(1, sum(hist.values()))
        bars = "  ".join(f"{k}:{v} {'#' * max(1, round(10 * v / total))}" for k, v in sorted(hist.items()))
        exits.add_row(m, bars or "-", str(snap.get("skipped", {}).get(m, 0)), str(snap.get("missing", {}).get(m, 0)))
    return exits


def sources_section(snap: dict[str, Any]) -> ConsoleRenderable:
    sources = _table("sources", "source", "modality", "state", "fps", "msgs", "reconnects", "restarts",
                     "drops", "last error")
    for name, s in snap.get("sources", {}).items():
        state = s.get("state", s.get("actor", "?"))
        if s.get("actor") == "restarting":
            state = "actor restarting"
        drops = dict(s.get("dropped", {}))
        for reason, n in s.get("queue", {}).get("dropped", {}).items():
            drops[f"queue:{reason}"] = n
        sources.add_row(
            name, str(s.get("modality", "?")), f"[{STATE_STYLE.get(state, 'yellow')}]{state}[/]",
            f"{s.get('fps', 0.0):.1f}", str(s.get("messages", 0)), str(s.get("reconnects", 0)),
            str(s.get("actor_restarts", 0)), _fmt_counts(drops), (s.get("last_error") or "")[:60],
        )
    return sources


def flow_section(snap: dict[str, Any]) -> ConsoleRenderable:
    sync = snap.get("sync", {})
    flow = _table("sync and engine", "what", "value", header=False)
    flow.add_row("samples emitted / decisions", f"{sync.get('emitted', 0)} / {snap.get('decisions', 0)}")
    flow.add_row("sync drops", _fmt_counts(sync.get("dropped", {})))
    flow.add_row("unmatched", _fmt_counts(sync.get("unmatched", {})))
    clocks = {n: s["clock"] for n, s in snap.get("sources", {}).items() if "clock" in s}
    if clocks:
        flow.add_row("clock skew (ms)", _fmt_counts({n: f"{c['skew_ms']:+.1f}" for n, c in clocks.items()}))
    flow.add_row("missing", "; ".join(f"{m}: {_fmt_counts(r)}" for m, r in sync.get("missing", {}).items()) or "-")
    q = snap.get("engine_queue", {})
    flow.add_row(
        "engine queue",
        f"{q.get('size', 0)}/{q.get('maxsize', '?')} ({q.get('policy', '?')}), "
        f"drops {_fmt_counts(q.get('dropped', {}))}, in flight {snap.get('in_flight', 0)}",
    )
    flow.add_row("engine drops", "; ".join(f"{k}: {_fmt_counts(v)}" for k, v in snap.get("drops", {}).items()) or "-")
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
    return flow


SECTIONS: tuple[tuple[str, Callable[[dict[str, Any]], ConsoleRenderable]], ...] = (
    ("overview", overview),
    ("power", power_section),
    ("latency", latency_section),
    ("exits", exits_section),
    ("sources", sources_section),
    ("sync/engine", flow_section),
)


def render(snap: dict[str, Any], height: int | None = None, width: int = 100) -> Group:
    """Rich renderable of one snapshot: every section, or (with ``height``) those that fit, in order.

    Args:
        snap: :meth:`PipelineDriver.snapshot` (or :meth:`LiveStats.summary` plus extras).
        height: Terminal lines available; None shows everything.
        width: Terminal columns (to measure how many lines each section takes).
    """
    parts = [(name, build(snap)) for name, build in SECTIONS]
    if height is None:
        return Group(*(r for _, r in parts))
    measure = Console(width=width, height=height, color_system=None, force_terminal=False)
    kept: list[ConsoleRenderable] = []
    used = 0
    for i, (_, renderable) in enumerate(parts):
        lines = len(measure.render_lines(renderable, measure.options, pad=False))
        rest = [n for n, _ in parts[i + 1 :]]
        reserve = 1 if rest else 0  # the "not shown" line
        if used + lines + reserve > height:
            left = [n for n, _ in parts[i:]]
            kept.append(Text(f"(not shown at this size: {', '.join(left)}; enlarge the terminal)",
                             style="dim", overflow="ellipsis", no_wrap=True))
            break
        kept.append(renderable)
        used += lines
    return Group(*kept)


class LiveView:
    """Refreshes :func:`render` in place at the terminal's size; a context manager with :meth:`update`."""

    def __init__(self, console: Console | None = None, refresh_per_second: float = 4.0):
        self.console = console or Console()
        self._live = Live(console=self.console, refresh_per_second=refresh_per_second, transient=False)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def update(self, snap: dict[str, Any]) -> None:
        width, height = self.console.size
        self._live.update(render(snap, height=max(3, height - 1), width=width))
