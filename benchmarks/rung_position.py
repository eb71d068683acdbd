"""Where the last rung should stand (issue 25, next lever), simulated on the five-voice folds: ``lf`` mixed
with the CNN's fusion after audio exit k (k = 0, 1, 2; 2 is the full path, what ``scheduler.last_rung: lf``
runs), the walk cut there. Weight and thresholds on the calibration voice (no-regret search), figures on all
of the test voice's rows; also k chosen on the calibration voice (least val NLL of the mix).

    python benchmarks/rung_position.py --folds george jackson lucas nicolas theo
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from voices import VOICES, fold_overrides  # noqa: E402

from exitflow.encoders.baseline import measure_macs  # noqa: E402
from exitflow.encoders.last_rung import fit_mix_weight, mix_logits  # noqa: E402
from exitflow.pipeline.artifacts import baseline_dataset  # noqa: E402
from exitflow.pipeline.config import load_config  # noqa: E402
from exitflow.pipeline.data.avmnist import load_split  # noqa: E402
from exitflow.pipeline.inference.loading import load_baseline, load_encoders, load_fusion  # noqa: E402
from exitflow.pipeline.training.calibrate import WalkSimulator, rung_logits, split_logits  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", nargs="+", default=list(VOICES), choices=VOICES)
    ap.add_argument("--dataset", default="avmnist")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, list[tuple[float, float]]] = {}
    for test in args.folds:
        cfg = load_config(None, fold_overrides(test, 0))
        enc, fus = load_encoders(cfg, args.dataset), load_fusion(cfg, args.dataset)
        lf = load_baseline(cfg, "lf", baseline_dataset(args.dataset, "lf"))
        lf_macs = float(measure_macs(lf))
        em = {m: [float(v) for v in e.exit_macs()] for m, e in enc.items()}
        last_image = len(em["image"]) - 1
        data = {}
        for split in ("val", "test"):
            s = load_split(cfg, split, args.dataset, progress=False)
            logits, labels = split_logits(enc, fus, s)
            data[split] = (logits, labels, rung_logits(lf, s))
        sc = cfg.scheduler
        results, nll = {}, {}
        plain = None
        for k in range(len(em["audio"])):
            key = f"image{last_image}_audio{k}"
            cut = {"image": em["image"], "audio": em["audio"][: k + 1]}
            w = fit_mix_weight(data["val"][0][key], data["val"][2], data["val"][1])
            vl, vy, vr = data["val"]
            nll[k] = float(-mix_logits(vl[key], vr, w)[np.arange(len(vy)), vy].mean())

            def sim(split: str, rung: bool, cut: dict = cut, key: str = key, w: float = w, data: dict = data,
                    fus: Any = fus, sc: Any = sc, lf_macs: float = lf_macs) -> WalkSimulator:
                lg, y, r = data[split]
                return WalkSimulator(lg, y, ("image", "audio"), cut, fus.head_macs, sc.exit_rule, fus.modalities,
                                     rung=(mix_logits(lg[key], r, w), lf_macs) if rung else None)
            th, _ = sim("val", True).search(sc.calibration_drop, sc.calibration_precision,
                                            max_regret=sc.calibration_regret)
            t = sim("test", True)
            pred, macs = t.predictions(th)
            results[k] = (float((pred == t.labels).mean()), float(macs.mean()), w)
            if k == len(em["audio"]) - 1:
                th, _ = sim("val", False).search(sc.calibration_drop, sc.calibration_precision,
                                                 max_regret=sc.calibration_regret)
                t = sim("test", False)
                pred, macs = t.predictions(th)
                plain = (float((pred == t.labels).mean()), float(macs.mean()))
        chosen = min(nll, key=nll.get)
        tl, ty, tr = data["test"]
        best = max(float((tl[f"image{last_image}_audio{len(em['audio']) - 1}"].argmax(1) == ty).mean()),
                   float((tr.argmax(1) == ty).mean()))
        line = [f"{test:<8} best {best:.4f}  no rung {plain[0]:.4f}/{plain[1] / 1e6:.2f}M"]
        rows.setdefault("no rung", []).append(plain)
        for k, (acc, macs, w) in results.items():
            line.append(f"k={k} {acc:.4f}/{macs / 1e6:.2f}M (w {w:.2f})")
            rows.setdefault(f"k={k}", []).append((acc, macs))
        rows.setdefault("k chosen on val", []).append(results[chosen][:2])
        rows.setdefault("best of full/lf", []).append((best, 0.0))
        print("  ".join(line) + f"  | k on val: {chosen}", flush=True)
    for name, vals in rows.items():
        print(f"mean {name:<16} accuracy {statistics.mean(a for a, _ in vals):.4f}  "
              f"MACs {statistics.mean(m for _, m in vals) / 1e6:.2f} M")


if __name__ == "__main__":
    main()
