"""Ablation of the LGViT encoder on AV-MNIST: LGViT heads vs MLP heads, two-stage vs stage-1-only.

Variants (all on the same training rows and seed):
- ``lgvit``: LPH/GAH heads, stage 1 (backbone + final classifier) then stage 2 (distillation).
- ``mlp``: MLP heads (pool + linear), the same stage-1 backbone, stage 2 (KD only: no features).
- ``lgvit-ce``: LPH/GAH heads, the same stage-1 backbone, stage 2 with plain cross-entropy
  (gamma = 0, no feature terms): what distillation adds.
- ``stage1-only``: LPH/GAH heads trained jointly with the backbone in one stage (weighted
  exit losses), no stage 2.

The two-stage variants reuse the stage-1 state of ``--stage1-run`` (a run folder written by
``exitflow train encoder``) so they differ only in their heads / stage 2. Usage::

    python benchmarks/encoder_ablation.py --modality image --stage1-run .cache/runs/image-avmnist-lgvit \
        --set train.limit=8000 --set lgvit.stage1_epochs=3 --set lgvit.stage2_epochs=2 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from exitflow.encoders.evaluation import best_within, speedup_at
from exitflow.encoders.lgvit_training import LabeledData, train_vit
from exitflow.pipeline.config import load_config, output_path
from exitflow.pipeline.training.encoder import (
    batch_fn,
    build_encoder,
    encoder_split,
    evaluate_encoder,
    train_settings,
    train_subset,
)

VARIANTS = ("lgvit", "mlp", "lgvit-ce", "stage1-only")


def run_variant(cfg, variant: str, modality: str, stage1_run: Path, train, val, test) -> dict:
    head_type = "mlp" if variant == "mlp" else "lgvit"
    cfg_v = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, head_type=head_type))
    settings = train_settings(cfg_v)
    if variant == "lgvit-ce":
        settings = dataclasses.replace(settings, kd_gamma=0.0, het_weight=0.0, hom_weight=0.0)
    if variant == "stage1-only":
        settings = dataclasses.replace(settings, stage1_exit_loss="weighted", stage2_epochs=0)
    run_dir = output_path(cfg, cfg.encoder.run_dir) / f"ablation-{modality}-{variant}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if variant != "stage1-only" and not (run_dir / "stage1.pt").exists():
        shutil.copy(stage1_run / "stage1.pt", run_dir / "stage1.pt")
    if variant == "lgvit" and (stage1_run / "stage2.pt").exists() and not (run_dir / "stage2.pt").exists():
        shutil.copy(stage1_run / "stage2.pt", run_dir / "stage2.pt")
    torch.manual_seed(settings.seed)
    encoder = build_encoder(cfg_v, modality)
    history = train_vit(
        encoder, train, val, settings, run_dir=run_dir, log=lambda s: print(f"[{variant}] {s}")
    )
    encoder.eval()
    result = evaluate_encoder(encoder, test, modality)
    result["variant"] = variant
    result["train_seconds"] = history.get("stage1_seconds", 0) + history.get("stage2_seconds", 0)
    return result


def summarize(results: list[dict]) -> str:
    lines = [
        "| variant | last-exit acc | per-exit acc | best MAC x within 2 pt (acc) | acc @1.5x | acc @2.0x |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        best = best_within(r["curve"], r["last_exit_accuracy"], 0.02)
        best_s = (
            f"{best['mac_speedup']:.2f}x ({best['accuracy']:.4f}, tau={best['threshold']})" if best else "-"
        )
        at = [speedup_at(r["curve"], s) for s in (1.5, 2.0)]
        at_s = [f"{a:.4f}" if a is not None else "-" for a in at]
        per = ", ".join(f"{a:.3f}" for a in r["per_exit_accuracy"])
        lines.append(
            f"| {r['variant']} | {r['last_exit_accuracy']:.4f} | {per} | {best_s} | {at_s[0]} | {at_s[1]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modality", default="image", choices=("image", "audio"))
    parser.add_argument("--stage1-run", required=True, help="run folder holding stage1.pt of the lgvit run")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args(argv)
    cfg = load_config(None, args.overrides)
    torch.set_num_threads(cfg.train.num_threads or 2)
    train_split, val_split = encoder_split(cfg, "train", "avmnist"), encoder_split(cfg, "val", "avmnist")
    test = encoder_split(cfg, "test", "avmnist")
    rows = train_subset(len(train_split), cfg.train.limit, cfg.train.seed)
    train = LabeledData(batch_fn(train_split, args.modality, rows), train_split.labels[rows])
    val = LabeledData(batch_fn(val_split, args.modality, np.arange(len(val_split))), val_split.labels)
    results = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        results.append(run_variant(cfg, variant, args.modality, Path(args.stage1_run), train, val, test))
        print(summarize(results), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
