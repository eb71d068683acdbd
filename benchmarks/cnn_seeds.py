"""Mean +- sd over training seeds of the CNN family: full, the best static truncation and exitflow.

Each seed's run folder (written by ``exitflow train cnn --out DIR``) holds the calibrated logits of
every exit and fusion head on val / test / test_id (``logits.npz``) and the MACs (``training.json``).
For each seed the operating point is chosen on ``val`` only (:class:`WalkSimulator.search`, the
config's ``scheduler.calibration_drop`` / ``calibration_precision``, image then audio as the policy
orders them; ``calibration_regret`` too) and then read once on ``test`` (unseen speaker) and ``test_id``. The engine's walk is
deterministic, so the simulation gives the decisions the engine makes (``exitflow bench`` on the
committed seed checks this: see docs/adaptive.md).

usage: python benchmarks/cnn_seeds.py RUN_DIR [RUN_DIR ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from exitflow.pipeline.config import load_config
from exitflow.pipeline.training.calibrate import WalkSimulator

SPLITS = ("val", "test", "test_id")


def seed_rows(folder: Path, drop: float, precision: float, regret: float | None, rule: str) -> dict:
    z = np.load(folder / "logits.npz")
    report = json.loads((folder / "training.json").read_text())
    macs = report["macs"]
    exit_macs = {m: [macs[f"{m}{e}"] for e in range(3)] for m in ("image", "audio")}
    heads = {k: v for k, v in macs.items() if "_" in k}
    sims = {
        sp: WalkSimulator({k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(sp + "/") and not k.endswith("/labels")},
                          z[f"{sp}/labels"], ("image", "audio"), exit_macs, heads, rule)
        for sp in SPLITS
    }
    thresholds, _ = sims["val"].search(drop, precision, max_regret=regret)
    full_macs = sims["val"].checks[-1][2] - sum(heads[k] for k in heads if k.startswith("image2_") and k != "image2_audio2")
    out = {"seed": report["settings"]["seed"], "thresholds": thresholds, "full_macs": full_macs}
    for sp, sim in sims.items():
        r = sim.run(thresholds)
        acc = {k: float((z[f"{sp}/{k}"].argmax(1) == z[f"{sp}/labels"]).mean()) for k in heads}
        out[sp] = {"exitflow": r.accuracy, "exitflow_macs": r.macs, "full": sim.full_accuracy(),
                   "heads": acc, "shares": r.shares}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg = load_config(None, [])
    s = cfg.scheduler
    rows = [seed_rows(f, s.calibration_drop, s.calibration_precision, s.calibration_regret, s.exit_rule)
            for f in args.runs]
    for sp in SPLITS:
        full = np.array([r[sp]["full"] for r in rows])
        ef = np.array([r[sp]["exitflow"] for r in rows])
        macs = np.array([r[sp]["exitflow_macs"] for r in rows])
        fm = np.array([r["full_macs"] for r in rows])
        print(f"{sp:8s} full {full.mean():.4f} +- {full.std(ddof=1) if len(rows) > 1 else 0:.4f} | "
              f"exitflow {ef.mean():.4f} +- {ef.std(ddof=1) if len(rows) > 1 else 0:.4f} at "
              f"{macs.mean() / 1e6:.2f} M MACs ({(fm / macs).mean():.2f}x fewer than full, "
              f"{(11_993_032 / macs).mean():.2f}x fewer than lf) | per seed: "
              + ", ".join(f"s{r['seed']} {r[sp]['exitflow']:.4f}/{r[sp]['full']:.4f}@{r[sp]['exitflow_macs'] / 1e6:.2f}M" for r in rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
