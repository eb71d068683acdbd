"""Choose exitflow's operating point on the *validation* split (never on test).

Runs exitflow for every (threshold, lambda, min_exit_prob, min_exit_accuracy) in a grid on the first N val samples and
prints accuracy, MACs/sample and ms/sample next to ``full``; pick the cheapest point within the
accuracy tolerance of ``full`` and put it in config.yaml's ``scheduler`` section.

    python benchmarks/tune_exitflow.py --limit 1000 --tolerance 0.005
"""

from __future__ import annotations

import argparse
import itertools

from exitflow.devices import get_power_meter
from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.evaluation.bench import run_system
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="avmnist")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--thresholds", default="0.05,0.1,0.2,0.3")
    ap.add_argument("--lambdas", default="1,10,100")
    ap.add_argument("--min-exit-probs", default="0,0.1,0.2")
    ap.add_argument("--min-exit-accuracies", default="0")
    args = ap.parse_args()
    base = load_config(None, [])
    samples = list(split_samples(load_split(base, "val", args.dataset, progress=False), args.limit))
    meter = get_power_meter("null")
    full = run_system(AdaptiveParts(base, args.dataset).full(), samples, meter)
    print(f"full: acc={full['accuracy']:.4f} macs={full['macs_per_sample'] / 1e6:.2f}M ms={full['ms_per_sample']:.2f}")
    rows = []
    grid = itertools.product(
        [float(x) for x in args.thresholds.split(",")],
        [float(x) for x in args.lambdas.split(",")],
        [float(x) for x in args.min_exit_probs.split(",")],
        [float(x) for x in args.min_exit_accuracies.split(",")],
    )
    for th, lam, pmin, amin in grid:
        cfg = load_config(None, [f"scheduler.threshold={th}", f"scheduler.lam={lam}", f"scheduler.min_exit_prob={pmin}",
                                 f"scheduler.min_exit_accuracy={amin}"])
        r = run_system(AdaptiveParts(cfg, args.dataset).exitflow(budget=False), samples, meter)
        rows.append((th, lam, (pmin, amin), r))
        print(f"threshold={th} lam={lam} min_exit_prob={pmin} min_exit_accuracy={amin}: acc={r['accuracy']:.4f} "
              f"macs={r['macs_per_sample'] / 1e6:.2f}M ({full['macs_per_sample'] / r['macs_per_sample']:.2f}x) "
              f"ms={r['ms_per_sample']:.2f} ({full['ms_per_sample'] / r['ms_per_sample']:.2f}x)", flush=True)
    ok = [x for x in rows if x[3]["accuracy"] >= full["accuracy"] - args.tolerance]
    if ok:
        th, lam, pmin, r = min(ok, key=lambda x: x[3]["macs_per_sample"])
        print(f"cheapest within {args.tolerance}: threshold={th} lam={lam} (min_exit_prob, min_exit_accuracy)={pmin} "
              f"acc={r['accuracy']:.4f} macs x{full['macs_per_sample'] / r['macs_per_sample']:.2f}")
    else:
        print(f"no point within {args.tolerance} of full on val")


if __name__ == "__main__":
    main()
