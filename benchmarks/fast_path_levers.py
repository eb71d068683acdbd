"""The fast path lever by lever: exitflow's ms/sample at batch 1 as each lever is added, against the
single-pass systems a user could pick instead, on the same backend, in one run.

Rows, cumulative (each adds one lever to the row above):

1. eager reference engine (``engine.backend: torch``), a meter window per sample
2. compiled, a call per step (ONNX Runtime graphs, the exit test inside each)
3. + cuts by least expected time (``scheduler.program.choose_cuts``)
4. + pruning: steps whose threshold cannot pass are not scored, their heads run only as far as a
   later fused step reads them
5. + meter windows spanning 100 ms (``engine.meter_window_ms``) instead of a window per sample

and ``full`` / ``static`` (exitflow's MACs) on both backends. Every row runs the same samples; the
rows take turns ``--repeats`` times and each keeps its best time (on a shared machine noise only
adds time). Decisions are checked equal to the reference's on every row.

    PYTHONPATH=. .venv/bin/python benchmarks/fast_path_levers.py --limit 1000 [--json runs/levers.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import numpy as np
import torch

from exitflow.pipeline.config import load_config
from exitflow.pipeline.evaluation.bench import bench_inputs, static_exits_matching
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from exitflow.pipeline.inference.backends import open_backend
from exitflow.pipeline.inference.engine import Engine, policy_from_config
from exitflow.pipeline.inference.fast_engine import FastEngine
from exitflow.pipeline.meters import open_meter

KEYS = ("prediction", "order", "exits", "skipped", "missing", "exited_by")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = load_config(None, [])
    parts, samples = bench_inputs(cfg, "avmnist", "test", args.limit)
    eager = AdaptiveParts(dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, backend="torch")), "avmnist")
    torch.set_num_threads(cfg.engine.num_threads or torch.get_num_threads())
    meter = open_meter(cfg)
    backend = open_backend("onnxruntime", cfg.engine.num_threads)
    costs: dict[str, Any] = {}

    def policy():  # noqa: ANN202
        return policy_from_config(parts.profile, cfg.scheduler)

    def fast(**kw: Any) -> FastEngine:
        return FastEngine(parts.encoders, parts.fusion, policy(), backend, meter=meter, step_costs=costs, **kw)

    rows: dict[str, Any] = {
        "1 eager reference engine": Engine(eager.encoders, eager.fusion, policy(), meter=meter,
                                           input_adapter=eager.input_adapter),
        "2 compiled, a call per step": fast(cuts="steps", prune=False),
        "3 + cuts by expected time": fast(cuts="auto", prune=False),
        "4 + pruning dead steps": fast(cuts="auto", prune=True),
        "5 + meter windows of 100 ms": fast(cuts="auto", prune=True, meter_window_ms=100.0),
    }
    ref_decisions = [rows["1 eager reference engine"].process(s) for s in samples]
    macs_exitflow = float(np.mean([d.macs for d in ref_decisions]))
    exits = static_exits_matching(parts, macs_exitflow)
    rows.update({
        "full (torch)": eager.full(), "static (torch)": eager.static(exits),
        "full (onnxruntime)": parts.full(), "static (onnxruntime)": parts.static(exits),
    })
    best = dict.fromkeys(rows, float("inf"))
    decisions: dict[str, list] = {}
    for system in rows.values():
        for s in samples[:50]:
            system.process(s)
    for _ in range(args.repeats):
        for name, system in rows.items():
            t0 = time.perf_counter()
            out = [system.process(s) for s in samples]
            best[name] = min(best[name], (time.perf_counter() - t0) * 1000.0 / len(samples))
            decisions[name] = out
    full_ms, static_ms = best["full (onnxruntime)"], best["static (onnxruntime)"]
    print(f"{len(samples)} samples, batch 1, {cfg.engine.num_threads} thread; best of {args.repeats} turns; "
          f"static = exits {exits}")
    print(f"{'row':<30}{'ms/sample':>10}{'MACs':>12}{'acc':>8}{'x full':>8}{'x static':>9}{'policy %':>9}  same decisions")
    result = []
    for name in rows:
        ds = decisions[name]
        same = all(all(getattr(a, k) == getattr(b, k) for k in KEYS if hasattr(b, k) and getattr(b, k))
                   for a, b in zip(ref_decisions, ds, strict=True)) if name[0].isdigit() else None
        pol = [d.latency_ms.get("policy") for d in ds]
        tot = [d.latency_ms.get("total") for d in ds]
        share = 100 * sum(pol) / sum(tot) if all(p is not None for p in pol) else None
        r = {"row": name, "ms": best[name], "macs": float(np.mean([d.macs for d in ds])),
             "accuracy": float(np.mean([d.prediction == d.label for d in ds])),
             "x_full": best[name] / full_ms, "x_static": best[name] / static_ms, "policy_pct": share, "same": same}
        result.append(r)
        print(f"{name:<30}{r['ms']:>10.3f}{r['macs']:>12,.0f}{r['accuracy']:>8.4f}{r['x_full']:>8.2f}{r['x_static']:>9.2f}"
              f"{'' if share is None else f'{share:.2f}':>9}  {'' if same is None else same}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": result, "static_exits": exits, "n": len(samples)}, f, indent=1)


if __name__ == "__main__":
    main()
