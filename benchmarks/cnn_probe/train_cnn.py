"""Train image + audio CNN encoders with exits + multi-depth late-fusion heads; dump logits.

usage: python train_cnn.py DATASET EPOCHS OUT [LIMIT]
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exitflow.encoders.calibration import fit_temperature
from exitflow.encoders.cnn import CNNEarlyExitEncoder, cnn_preset
from exitflow.encoders.macs import count_macs
from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import load_split

torch.set_num_threads(2)
dataset, epochs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
EVAL_ROWS = int(sys.argv[5]) if len(sys.argv) > 5 else None  # first N rows of val/test/test_id
cfg = load_config(None, [])
torch.manual_seed(0)
rng = np.random.default_rng(0)


def tensors(split):
    s = load_split(cfg, split, dataset, progress=False)
    cap = limit if split == "train" else EVAL_ROWS
    n = len(s) if cap is None else min(cap, len(s))
    img = torch.from_numpy(np.ascontiguousarray(s.image[:n]))
    bank = torch.from_numpy(s.audio.bank)
    idx = torch.from_numpy(s.audio.index[:n])
    return img, bank, idx, torch.from_numpy(s.labels[:n])


data = {sp: tensors(sp) for sp in ("train", "val", "test", "test_id")}
print({k: len(v[3]) for k, v in data.items()}, flush=True)


class Fusion(nn.Module):
    def __init__(self, d_img, d_aud, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_img + d_aud, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, ei, ea):
        return self.net(torch.cat([ei, ea], dim=-1))


img_enc = CNNEarlyExitEncoder(cnn_preset("image", dropout=0.1))
aud_enc = CNNEarlyExitEncoder(cnn_preset("audio", dropout=0.1))
pairs = [(i, j) for i in range(img_enc.num_exits) for j in range(aud_enc.num_exits)]
fusions = nn.ModuleDict({f"{i}_{j}": Fusion(img_enc.embed_dims[i], aud_enc.embed_dims[j]) for i, j in pairs})
params = list(img_enc.parameters()) + list(aud_enc.parameters()) + list(fusions.parameters())
opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
ntrain = len(data["train"][3])
bs = 128
steps = epochs * ((ntrain + bs - 1) // bs)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)


def audio_batch(bank, idx, rows):
    return bank[idx[rows]].float().div_(255.0).unsqueeze(1)  # (B, 1, 112, 112)


def augment_audio(x):
    b = x.shape[0]
    for _ in range(2):  # SpecAugment: 2 frequency + 2 time masks up to 12 bins
        for axis in (2, 3):
            w = torch.randint(0, 13, (b,))
            s = (torch.rand(b) * (112 - w)).long()
            ar = torch.arange(112)
            m = (ar[None] >= s[:, None]) & (ar[None] < (s + w)[:, None])  # (B, 112)
            shape = (b, 1, 112, 1) if axis == 2 else (b, 1, 1, 112)
            x = x.masked_fill(m.view(shape), 0.0)
    shift = int(torch.randint(-8, 9, ()))
    return torch.roll(x, shift, dims=3)


def augment_image(x):
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
    return torch.roll(x, (dy, dx), dims=(2, 3))


def run_all(img, aud):
    oi = img_enc(img)
    oa = aud_enc(aud)
    fl = {k: fusions[k](oi[int(k[0])].embedding, oa[int(k[2])].embedding) for k in fusions}
    return oi, oa, fl


@torch.no_grad()
def collect(split):
    img_enc.eval()
    aud_enc.eval()
    fusions.eval()
    img, bank, idx, y = data[split]
    res = {}
    for start in range(0, len(y), 500):
        rows = torch.arange(start, min(start + 500, len(y)))
        oi, oa, fl = run_all(img[rows], audio_batch(bank, idx, rows))
        for k, o in enumerate(oi):
            res.setdefault(f"img{k}", []).append(o.logits * img_enc.temperatures[k])  # raw
        for k, o in enumerate(oa):
            res.setdefault(f"aud{k}", []).append(o.logits * aud_enc.temperatures[k])
        for k, v in fl.items():
            res.setdefault(f"fus{k}", []).append(v)
    return {k: torch.cat(v) for k, v in res.items()}, y


def accs(logits, y):
    return {k: round(float((v.argmax(1) == y).float().mean()), 4) for k, v in logits.items()}


best, best_state, log = -1.0, None, []
t0 = time.time()
for epoch in range(epochs):
    img_enc.train()
    aud_enc.train()
    fusions.train()
    img, bank, idx, y = data["train"]
    perm = torch.from_numpy(rng.permutation(ntrain))
    tot = 0.0
    for bi, start in enumerate(range(0, ntrain, bs)):
        rows = perm[start : start + bs]
        xi = augment_image(img[rows])
        xa = augment_audio(audio_batch(bank, idx, rows))
        oi, oa, fl = run_all(xi, xa)
        losses = [F.cross_entropy(o.logits, y[rows]) for o in oi + oa] + [F.cross_entropy(v, y[rows]) for v in fl.values()]
        loss = sum(losses) / len(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        tot += float(loss.detach())
        if bi % 20 == 0:
            print(f"epoch {epoch} batch {bi} loss {tot / (bi + 1):.3f} {time.time() - t0:.0f}s", flush=True)
    vl, vy = collect("val")
    va = accs(vl, vy)
    score = va[f"fus{img_enc.num_exits - 1}_{aud_enc.num_exits - 1}"]
    log.append({"epoch": epoch, "val": va, "s": time.time() - t0})
    print(json.dumps(log[-1]), flush=True)
    if score > best:  # early stopping on calibration data
        best = score
        best_state = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in (("img", img_enc), ("aud", aud_enc), ("fus", fusions))}

for k, m in (("img", img_enc), ("aud", aud_enc), ("fus", fusions)):
    m.load_state_dict(best_state[k])
vl, vy = collect("val")
temps = {k: fit_temperature(v, vy) for k, v in vl.items()}
img_enc.set_temperatures([temps[f"img{k}"] for k in range(img_enc.num_exits)])
aud_enc.set_temperatures([temps[f"aud{k}"] for k in range(aud_enc.num_exits)])
fus_macs = {k: count_macs(fusions[k], torch.zeros(1, img_enc.embed_dims[int(k[0])]), torch.zeros(1, aud_enc.embed_dims[int(k[2])])) for k in fusions}
dump = {"temps": temps, "img_macs": img_enc.exit_macs(), "aud_macs": aud_enc.exit_macs(), "fus_macs": fus_macs, "log": log}
arrays = {}
for split in ("val", "test", "test_id"):
    lg, y = collect(split)
    dump[f"acc_{split}"] = accs(lg, y)
    for k, v in lg.items():
        arrays[f"{split}/{k}"] = v.numpy()
    arrays[f"{split}/y"] = y.numpy()
np.savez(out + ".npz", **arrays)
torch.save({"img": img_enc.state_dict(), "aud": aud_enc.state_dict(), "fus": fusions.state_dict(),
            "img_cfg": img_enc.config.to_dict(), "aud_cfg": aud_enc.config.to_dict(), "temps": temps}, out + ".pt")
json.dump(dump, open(out + ".json", "w"), indent=1)
print(json.dumps({k: dump[k] for k in ("acc_val", "acc_test", "acc_test_id")}), flush=True)
