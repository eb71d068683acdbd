"""Train the CNN family: image + audio CNN encoders with an exit per block and the exit-grid fusion.

Everything is trained jointly from scratch (every exit head, every fusion head of the grid, and
the fusion with one modality absent), on every training row, with augmentation made for each
modality: SpecAugment frequency/time masks, a time shift and a level change for the spectrogram,
a shift of a few pixels for the image. Training stops early on the calibration split's accuracy
of the full model (``val``: a speaker the encoders never heard). Per-exit and per-fusion-head
temperatures are then fitted on ``val``. The result is ``checkpoints/cnn_<dataset>/`` (``image/``,
``audio/``, ``fusion/`` and a model card); the per-exit logits of every evaluation split are
written beside it for the operating-point search (``exitflow calibrate``).

The loss weights every output equally by default; ``reweight: mmexit`` uses MMExit's double-stage
re-weighting (:class:`encoders.joint_loss.DoubleStageReweighter`, loss values as the running signal,
stages alternating per update): final exits + every fusion head, then the earlier exits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from tqdm import tqdm

from exitflow.encoders.calibration import fit_temperature
from exitflow.encoders.checkpoint import checksum_lines, save_encoder, write_model_card
from exitflow.encoders.cnn import CNNEarlyExitEncoder, cnn_preset
from exitflow.encoders.fusion_grid import ExitGridFusion, grid_key
from exitflow.encoders.joint_loss import DoubleStageReweighter
from exitflow.pipeline.artifacts import NUM_CLASSES, cnn_folder
from exitflow.pipeline.checkpoints import save_checkpoint
from exitflow.pipeline.config import Config
from exitflow.pipeline.data.avmnist import AVSplit, load_split
from exitflow.pipeline.training.augment import augment_audio, augment_image
from exitflow.pipeline.training.calibrate import family_logits, split_logits

log = logging.getLogger(__name__)
MODALITIES = ("image", "audio")
EVAL_SPLITS = ("val", "test", "test_id")


@dataclasses.dataclass(frozen=True)
class CNNTrainSettings:
    """How the CNN family is trained (``exitflow train cnn`` flags)."""

    epochs: int = 1
    schedule_epochs: int = 3  # the one-cycle learning rate is laid out over this many epochs (>= epochs)
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    limit: int | None = None  # training rows (None = all)
    eval_limit: int | None = None  # rows of each evaluation split (None = all)
    dropout: float = 0.1
    fusion_hidden: int = 64
    modality_dropout: float = 0.15
    reweight: str = "uniform"  # uniform | mmexit
    num_threads: int = 0


# -- data ----------------------------------------------------------------------------------------
def split_tensors(split: AVSplit, limit: int | None) -> dict[str, torch.Tensor]:
    n = len(split) if limit is None else min(limit, len(split))
    return {
        "image": torch.from_numpy(np.ascontiguousarray(split.image[:n])),
        "bank": torch.from_numpy(np.asarray(split.audio.bank)),
        "index": torch.from_numpy(np.asarray(split.audio.index[:n])),
        "labels": torch.from_numpy(split.labels[:n]),
    }


def audio_rows(data: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Spectrograms of ``rows`` as float (B, 1, 112, 112) in [0, 1] (the bank holds uint8)."""
    bank = data["bank"][data["index"][rows]]
    return (bank.float().div_(255.0) if bank.dtype == torch.uint8 else bank.float()).reshape(len(rows), 1, 112, 112)


# -- the model -----------------------------------------------------------------------------------
class CNNFamily(torch.nn.Module):
    """The two encoders and the grid fusion, as one module for training."""

    def __init__(self, dropout: float, fusion_hidden: int):
        super().__init__()
        self.encoders = torch.nn.ModuleDict(
            {m: CNNEarlyExitEncoder(cnn_preset(m, dropout=dropout)) for m in MODALITIES}
        )
        dims = {m: self.encoders[m].embed_dims for m in MODALITIES}
        self.fusion = ExitGridFusion(dims, NUM_CLASSES, fusion_hidden)

    def forward(self, inputs: dict[str, torch.Tensor], calibrated: bool = False) -> dict[str, torch.Tensor]:
        """Logits of every exit and every grid head (:func:`~pipeline.training.calibrate.family_logits`);
        ``calibrated`` divides by the stored temperatures (inference), training reads raw logits."""
        return family_logits(self.encoders, self.fusion, inputs, calibrated)


def _outputs_with_absent(model: CNNFamily, inputs: dict[str, torch.Tensor], gen: torch.Generator, p: float):
    """Training outputs, plus the fused output with one modality absent at a random exit of the other."""
    logits = model(inputs)
    if p > 0 and float(torch.rand((), generator=gen)) < p * 2:
        absent = MODALITIES[int(torch.randint(0, 2, (), generator=gen))]
        kept = next(m for m in MODALITIES if m != absent)
        outs = model.encoders[kept](inputs[kept])
        e = int(torch.randint(0, len(outs), (), generator=gen))
        logits[f"{kept}_alone"] = model.fusion.fuse({kept: outs[e].embedding}, {kept: e}, calibrated=False)
    return logits


def accuracies(logits: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    return {k: round(float((v.argmax(1) == labels).mean()), 4) for k, v in logits.items()}


def full_key(model: CNNFamily) -> str:
    return grid_key({m: model.encoders[m].num_exits - 1 for m in MODALITIES}, MODALITIES)


def _loss(logits: dict[str, torch.Tensor], y: torch.Tensor, rw: DoubleStageReweighter | None, epoch: int):
    if rw is None:
        losses = [F.cross_entropy(v, y) for v in logits.values()]
        return sum(losses) / len(losses)
    grouped: dict[str, Any] = {m: [F.cross_entropy(logits[f"{m}{e}"], y) for e in range(3)] for m in MODALITIES}
    fused = [F.cross_entropy(v, y) for k, v in logits.items() if "_" in k]
    grouped["fusion"] = sum(fused) / len(fused)
    return rw(grouped, epoch)


def fit_temperatures(model: CNNFamily, logits: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Fit and store a temperature per exit and per fusion head on calibration logits (uncalibrated)."""
    y = torch.from_numpy(labels)
    temps = {k: fit_temperature(torch.from_numpy(v), y) for k, v in logits.items() if "alone" not in k}
    for m in MODALITIES:
        model.encoders[m].set_temperatures([temps[f"{m}{e}"] for e in range(model.encoders[m].num_exits)])
    model.fusion.set_temperatures({k: temps[k] for k in model.fusion.keys()})
    return temps


def train_cnn_family(
    cfg: Config, dataset: str, settings: CNNTrainSettings, out: Path | None = None, progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train, calibrate temperatures, save ``out`` (default ``checkpoints/cnn_<dataset>``); returns the card data."""
    if dataset not in ("avmnist", "avmnist-noisy"):
        raise ValueError(f"the CNN family covers image + audio data sets (avmnist, avmnist-noisy), not {dataset!r}")
    s = settings
    if s.num_threads:
        torch.set_num_threads(s.num_threads)
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    started = time.time()
    train = split_tensors(load_split(cfg, "train", dataset, progress), s.limit)
    evals = {sp: load_split(cfg, sp, dataset, progress).head(s.eval_limit) for sp in EVAL_SPLITS}
    model = CNNFamily(s.dropout, s.fusion_hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    n = len(train["labels"])
    per_epoch = (n + s.batch_size - 1) // s.batch_size
    if s.schedule_epochs < s.epochs:
        raise ValueError(f"schedule_epochs ({s.schedule_epochs}) must be >= epochs ({s.epochs})")
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=s.lr, total_steps=s.schedule_epochs * per_epoch, pct_start=0.15)
    rw = None
    if s.reweight == "mmexit":
        # MMExit's Algorithm 1 alternates the two stages from one update to the next (the loop over i);
        # the softmax temperature decays over all updates
        rw = DoubleStageReweighter({m: 3 for m in MODALITIES}, total_epochs=s.epochs * per_epoch)
    elif s.reweight != "uniform":
        raise ValueError(f"reweight must be uniform or mmexit, got {s.reweight!r}")
    best, best_state, history = -1.0, None, []
    for epoch in range(s.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        bar = tqdm(range(per_epoch), desc=f"cnn {dataset} epoch {epoch + 1}/{s.epochs}", disable=not progress)
        for b in bar:
            rows = perm[b * s.batch_size : (b + 1) * s.batch_size]
            inputs = {
                "image": augment_image(train["image"][rows].float(), gen),
                "audio": augment_audio(audio_rows(train, rows), gen),
            }
            logits = _outputs_with_absent(model, inputs, gen, s.modality_dropout)
            y = train["labels"][rows]
            loss = _loss(logits, y, rw, epoch * per_epoch + b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if b % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        val_acc = accuracies(*split_logits(model.encoders, model.fusion, evals["val"]))
        history.append({"epoch": epoch + 1, "val_full": val_acc[full_key(model)], "s": round(time.time() - started)})
        log.info("cnn %s epoch %d: %s", dataset, epoch + 1, json.dumps(history[-1]))
        if val_acc[full_key(model)] > best:  # early stopping on the calibration speaker
            best = val_acc[full_key(model)]
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    temps = fit_temperatures(model, *split_logits(model.encoders, model.fusion, evals["val"]))  # T still 1: raw
    out = out or cnn_folder(cfg, dataset)
    return _save(model, out, cfg, dataset, settings, evals, temps, history, command, round(time.time() - started))


def _save(model, out, cfg, dataset, settings, evals, temps, history, command, train_s) -> dict[str, Any]:
    logits, labels = {}, {}
    for sp in EVAL_SPLITS:
        logits[sp], labels[sp] = split_logits(model.encoders, model.fusion, evals[sp])
    acc = {sp: accuracies(logits[sp], labels[sp]) for sp in EVAL_SPLITS}
    macs = {f"{m}{e}": model.encoders[m].exit_macs()[e] for m in MODALITIES for e in range(3)}
    macs.update({k: v for k, v in model.fusion.head_macs.items()})
    meta = {"dataset": dataset, "settings": dataclasses.asdict(settings), "command": command, "history": history}
    out.mkdir(parents=True, exist_ok=True)
    for m in MODALITIES:
        save_encoder(model.encoders[m], out / m, metadata={**meta, "temperatures": model.encoders[m].temperatures.tolist()})
    fusion_meta = {
        "kind": "fusion_grid", "dims": {m: model.fusion.dims[m] for m in MODALITIES},
        "num_classes": NUM_CLASSES, "hidden_dim": model.fusion.hidden_dim, "command": command,
    }
    save_checkpoint(out / "fusion", model.fusion, fusion_meta, "# Exit-grid fusion\n\nSee ../MODEL_CARD.md.")
    np.savez_compressed(out / "logits.npz", **{f"{sp}/{k}": v for sp in EVAL_SPLITS for k, v in logits[sp].items()},
                        **{f"{sp}/labels": labels[sp] for sp in EVAL_SPLITS})
    report = {"dataset": dataset, "accuracy": acc, "macs": macs, "temperatures": temps, "history": history,
              "settings": dataclasses.asdict(settings), "command": command, "train_s": train_s, "rows": {
                  sp: int(len(labels[sp])) for sp in EVAL_SPLITS}}
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    _write_cards(model, out, report)
    return report


def _write_cards(model: CNNFamily, out: Path, report: dict[str, Any]) -> None:
    """MODEL_CARD.md of the family (every exit and fusion head) and of each encoder."""
    acc, macs, temps, s = report["accuracy"], report["macs"], report["temperatures"], report["settings"]
    rows = sorted((k for k in macs), key=lambda k: (k.count("_"), macs[k]))
    data = (f"{report['dataset']} (`pipeline/data/avmnist.py`): train = speakers george, jackson, lucas "
            f"(recordings 0-39) with 55,000 MNIST rows; val (calibration, early stopping, temperatures) = "
            f"speaker nicolas; test = speaker theo (unseen voice, unseen MNIST test images); test_id = the "
            f"training speakers' recordings 40-49. Rows evaluated: {report['rows']}.")
    training = (f"{s['epochs']} epochs (best by val full accuracy: epoch "
                f"{max(report['history'], key=lambda h: h['val_full'])['epoch']}), batch {s['batch_size']}, AdamW + "
                f"one-cycle max lr {s['lr']}, weight decay {s['weight_decay']}, dropout {s['dropout']}, modality "
                f"dropout {s['modality_dropout']}, loss weights {s['reweight']}; audio: frequency warp 0.85-1.15, "
                f"time scale 0.9-1.1 and shift, SpecAugment 2+2 masks, level +-0.05; image: shift +-2 px. "
                f"Training time {report.get('train_s', '?')} s on 2 CPU cores.")
    table = ["| output | MACs/sample (cumulative) | T (val) | val | test (unseen speaker) | test_id |",
             "|---|---|---|---|---|---|"]
    for k in rows:
        cost = macs[k] if "_" not in k else (
            f"head {macs[k]:,} (+ encoders to " + " and ".join(k.split("_")) + ")")
        cost = f"{cost:,}" if isinstance(cost, int) else cost
        table.append(f"| {k} | {cost} | {temps.get(k, 1.0):.3f} | {acc['val'][k]:.4f} | {acc['test'][k]:.4f} "
                     f"| {acc['test_id'][k]:.4f} |")
    text = "\n".join([
        f"# CNN family on {report['dataset']}", "",
        "Image and audio CNN encoders with an exit after every block (`encoders/cnn.py`) and a late-fusion head "
        "for every pair of exits (`encoders/fusion_grid.py`), trained jointly (`pipeline/training/cnn_family.py`). "
        "Scores are divided by per-output temperatures fitted on val.", "",
        "## Data", "", data, "", "## How it was made", "", "```", str(report.get("command")), "```", "",
        f"Seed: {s['seed']}", "", training, "", "## Every output (MACs by torch.utils.flop_counter)", "",
        *table, "", "The operating point (exit thresholds) is chosen on val by `exitflow calibrate` and stored in "
        "`profile.json`.", "",
    ])
    (out / "MODEL_CARD.md").write_text(text + "\n".join(checksum_lines(out / "fusion")) + "\n")
    for m in MODALITIES:
        enc = model.encoders[m]
        exits = [{"exit": e, "layer": e + 1, "head": f"avgpool {enc.config.head_pool}x{enc.config.head_pool} + linear",
                  "head_params": sum(p.numel() for p in enc.heads[e].parameters()),
                  "head_macs": enc.head_macs()[e], "cumulative_macs": enc.exit_macs()[e],
                  "val_accuracy": acc["val"][f"{m}{e}"], "test_accuracy": acc["test"][f"{m}{e}"]}
                 for e in range(enc.num_exits)]
        write_model_card(out / m, {
            "title": f"{m} CNN encoder with exits ({report['dataset']})", "data": data,
            "command": str(report.get("command")), "seed": s["seed"], "training": training, "exits": exits,
            "backbone": json.dumps(enc.config.to_dict()), "notes": ["See ../MODEL_CARD.md for the fusion heads."],
        })
