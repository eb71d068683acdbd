"""The scheduler's share of exitflow's per-sample time, measured inside the real engine.

Runs exitflow (config.yaml's scheduler, the configured power meter) over the first N test
samples, batch 1, and reports the engine's own per-step clocks: ``latency_ms["policy"]`` (every
``start``/``decide``/``observe`` call of the sample) against ``latency_ms["total"]``.

    PYTHONPATH=. .venv/bin/python benchmarks/engine_policy_overhead.py --limit 1000 [--budget-fraction 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np

from exitflow.pipeline.config import load_config
from exitflow.pipeline.evaluation.bench import bench_inputs, run_system
from exitflow.pipeline.meters import open_meter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="avmnist")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--budget-mj", type=float, default=None, help="also run under this per-sample budget")
    args = ap.parse_args()
    cfg = load_config(None, [])
    parts, samples = bench_inputs(cfg, args.dataset, "test", args.limit)
    meter = open_meter(cfg)
    systems = [("exitflow", parts.exitflow(meter=meter, budget=False))]
    if args.budget_mj is not None:
        systems.append(("exitflow@budget", parts.exitflow(meter=meter, budget_mj=args.budget_mj)))
    for name, system in systems:
        for sample in samples[:20]:
            system.process(sample)
        row = run_system(system, samples, meter)
        policy = np.array([d.latency_ms["policy"] for d in row["decisions"]])
        total = np.array([d.latency_ms["total"] for d in row["decisions"]])
        print(f"{name}: n={row['n']} policy {policy.mean() * 1000:.1f} us/sample (median "
              f"{np.median(policy) * 1000:.1f}) of {total.mean():.3f} ms/sample = "
              f"{policy.sum() / total.sum():.2%}; accuracy {row['accuracy']:.4f}")


if __name__ == "__main__":
    main()
