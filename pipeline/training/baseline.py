"""Training and evaluating the late-fusion / uni-modal baselines on AV-MNIST.

``train_baseline`` trains with Adam on the train split, keeps the epoch with the best
validation accuracy, measures test accuracy, MACs per sample (flop counter) and parameter
count, and writes a checkpoint folder with a model card.
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from exitflow.encoders.baseline import BaselineConfig, LateFusion, measure_macs
from exitflow.pipeline.artifacts import baseline_folder
from exitflow.pipeline.checkpoints import save_checkpoint
from exitflow.pipeline.config import Config
from exitflow.pipeline.data.avmnist import AVSplit, load_split
from exitflow.pipeline.data.batches import batch_rows, modality_batch
from exitflow.pipeline.training.augment import augment_audio, augment_image


@dataclass(frozen=True)
class BaselineResult:
    name: str
    val_accuracy: float
    test_accuracy: float
    macs_per_sample: int
    parameters: int
    folder: Path






@torch.no_grad()
def predict(model: LateFusion, split: AVSplit, batch_size: int = 512, progress: bool = False) -> np.ndarray:
    model.eval()
    preds = []
    for rows in tqdm(list(batch_rows(len(split), batch_size)), desc="eval", disable=not progress, leave=False):
        logits = model(modality_batch(split, model.modalities, rows))
        preds.append(logits.argmax(dim=1).numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def accuracy(model: LateFusion, split: AVSplit) -> float:
    return float((predict(model, split) == split.labels).mean()) if len(split) else float("nan")


def train_baseline(
    cfg: Config, name: str, dataset: str = "avmnist", progress: bool = True, command: str | None = None,
    augment: bool = False,
) -> BaselineResult:
    """Train a baseline; ``augment`` applies the CNN family's augmentation (frequency warp, SpecAugment,
    shifts: ``pipeline/training/augment.py``) so both are trained for unseen voices alike."""
    t = cfg.train
    gen = torch.Generator().manual_seed(t.seed)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    torch.manual_seed(t.seed)
    arch = BaselineConfig(name=name)
    model = LateFusion(arch)
    train, val, test = (load_split(cfg, s, dataset, progress) for s in ("train", "val", "test"))
    n_train = min(len(train), t.limit) if t.limit else len(train)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    best_acc, best_state, best_epoch = -1.0, None, 0
    start = time.perf_counter()
    for epoch in range(t.epochs):
        model.train()
        batches = list(batch_rows(n_train, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch))
        bar = tqdm(batches, desc=f"{name} epoch {epoch + 1}/{t.epochs}", disable=not progress, unit="batch")
        for rows in bar:
            inputs = modality_batch(train, model.modalities, rows)
            if augment:
                inputs = {m: augment_audio(x, gen) if m == "audio" else augment_image(x, gen) for m, x in inputs.items()}
            logits = model(inputs)
            loss = loss_fn(logits, torch.from_numpy(train.labels[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        val_acc = accuracy(model, val)
        if progress:
            print(f"  epoch {epoch + 1}: val accuracy {val_acc:.4f}", flush=True)
        if val_acc > best_acc:
            best_acc, best_state, best_epoch = val_acc, copy.deepcopy(model.state_dict()), epoch + 1
    train_s = time.perf_counter() - start
    model.load_state_dict(best_state)
    test_acc = accuracy(model, test)
    macs, params = measure_macs(model), sum(p.numel() for p in model.parameters())
    folder = baseline_folder(cfg, name, dataset)
    meta = {
        "kind": "baseline",
        "arch": arch.to_dict(),
        "dataset": dataset,
        "val_accuracy": best_acc,
        "test_accuracy": test_acc,
        "test_samples": len(test),
        "macs_per_sample": macs,
        "parameters": params,
        "best_epoch": best_epoch,
        "seed": t.seed,
        "augment": augment,
    }
    command = command or f"exitflow train baseline --name {name} --dataset {dataset}"
    card = _model_card(name, dataset, meta, command, cfg, n_train, len(val), train_s)
    save_checkpoint(folder, model, meta, card)
    return BaselineResult(name, best_acc, test_acc, macs, params, folder)




def _model_card(name: str, dataset: str, meta: dict, command: str, cfg: Config, n_train: int, n_val: int, train_s: float) -> str:
    d, t = cfg.data, cfg.train
    what = {"lf": "late fusion (image LeNet + audio LeNet, concat, MLP)", "image": "image-only LeNet + MLP",
            "audio": "audio-only LeNet + MLP"}[name]
    return f"""# Baseline `{name}` on {dataset}

{what}; the MMExit/MultiBench late-fusion baseline family.

| field | value |
|---|---|
| data | {dataset} built from MNIST + FSDD (`pipeline/data/avmnist.py`), image energy removed {d.image_energy_removed}, audio SNR {d.audio_snr_db}, data seed {d.seed} |
| train / val / test samples | {n_train} / {n_val} / {meta['test_samples']} |
| command | `{command}` |
| training | {t.epochs} epochs, batch {t.batch_size}, Adam lr {t.lr}, weight decay {t.weight_decay}, seed {t.seed}, best epoch by val: {meta['best_epoch']}, augmentation: {"frequency warp, time scale/shift, SpecAugment, level; image shift (pipeline/training/augment.py)" if meta.get("augment") else "none"} |
| val accuracy | {meta['val_accuracy']:.4f} |
| test accuracy | {meta['test_accuracy']:.4f} |
| MACs per sample | {meta['macs_per_sample']:,} (torch.utils.flop_counter) |
| parameters | {meta['parameters']:,} |
| trained on | {platform.processor() or platform.machine()}, torch {torch.__version__}, {train_s:.0f} s |
"""
