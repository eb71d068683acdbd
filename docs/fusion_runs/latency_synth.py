"""Batch-of-one fusion latency vs width, untrained weights with trimmers set to drop about half."""

import json
import time

import numpy as np
import torch

from exitflow.encoders.fusion import FusionTransformer, FusionTransformerConfig

torch.set_num_threads(1)
out = {}
for dim, n in ((64, 50), (256, 200), (512, 400)):
    torch.manual_seed(0)
    model = FusionTransformer(
        FusionTransformerConfig(
            modality_dims={"image": dim, "audio": dim}, dim=dim, num_layers=3, num_heads=8
        )
    ).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in (model.token_trimmers, model.head_trimmers):
            for p in mod.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.0 if p.dim() == 1 else 0.7))
    x = {"image": torch.randn(1, n, dim), "audio": torch.randn(1, n, dim)}
    times = {"full": [], "trimmed": []}
    with torch.no_grad():
        r = model(x)
        for _ in range(30):
            for name, trim in (("full", False), ("trimmed", True)):
                t0 = time.perf_counter_ns()
                o = model(x, trim=trim)
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
        full = model(x, trim=False)
    out[f"D={dim},N={n}"] = {
        "macs_full": int(full.macs[0]),
        "macs_trimmed": int(r.macs[0]),
        "kept_tokens": round(float(r.kept_token_ratio[0]), 3),
        "kept_heads": round(float(r.kept_head_ratio[0]), 3),
        **{f"{k}_ms_median": round(float(np.median(v)), 2) for k, v in times.items()},
    }
print(json.dumps(out, indent=1))
