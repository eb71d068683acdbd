"""Training the concatenation fusion exit (:class:`exitflow.encoders.late_fusion.MaskedLateFusion`).

It learns on the frozen encoders' final embeddings with a random subset of modalities per batch,
so the fusion works over whatever the scheduler computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from exitflow.encoders.late_fusion import MaskedLateFusion
from exitflow.pipeline.artifacts import NUM_CLASSES, fusion_folder, weight_files
from exitflow.pipeline.checkpoints import save_checkpoint
from exitflow.pipeline.config import Config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.batches import batch_rows
from exitflow.pipeline.inference.loading import load_encoders
from exitflow.pipeline.training.records import ExitRecords, collect_exits, subsets
from exitflow.scheduler.profile import (
    fingerprint_checkpoints,
)


def fusion_logits(fusion: MaskedLateFusion, records: dict[str, ExitRecords], present: tuple[str, ...], rows) -> torch.Tensor:
    emb = {m: torch.from_numpy(records[m].final_embedding[rows]) for m in present}
    return fusion(emb, list(present))


def fusion_accuracy(fusion: MaskedLateFusion, records: dict[str, ExitRecords], labels: np.ndarray) -> dict[str, float]:
    """Accuracy of the fusion exit for every modality subset (key: ``image+audio``)."""
    fusion.eval()
    rows = np.arange(labels.shape[0])
    with torch.no_grad():
        return {
            "+".join(s): float((fusion_logits(fusion, records, s, rows).argmax(1).numpy() == labels).mean())
            for s in subsets(tuple(records))
        }


def train_late_fusion(cfg: Config, dataset: str, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train the fusion exit on frozen encoders; saves ``checkpoints/fusion_late_<dataset>``."""
    t = cfg.train
    torch.manual_seed(t.seed)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    encoders = load_encoders(cfg, dataset, prefer_joint=False)
    train, val, test = (load_split(cfg, s, dataset, progress) for s in ("train", "val", "test"))
    rec_train = collect_exits(encoders, train, t.limit, progress=progress)
    rec_val = collect_exits(encoders, val, progress=progress)
    rec_test = collect_exits(encoders, test, progress=progress)
    dims = {m: int(r.final_embedding.shape[1]) for m, r in rec_train.items()}
    fusion = MaskedLateFusion(dims, NUM_CLASSES, hidden_dim=64)
    opt = torch.optim.Adam(fusion.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    n = rec_train[next(iter(dims))].final_embedding.shape[0]
    labels = train.labels[:n]
    choices = subsets(tuple(dims))
    rng = np.random.default_rng(t.seed)
    epochs = max(t.epochs, 10)  # embeddings are precomputed: epochs are cheap
    for epoch in range(epochs):
        fusion.train()
        for rows in batch_rows(n, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch):
            # the full set half of the time (what the scheduler fuses most), else a random subset
            present = choices[-1] if rng.random() < 0.5 else choices[rng.integers(len(choices))]
            loss = torch.nn.functional.cross_entropy(
                fusion_logits(fusion, rec_train, present, rows), torch.from_numpy(labels[rows])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    val_acc = fusion_accuracy(fusion, rec_val, val.labels)
    test_acc = fusion_accuracy(fusion, rec_test, test.labels)
    macs = fusion.macs
    meta = {
        "kind": "fusion_late", "dataset": dataset, "dims": dims, "hidden_dim": 64, "num_classes": NUM_CLASSES,
        "val_accuracy": val_acc, "test_accuracy": test_acc, "macs_per_sample": macs, "train_samples": int(n),
        "encoders": fingerprint_checkpoints(weight_files(cfg, dataset, with_fusion=False, prefer_joint=False)),
        "seed": t.seed,
    }
    rows_md = "\n".join(f"| {k} | {val_acc[k]:.4f} | {test_acc[k]:.4f} |" for k in val_acc)
    card = f"""# Fusion exit on {dataset}

Masked late fusion (`pipeline/engine.py: MaskedLateFusion`): per-modality final-exit embeddings of the
frozen early-exit encoders ({', '.join(f'{m}: {d}' for m, d in dims.items())} dims), a learned placeholder for each
modality not computed, concatenation, MLP (hidden 64). Trained with a random modality subset per batch
(the full set half of the time), {epochs} epochs over {n} training samples, Adam lr {t.lr}, seed {t.seed}.

Command: `{command or f'exitflow train joint --dataset {dataset}'}`

| modalities fused | val accuracy | test accuracy |
|---|---|---|
{rows_md}

Fusion MACs per sample: {macs:,} (flop counter). Encoders fingerprint: `{meta['encoders'][:16]}`.
"""
    save_checkpoint(fusion_folder(cfg, dataset), fusion, meta, card)
    return meta
