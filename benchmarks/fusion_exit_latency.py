"""Batch-of-one latency of the transformer fusion exit on real encoder tokens: untrimmed vs SmartTrim vs + MuE.

Settings run back to back on each sample (interleaved, so load from other processes hits all alike),
one torch thread; prints median latency_ms, mean fusion MACs and the ratios to untrimmed.

    PYTHONPATH=. .venv/bin/python benchmarks/fusion_exit_latency.py --dataset avmnist-t --samples 300
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.inference.loading import load_encoders, load_transformer_exit
from exitflow.pipeline.training.records import collect_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="avmnist-t")
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, ["fusion.exit=transformer"])
    fusion = load_transformer_exit(cfg, args.dataset)
    split = load_split(cfg, "test", args.dataset, progress=False)
    tokens = collect_tokens(load_encoders(cfg, args.dataset), split, args.samples, progress=False)
    modalities = tuple(fusion.modalities)
    settings = {
        "untrimmed": {"trim": False},
        "smarttrim": {"trim": True},
        "smarttrim+mue": {"trim": True, "thresholds": fusion.exit_thresholds},
        "untrimmed+mue": {"trim": False, "thresholds": fusion.exit_thresholds},
    }
    times = {k: [] for k in settings}
    macs = {k: [] for k in settings}
    with torch.inference_mode():
        for i in range(len(tokens)):
            batch, masks = tokens.batch(np.array([i]), modalities)
            for name, kw in settings.items():
                start = time.perf_counter_ns()
                out = fusion(batch, masks, hard=True, all_layer_logits=False, **kw)
                times[name].append((time.perf_counter_ns() - start) / 1e6)
                macs[name].append(int(out.macs[0]))
    base_ms, base_macs = np.median(times["untrimmed"]), np.mean(macs["untrimmed"])
    print(f"{len(tokens)} samples, batch 1, 1 thread; MuE thresholds {fusion.exit_thresholds}")
    for name in settings:
        ms, mc = np.median(times[name]), np.mean(macs[name])
        print(f"  {name:<15} latency_ms median {ms:6.3f} ({base_ms / ms:.2f}x)  fusion MACs {mc / 1e6:6.2f} M "
              f"({base_macs / mc:.2f}x fewer)")


if __name__ == "__main__":
    main()
