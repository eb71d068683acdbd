"""Batch-1 latency (ms) of each CNN segment, the fusion heads, and today's LeNet lf, interleaved.

usage: python latency.py PREFIX   (PREFIX.pt from train_cnn.py
PREFIX_sim.json from sim_policy.py)
"""
from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn

from exitflow.encoders.cnn import CNNEarlyExitEncoder, CNNEncoderConfig
from exitflow.pipeline.config import load_config
from exitflow.pipeline.inference.loading import load_baseline

torch.set_num_threads(1)
prefix = sys.argv[1]
ck = torch.load(prefix + ".pt", weights_only=True)
img = CNNEarlyExitEncoder(CNNEncoderConfig.from_dict(ck["img_cfg"])).eval()
aud = CNNEarlyExitEncoder(CNNEncoderConfig.from_dict(ck["aud_cfg"])).eval()
img.load_state_dict(ck["img"])
aud.load_state_dict(ck["aud"])
lf = load_baseline(load_config(None, []), "lf")
xi, xa = torch.randn(1, 1, 28, 28), torch.rand(1, 1, 112, 112)


def seg_times(enc, x, reps):
    """ms of start+step0, step1, step2 (each: block + head)."""
    out = [0.0] * enc.num_exits
    for _ in range(reps):
        t = time.perf_counter()
        st = enc.start(x)
        for k in range(enc.num_exits):
            enc.step(st)
            now = time.perf_counter()
            out[k] += (now - t) * 1e3
            t = now
    return [v / reps for v in out]


fus = nn.Sequential(nn.Linear(256 + 512, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
with torch.inference_mode():
    for _ in range(20):
        seg_times(img, xi, 1)
        seg_times(aud, xa, 1)
        lf({"image": xi, "audio": xa})
    res = {"img": [0.0] * 3, "aud": [0.0] * 3, "fus": 0.0, "lf": 0.0}
    rounds = 10
    for _ in range(rounds):  # interleave so contention hits all alike
        for k, v in enumerate(seg_times(img, xi, 20)):
            res["img"][k] += v / rounds
        for k, v in enumerate(seg_times(aud, xa, 20)):
            res["aud"][k] += v / rounds
        t = time.perf_counter()
        for _ in range(20):
            fus(torch.randn(1, 768))
        res["fus"] += (time.perf_counter() - t) * 1e3 / 20 / rounds
        t = time.perf_counter()
        for _ in range(20):
            lf({"image": xi, "audio": xa})
        res["lf"] += (time.perf_counter() - t) * 1e3 / 20 / rounds
print(json.dumps(res))
json.dump(res, open(prefix + "_latency.json", "w"))
