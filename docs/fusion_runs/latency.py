"""Batch-of-one fusion latency of a trained checkpoint on avmnist-t test (1 thread)."""

import json
import sys

import torch

from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.training.fusion_stems import latency_benchmark, load_fusion_stems

torch.set_num_threads(1)
cfg = load_config(None, ["data.root=/work/shared/data"])
folder = sys.argv[1]
system = load_fusion_stems(folder)
m = json.load(open(f"{folder}/metrics.json"))
thr = m["test"]["mue_thresholds"]["mue_q0.5"]
print(json.dumps(latency_benchmark(system, load_split(cfg, "test", "avmnist-t", False), 200, thr), indent=1))
