"""Simulate per-sample exit policies on dumped logits; thresholds chosen on val (calibration) only.

usage: python sim_policy.py PREFIX   (reads PREFIX.npz / PREFIX.json / PREFIX.pt written by train_cnn.py)
"""
from __future__ import annotations

import json
import sys

import numpy as np

prefix = sys.argv[1]
meta = json.load(open(prefix + ".json"))
arr = np.load(prefix + ".npz")
temps = meta["temps"]
im, am, fm = meta["img_macs"], meta["aud_macs"], meta["fus_macs"]
NI, NA = len(im), len(am)


def probs(split, key):
    z = arr[f"{split}/{key}"] / temps[key]
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def node(i, j):
    """(key, cost of the modalities' backbones+heads so far) of check (image depth i, audio depth j); -1 = not run."""
    if i >= 0 and j >= 0:
        return f"fus{i}_{j}"
    return f"img{i}" if i >= 0 else f"aud{j}"


def path_cost(path):
    """Cumulative MACs at each check of a path of (i, j) nodes (every fusion head on the path counted)."""
    costs, fus = [], 0
    for i, j in path:
        if i >= 0 and j >= 0:
            fus += fm[f"{i}_{j}"]
        costs.append((im[i] if i >= 0 else 0) + (am[j] if j >= 0 else 0) + fus)
    return costs


PATHS = {
    "img->aud (fuse at each audio exit)": [(0, -1), (1, -1), (2, -1), (2, 0), (2, 1), (2, 2)],
    "img2 then fuse": [(2, -1), (2, 0), (2, 1), (2, 2)],
    "fuse only (img2 + audio)": [(2, 0), (2, 1), (2, 2)],
    "aud0 first": [(-1, 0), (2, 0), (2, 1), (2, 2)],
    "diagonal": [(0, -1), (0, 0), (1, 1), (2, 2)],
    "img->aud0->diag": [(0, -1), (1, -1), (2, -1), (2, 0), (2, 1), (2, 2)],
}


def simulate(split, path, tau):
    y = arr[f"{split}/y"]
    costs = path_cost(path)
    n = len(y)
    done = np.zeros(n, bool)
    pred = np.zeros(n, int)
    cost = np.zeros(n)
    exits = np.zeros(len(path))
    for k, (i, j) in enumerate(path):
        p = probs(split, node(i, j))
        fire = (~done) & ((p.max(1) >= tau) if k < len(path) - 1 else True)
        pred[fire] = p[fire].argmax(1)
        cost[fire] = costs[k]
        exits[k] = fire.sum() / n
        done |= fire
    return float((pred == y).mean()), float(cost.mean()), exits


full_key = f"fus{NI - 1}_{NA - 1}"
full_macs = im[-1] + am[-1] + fm[f"{NI - 1}_{NA - 1}"]
out = {"per_exit": {}, "full": {}, "policies": {}}
for split in ("val", "test", "test_id"):
    y = arr[f"{split}/y"]
    out["per_exit"][split] = {k: round(float((probs(split, k).argmax(1) == y).mean()), 4)
                              for k in sorted({f.split("/")[1] for f in arr.files if f.startswith(split + "/")} - {"y"})}
    out["full"][split] = out["per_exit"][split][full_key]
out["macs"] = {"img": im, "aud": am, "fus": fm, "full": full_macs}
taus = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999]
for name, path in PATHS.items():
    val_full = out["full"]["val"]
    best = None
    for tau in taus:
        acc, macs, _ = simulate("val", path, tau)
        if acc >= val_full - 0.0025 and (best is None or macs < best[1]):  # chosen on calibration only
            best = (tau, macs)
    if best is None:
        best = (taus[-1], None)
    tau = best[0]
    row = {"tau": tau}
    for split in ("val", "test", "test_id"):
        acc, macs, ex = simulate(split, path, tau)
        row[split] = {"acc": round(acc, 4), "macs_M": round(macs / 1e6, 3), "full_x": round(full_macs / macs, 2),
                      "lf_x": round(11_993_032 / macs, 2), "exit_share": [round(float(e), 3) for e in ex]}
    out["policies"][name] = row
print(json.dumps(out, indent=1))
json.dump(out, open(prefix + "_sim.json", "w"), indent=1)
