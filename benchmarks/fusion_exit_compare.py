"""exitflow with the transformer fusion exit vs with the concat (late) fusion exit, at equal accuracy.

Sweeps the exit threshold of both systems on the same samples (one process, batch 1) and, for each
transformer point, finds the cheapest concat point at least as accurate: the MACs ratio there says
which fusion exit gives the cheaper pipeline at that accuracy.

    PYTHONPATH=. .venv/bin/python benchmarks/fusion_exit_compare.py --dataset avmnist-t --split test --limit 1000
"""

from __future__ import annotations

import argparse
import json

from exitflow.devices import get_power_meter
from exitflow.pipeline.config import load_config
from exitflow.pipeline.evaluation.bench import bench_inputs, concat_parts, json_rows, run_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="avmnist-t")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--thresholds", default="0.05,0.1,0.15,0.2,0.25,0.3,0.4")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = load_config(None, ["fusion.exit=transformer"])
    parts, samples = bench_inputs(cfg, args.dataset, args.split, args.limit)
    late = concat_parts(parts)
    meter = get_power_meter("null")
    rows = []
    for name, p in (("transformer", parts), ("concat", late)):
        full = run_system(p.full(), samples, meter)
        rows.append({**json_rows([full])[0], "fusion": name, "setting": "full"})
        for th in (float(x) for x in args.thresholds.split(",")):
            r = run_system(p.exitflow(threshold=th, budget=False), samples, meter)
            fused = sum(1 for d in r["decisions"] if "fusion" in d.latency_ms)  # the fusion step ran
            rows.append({**json_rows([r])[0], "fusion": name, "setting": f"threshold={th:g}",
                         "fused_share": fused / len(samples)})
    for r in rows:
        print(f"{r['fusion']:<12} {r['setting']:<16} acc {r['accuracy']:.4f}  MACs {r['macs_per_sample'] / 1e6:7.2f} M  "
              f"ms {r['ms_per_sample']:.2f}  fused {r.get('fused_share', 1.0):.0%}")
    print("\nat equal accuracy (cheapest concat point at least as accurate as each transformer point):")
    concat = [r for r in rows if r["fusion"] == "concat"]
    for r in (r for r in rows if r["fusion"] == "transformer"):
        match = [c for c in concat if c["accuracy"] >= r["accuracy"]]
        if match:
            c = min(match, key=lambda c: c["macs_per_sample"])
            print(f"  transformer {r['setting']} ({r['accuracy']:.4f}, {r['macs_per_sample'] / 1e6:.2f} M) vs concat "
                  f"{c['setting']} ({c['accuracy']:.4f}, {c['macs_per_sample'] / 1e6:.2f} M): "
                  f"concat/transformer MACs {c['macs_per_sample'] / r['macs_per_sample']:.2f}")
        else:
            print(f"  transformer {r['setting']} ({r['accuracy']:.4f}): no concat point is as accurate")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
