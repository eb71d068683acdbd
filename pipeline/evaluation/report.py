"""Plots of a run people look at: ``exitflow report RUN.mcap [bench.json] --out DIR``.

Four PNGs:

* ``exits.png``: how often each exit was taken, one panel per modality (``/decisions``);
* ``budget.png``: the energy budget's set-point (``/status``) against the running average of the
  energy per sample (``/decisions``, window ``window_s``), with every sample faint behind;
* ``latency.png``: p50 / p95 / p99 per stage: the engine's stages from every decision, the
  driver's (source, sync, queue, engine call, end to end) from the last ``/status``;
* ``pareto.png``: accuracy against MACs and against mJ per sample, one point per system of a
  ``bench.json`` with the Pareto front drawn; a recording without labels (a live run) has no
  accuracy, so from a recording alone it shows the cost of each decision (MACs against mJ)
  and says so in its title.

Loading (:func:`load_run`, :func:`load_bench`) is apart from drawing (``plot_*``), which takes
plain lists, so the figures can be drawn from other sources too.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exitflow.pipeline.errors import DataError

PLOTS = ("exits", "budget", "latency", "pareto")


@dataclass
class RunSeries:
    """What the plots need from one recording (times in seconds since its first decision or status)."""

    name: str
    exits: dict[str, Counter[int]] = field(default_factory=dict)  # modality -> exit index -> n
    energy_t_s: list[float] = field(default_factory=list)
    energy_mj: list[float] = field(default_factory=list)
    energy_source: str | None = None
    estimated: bool | None = None
    budget_t_s: list[float] = field(default_factory=list)
    budget_mj: list[float | None] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)  # engine stages, from decisions
    driver_latency: dict[str, dict[str, float]] = field(default_factory=dict)  # last /status
    macs: list[int] = field(default_factory=list)
    macs_mj: list[float] = field(default_factory=list)
    correct: int = 0
    labelled: int = 0
    decisions: int = 0


def load_run(path: str | Path) -> RunSeries:
    """Stream ``/decisions`` and ``/status`` of a recording into a :class:`RunSeries`.

    Raises:
        DataError: when the recording holds no decisions.
    """
    from exitflow.pipeline.live.recording.reader import read_recording

    run = RunSeries(Path(path).stem)
    t0: int | None = None
    for event in read_recording(path, topics=["/decisions", "/status"]):
        t0 = event.log_time_ns if t0 is None else t0
        t_s = (event.log_time_ns - t0) / 1e9
        if event.decision is not None:
            d = event.decision
            if d.get("error"):
                continue
            run.decisions += 1
            for m, e in (d.get("exits") or {}).items():
                run.exits.setdefault(m, Counter())[int(e)] += 1
            if d.get("energy_mj") is not None:
                run.energy_t_s.append(t_s)
                run.energy_mj.append(float(d["energy_mj"]))
                run.energy_source, run.estimated = d.get("energy_source"), d.get("estimated")
                if d.get("macs"):
                    run.macs.append(int(d["macs"]))
                    run.macs_mj.append(float(d["energy_mj"]))
            for stage, ms in (d.get("latency_ms") or {}).items():
                if isinstance(ms, (int, float)):
                    run.stage_ms.setdefault(stage, []).append(float(ms))
            if d.get("label") is not None:
                run.labelled += 1
                run.correct += int(d.get("prediction") == d.get("label"))
        elif event.record is not None and event.topic == "/status":
            run.budget_t_s.append(t_s)
            run.budget_mj.append(event.record.get("budget_mj_per_sample"))
            if event.record.get("latency_ms"):
                run.driver_latency = event.record["latency_ms"]
    if run.decisions == 0:
        raise DataError(f"{path} holds no decisions to plot; record a run with `exitflow record OUT.mcap`")
    return run


def load_bench(path: str | Path) -> list[dict[str, Any]]:
    """The systems of a ``bench.json`` (a list of rows with ``system``, ``accuracy``,
    ``macs_per_sample``, ``mj_per_sample``; or an object holding such a list).

    Raises:
        DataError: when the file is not such a JSON.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read bench results {path}: {e}") from e
    rows = data if isinstance(data, list) else next(
        (v for v in data.values() if isinstance(v, list)), []) if isinstance(data, dict) else []
    rows = [r for r in rows if isinstance(r, dict) and "system" in r and r.get("accuracy") is not None]
    if not rows:
        raise DataError(f"{path} has no rows with system and accuracy (the output of `exitflow eval bench`)")
    return rows


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_exits(exits: dict[str, Counter[int]], out: Path, title: str = "") -> Path:
    plt = _plt()
    modalities = sorted(exits) or ["(none)"]
    fig, axes = plt.subplots(1, len(modalities), figsize=(3.2 * len(modalities) + 1, 3.2), squeeze=False)
    for ax, m in zip(axes[0], modalities, strict=True):
        counts = exits.get(m, Counter())
        xs = sorted(counts)
        ax.bar([str(x) for x in xs], [counts[x] for x in xs], color="#4c72b0")
        ax.set_title(f"{m} ({sum(counts.values())} samples)")
        ax.set_xlabel("exit taken")
        ax.set_ylabel("samples")
    fig.suptitle(f"Exits per modality{': ' + title if title else ''}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def running_mean(t_s: list[float], values: list[float], window_s: float) -> list[float]:
    """Mean of ``values`` over the trailing ``window_s`` seconds at each point (``t_s`` ascending)."""
    t, v = np.asarray(t_s, float), np.asarray(values, float)
    csum = np.concatenate([[0.0], np.cumsum(v)])
    lo = np.searchsorted(t, t - window_s, side="left")
    idx = np.arange(len(v))
    return list((csum[idx + 1] - csum[lo]) / (idx + 1 - lo))


def plot_budget(run: RunSeries, out: Path, window_s: float = 5.0) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if run.energy_mj:
        ax.scatter(run.energy_t_s, run.energy_mj, s=6, alpha=0.25, color="#888888", label="per sample")
        ax.plot(run.energy_t_s, running_mean(run.energy_t_s, run.energy_mj, window_s), color="#4c72b0",
                label=f"running average ({window_s:g} s)")
    points = [(t, b) for t, b in zip(run.budget_t_s, run.budget_mj, strict=True) if b is not None]
    if points:
        ax.step([t for t, _ in points], [b for _, b in points], where="post", color="#c44e52", label="budget set-point")
    source = run.energy_source or "no meter"
    est = " (estimated)" if run.estimated else ""
    ax.set_title(f"Energy per sample vs budget: {source}{est}" + ("" if points else "; no budget was set"))
    ax.set_xlabel("time since the first decision or status record (s)")
    ax.set_ylabel("mJ per sample")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def latency_table(run: RunSeries) -> dict[str, tuple[float, float, float, int]]:
    """Stage -> (p50, p95, p99, n): engine stages from decisions, driver stages from the last status."""
    table = {}
    for stage, values in sorted(run.stage_ms.items()):
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        table[stage] = (float(p50), float(p95), float(p99), len(values))
    for stage, p in run.driver_latency.items():
        if isinstance(p, dict) and {"p50", "p95", "p99"} <= set(p) and stage not in table:
            table[stage] = (float(p["p50"]), float(p["p95"]), float(p["p99"]), int(p.get("n", 0)))
    return table


def plot_latency(run: RunSeries, out: Path) -> Path:
    plt = _plt()
    table = latency_table(run)
    stages = list(table) or ["(none)"]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(stages) + 2), 4))
    x = np.arange(len(stages))
    for i, (label, color) in enumerate((("p50", "#4c72b0"), ("p95", "#dd8452"), ("p99", "#c44e52"))):
        ax.bar(x + (i - 1) * 0.27, [table[s][i] if s in table else 0 for s in stages], 0.27, label=label, color=color)
    ax.set_xticks(x, stages, rotation=45, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("Latency percentiles per stage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost x, higher or equal accuracy y)."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i]))
    front, best = [], -np.inf
    for i in order:
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    return front


def plot_pareto(bench: list[dict[str, Any]] | None, run: RunSeries | None, out: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if bench:
        for ax, key, label in ((axes[0], "macs_per_sample", "MACs per sample"),
                               (axes[1], "mj_per_sample", "mJ per sample")):
            rows = [r for r in bench if r.get(key) is not None]
            xs = [float(r[key]) for r in rows]
            ys = [float(r["accuracy"]) for r in rows]
            ax.scatter(xs, ys, color="#4c72b0")
            for r, x, y in zip(rows, xs, ys, strict=True):
                ax.annotate(str(r["system"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            front = pareto_front(xs, ys)
            ax.plot([xs[i] for i in front], [ys[i] for i in front], color="#c44e52", lw=1, label="Pareto front")
            ax.set_xscale("log")
            ax.set_xlabel(label + " (log)")
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=8)
        est = {str(r.get("energy_source")) for r in bench}
        fig.suptitle(f"Accuracy vs cost ({', '.join(sorted(est))})")
    elif run is not None:
        axes[0].scatter(run.macs, run.macs_mj, s=8, alpha=0.5)
        axes[0].set_xlabel("MACs per decision")
        axes[0].set_ylabel("mJ per decision")
        if run.labelled:
            axes[1].scatter([np.mean(run.macs or [0])], [run.correct / run.labelled])
            axes[1].set_xlabel("mean MACs per decision")
            axes[1].set_ylabel("accuracy")
        else:
            axes[1].axis("off")
            axes[1].text(0.02, 0.5, "This recording has no labels (a live run),\nso it has no accuracy: "
                         "pass a bench.json\n(exitflow report RUN.mcap bench.json)\nfor accuracy vs MACs / mJ.",
                         fontsize=10, va="center")
        fig.suptitle("Cost of each decision (MACs vs mJ)" + ("" if run.labelled else "; no labels: no accuracy"))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(inputs: list[str | Path], out_dir: str | Path, window_s: float = 5.0) -> dict[str, Path]:
    """Write the PNGs that the inputs allow (a recording: all four; a bench.json alone: the Pareto).

    Raises:
        DataError: for an input that is neither an ``.mcap`` recording nor a bench ``.json``.
    """
    run: RunSeries | None = None
    bench: list[dict[str, Any]] | None = None
    for item in inputs:
        p = Path(item)
        if p.suffix == ".mcap":
            run = load_run(p)
        elif p.suffix == ".json":
            bench = load_bench(p)
        else:
            raise DataError(f"{p}: give a recording (.mcap) and/or bench results (.json)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if run is not None:
        written["exits"] = plot_exits(run.exits, out / "exits.png", run.name)
        written["budget"] = plot_budget(run, out / "budget.png", window_s)
        written["latency"] = plot_latency(run, out / "latency.png")
    if bench is not None or run is not None:
        written["pareto"] = plot_pareto(bench, run, out / "pareto.png")
    return written
