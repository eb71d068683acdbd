"""Sweeps of the operating point (lambda x threshold) and the accuracy-vs-cost Pareto plot."""

from __future__ import annotations

from pathlib import Path


def run_sweep(parts, samples, meter, lambdas, thresholds) -> list[dict]:
    """exitflow at each lambda and each threshold (no budget) and static at every truncation."""
    import itertools

    from exitflow.pipeline.evaluation.bench import json_rows, run_system

    rows = []
    settings = [(lam, None) for lam in lambdas] + [(None, th) for th in thresholds]
    for lam, th in settings:
        r = run_system(parts.exitflow(meter=meter, lam=lam, threshold=th, budget=False), samples, meter)
        setting = f"lambda={lam:g}" if lam is not None else f"threshold={th:g}"
        rows.append({**json_rows([r])[0], "system": "exitflow", "setting": setting})
    options = [range(enc.num_exits) for enc in parts.encoders.values()]
    for combo in itertools.product(*options):
        exits = dict(zip(parts.encoders, combo, strict=True))
        r = run_system(parts.static(exits), samples, meter)
        setting = ",".join(f"{m}@{k}" for m, k in exits.items())
        rows.append({**json_rows([r])[0], "system": "static", "setting": setting})
    return rows


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points not dominated by a cheaper, at-least-as-accurate one, by cost."""
    front, best = [], -1.0
    for cost, acc in sorted(points):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def plot_pareto(sweep: list[dict], rows: list[dict], path: Path) -> None:
    """Accuracy against MACs and (when measured) against mJ per sample: exitflow's and the static
    truncations' points and Pareto fronts, with ``full``, ``lf`` and the uni-modal baselines marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["macs_per_sample"]
    if all(r["mj_per_sample"] is not None for r in sweep):
        keys.append("mj_per_sample")
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for system, color in (("static", "tab:gray"), ("exitflow", "tab:blue")):
            pts = [(r[key], r["accuracy"]) for r in sweep if r["system"] == system and r[key] is not None]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, s=12, color=color, alpha=0.4)
            front = pareto(pts)
            ax.plot(*zip(*front, strict=True), "-o", color=color, label=f"{system} (Pareto front)", markersize=4)
        for r in rows:
            if r["system"] in ("full", "lf", "image", "audio", "exitflow") and r.get(key) is not None:
                marker, color = ("*", "tab:blue") if r["system"] == "exitflow" else ("x", "black")
                ax.scatter([r[key]], [r["accuracy"]], marker=marker, color=color, s=60)
                ax.annotate(r["system"], (r[key], r["accuracy"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        source = sweep[0]["energy_source"] or ""
        ax.set_xlabel(f"mJ per sample ({source})" if key == "mj_per_sample" else "MACs per sample")
        ax.set_xscale("log")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
    fig.suptitle("exitflow vs static truncation and the single-pass baselines")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_sweep(sweep: list[dict]) -> str:
    lines = ["", "sweep (system, setting, accuracy, MACs/sample, mJ/sample):"]
    for r in sweep:
        mj = r["mj_per_sample"] if r["mj_per_sample"] is None else round(r["mj_per_sample"], 3)
        lines.append(f"  {r['system']:<9} {r['setting']:<28} {r['accuracy']:.4f} {r['macs_per_sample']:>12,.0f} {mj}")
    return "\n".join(lines)

