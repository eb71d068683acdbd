"""Issue 25 item 2, the lever measured on the five-voice folds: a last rung (``lf`` mixed with the CNN's full
path) behind the CNN exits, against today's walk, ``full`` and ``lf`` (walk simulation over logits; no model
runs per threshold).

Per fold (the fold models of ``benchmarks/voices.py``; ``--committed`` for the checkpoints in the repo, test
theo / calibration nicolas) and data set: every exit's and grid head's logits and ``lf``'s on the calibration
voice (val) and the test voice; the mix weight and the thresholds are chosen on val only (today's no-regret
search, with and without the rung), then measured on test::

    python benchmarks/last_rung.py --folds theo george jackson lucas nicolas --datasets avmnist avmnist-noisy
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from voices import VOICES, WORK, fold_overrides, fold_roles  # noqa: E402

from exitflow.encoders.baseline import measure_macs  # noqa: E402
from exitflow.encoders.last_rung import fit_mix_weight, mix_logits  # noqa: E402
from exitflow.pipeline.artifacts import baseline_dataset  # noqa: E402
from exitflow.pipeline.config import Config, load_config  # noqa: E402
from exitflow.pipeline.data.avmnist import load_split  # noqa: E402
from exitflow.pipeline.inference.loading import load_baseline, load_encoders, load_fusion  # noqa: E402
from exitflow.pipeline.training.calibrate import WalkSimulator, rung_logits, split_logits  # noqa: E402


def lf_logits(cfg: Config, dataset: str, split: Any) -> tuple[np.ndarray, int]:
    """``lf``'s logits over ``split`` (the rung's input) and its MACs."""
    model = load_baseline(cfg, "lf", baseline_dataset(dataset, "lf"))
    return rung_logits(model, split), measure_macs(model)


def measure(cfg: Config, dataset: str) -> dict[str, Any]:
    encoders, fusion = load_encoders(cfg, dataset), load_fusion(cfg, dataset)
    exit_macs = {m: [float(v) for v in e.exit_macs()] for m, e in encoders.items()}
    sc = cfg.scheduler
    data = {}
    for split in ("val", "test"):
        s = load_split(cfg, split, dataset, progress=False)
        logits, labels = split_logits(encoders, fusion, s)
        data[split] = (logits, labels, *lf_logits(cfg, dataset, s))
    final = "_".join(f"{m}{len(exit_macs[m]) - 1}" for m in fusion.modalities)
    vl, vy, vlf, lf_macs = data["val"]
    weight = fit_mix_weight(vl[final], vlf, vy)
    out: dict[str, Any] = {"weight": weight, "lf_macs": lf_macs}
    tl, ty, tlf, _ = data["test"]
    out["test"] = {"full_cnn": float((tl[final].argmax(1) == ty).mean()), "lf": float((tlf.argmax(1) == ty).mean()),
                   "mix": float((mix_logits(tl[final], tlf, weight).argmax(1) == ty).mean())}
    out["val"] = {"full_cnn": float((vl[final].argmax(1) == vy).mean()), "lf": float((vlf.argmax(1) == vy).mean()),
                  "mix": float((mix_logits(vl[final], vlf, weight).argmax(1) == vy).mean())}
    for label, with_rung in (("walk", False), ("walk+rung", True)):
        best = None
        for order in (tuple(fusion.modalities), tuple(reversed(fusion.modalities))):
            def sim(split: str, order: tuple[str, ...] = order, with_rung: bool = with_rung) -> WalkSimulator:
                logits, labels, lfl, _ = data[split]
                rung = (mix_logits(logits[final], lfl, weight), lf_macs) if with_rung else None
                return WalkSimulator(logits, labels, order, exit_macs, fusion.head_macs, sc.exit_rule,
                                     fusion.modalities, rung=rung)
            val_sim = sim("val")
            thresholds, result = val_sim.search(sc.calibration_drop, sc.calibration_precision,
                                                max_regret=sc.calibration_regret)
            if best is None or result.macs < best[2].macs:
                best = (order, thresholds, result, sim("test"))
        order, thresholds, result, test_sim = best
        pred, macs = test_sim.predictions(thresholds)
        out[label] = {"order": list(order), "thresholds": thresholds, "val_accuracy": result.accuracy,
                      "val_macs": result.macs, "test_accuracy": float((pred == ty).mean()),
                      "test_macs": float(macs.mean()), "full_macs": test_sim.checks[-1][2],
                      "escalated": float((macs >= test_sim.checks[-1][2] - 1).mean()),
                      "disagreement_with_full": float((pred != test_sim.full_predictions()).mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", nargs="+", default=list(VOICES), choices=VOICES)
    ap.add_argument("--datasets", nargs="+", default=["avmnist"])
    ap.add_argument("--committed", action="store_true", help="the repo's checkpoints (test theo, val nicolas)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for dataset in args.datasets:
        folds = ["committed"] if args.committed else args.folds
        for test in folds:
            cfg = load_config(None, [] if test == "committed" else fold_overrides(test, 0))
            if test != "committed" and not (Path(cfg.train.checkpoint_dir) / f"baseline_lf_{dataset}").is_dir():
                print(f"skip {test} {dataset}: fold models not trained yet", flush=True)
                continue
            r = measure(cfg, dataset)
            r.update(test_voice=test, cal_voice="nicolas" if test == "committed" else fold_roles(test)["val"][0],
                     dataset=dataset)
            rows.append(r)
            t = r["test"]
            print(f"{dataset} {test:<9} w={r['weight']:.2f}  full_cnn {t['full_cnn']:.4f}  lf {t['lf']:.4f}  "
                  f"mix {t['mix']:.4f}  | walk {r['walk']['test_accuracy']:.4f}/{r['walk']['test_macs'] / 1e6:.2f}M"
                  f"  walk+rung {r['walk+rung']['test_accuracy']:.4f}/{r['walk+rung']['test_macs'] / 1e6:.2f}M"
                  f" (escalated {r['walk+rung']['escalated']:.3f}, full {r['walk+rung']['full_macs'] / 1e6:.2f}M)",
                  flush=True)
        rs = [r for r in rows if r["dataset"] == dataset]
        if len(rs) > 1:
            best = [max(r["test"]["full_cnn"], r["test"]["lf"]) for r in rs]
            for key in ("walk", "walk+rung"):
                acc = [r[key]["test_accuracy"] for r in rs]
                print(f"{dataset} mean {key}: {statistics.mean(acc):.4f} (best-of-full/lf {statistics.mean(best):.4f});"
                      f" MACs {statistics.mean(r[key]['test_macs'] for r in rs) / 1e6:.2f} M; worst gap "
                      f"{min(100 * (a - b) for a, b in zip(acc, best, strict=True)):+.2f} pt", flush=True)
    out = WORK / "last_rung.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")


if __name__ == "__main__":
    main()
