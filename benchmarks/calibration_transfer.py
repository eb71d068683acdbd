"""Calibration criteria chosen on one unseen voice, measured on the other (issue 25 item 3).

The committed checkpoints (``checkpoints/cnn_<dataset>``, trained on george, jackson, lucas) leave two
voices unseen: nicolas (``val``) and theo (``test``). For each direction this chooses thresholds on one
and measures them on the other, on the per-exit logits (``WalkSimulator``: no model runs per threshold):
today's no-regret rule (the profile's thresholds, ``exitflow calibrate``), the same rule searched with
agreement between successive checks required (``WalkSimulator(agreement=True)``) and Learn-then-Test
risk control of the disagreement with the full path (``risk_controlled_shift``) at a few alphas. Prints accuracy, MACs
per sample and disagreement with ``full``::

    nice -n 19 python benchmarks/calibration_transfer.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.inference.loading import load_dataset_profile, load_encoders, load_fusion
from exitflow.pipeline.training.calibrate import WalkSimulator, risk_controlled_shift, split_logits

ALPHAS = (0.005, 0.01, 0.02, 0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--datasets", nargs="+", default=["avmnist", "avmnist-noisy"])
    ap.add_argument("--delta", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.root={args.data_root}"])
    for ds in args.datasets:
        encoders, fusion = load_encoders(cfg, ds), load_fusion(cfg, ds)
        base = load_dataset_profile(cfg, ds).thresholds
        exit_macs = {m: [float(v) for v in e.exit_macs()] for m, e in encoders.items()}
        sims, agree = {}, {}
        for split in ("val", "test"):
            logits, labels = split_logits(encoders, fusion, load_split(cfg, split, ds, progress=False))
            sims[split] = WalkSimulator(logits, labels, fusion.modalities, exit_macs, fusion.head_macs,
                                        cfg.scheduler.exit_rule, fusion.modalities)
            agree[split] = WalkSimulator(logits, labels, fusion.modalities, exit_macs, fusion.head_macs,
                                         cfg.scheduler.exit_rule, fusion.modalities, agreement=True)

        def measure(thresholds: dict[str, float], split: str, sims: dict = sims) -> str:
            sim = sims[split]
            pred, macs = sim.predictions(thresholds)
            return (f"acc {np.mean(pred == sim.labels):.4f} MACs {macs.mean() / 1e6:.2f}M "
                    f"dis {np.mean(pred != sim.full_predictions()):.4f}")

        print(f"{ds}: profile thresholds {base}; full val {sims['val'].full_accuracy():.4f}, "
              f"test {sims['test'].full_accuracy():.4f}")
        for cal, other in (("val", "test"), ("test", "val")):
            print(f" chosen on {cal}, measured on {other}:")
            print(f"   no-regret (profile)   chosen-on {measure(base, cal)} | other {measure(base, other)}")
            sc = cfg.scheduler
            chosen, _ = agree[cal].search(sc.calibration_drop, sc.calibration_precision, max_regret=sc.calibration_regret)
            print(f"   no-regret + agreement chosen-on {measure(chosen, cal, agree)} | other "
                  f"{measure(chosen, other, agree)}  {chosen}")
            for alpha in ALPHAS:
                r = risk_controlled_shift(sims[cal], base, alpha, args.delta)
                print(f"   LTT alpha={alpha:<5} shift {r.shift:+.3f} chosen-on {measure(r.thresholds, cal)} | "
                      f"other {measure(r.thresholds, other)}")


if __name__ == "__main__":
    main()
