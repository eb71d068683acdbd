"""MMExit joint training: every exit of every modality plus the fusion exit, re-weighted.

Starts from the separately trained encoders and the fusion exit, then fine-tunes them together
with :class:`encoders.joint_loss.DoubleStageReweighter` (running means of per-exit losses,
softmax weights with a decreasing temperature, epochs alternating between the final exits plus
fusion and the remaining exits). The text backbone stays frozen (its pretrained weights are not
part of the checkpoint); ViT backbones, all heads and the fusion are trained. The result is a
separate checkpoint set ``checkpoints/joint_<dataset>/`` that the adaptive systems use when
``joint.use`` is true and it exists.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from exitflow.encoders.checkpoint import save_encoder
from exitflow.encoders.joint_loss import FUSION_KEY, DoubleStageReweighter
from exitflow.pipeline.artifacts import joint_folder
from exitflow.pipeline.checkpoints import save_checkpoint
from exitflow.pipeline.config import Config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.batches import batch_rows, modality_batch
from exitflow.pipeline.inference.loading import load_encoders, load_fusion_exit
from exitflow.pipeline.training.late_fusion import fusion_accuracy
from exitflow.pipeline.training.records import collect_exits, subsets
from exitflow.scheduler.profile import fingerprint_checkpoints


def _per_exit_accuracy(records, labels: np.ndarray) -> dict[str, list[float]]:
    return {m: [float((r.logits[e].argmax(-1) == labels).mean()) for e in range(r.logits.shape[0])]
            for m, r in records.items()}


def joint_finetune(cfg: Config, dataset: str, progress: bool = True, command: str | None = None) -> dict:
    j, t = cfg.joint, cfg.train
    torch.manual_seed(t.seed)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    encoders = load_encoders(cfg, dataset, prefer_joint=False)
    fusion = load_fusion_exit(cfg, dataset, prefer_joint=False)
    train, val = (load_split(cfg, s, dataset, progress) for s in ("train", "val"))
    before = collect_exits(encoders, val, j.eval_limit, progress=progress)
    labels_val = val.labels[: before[next(iter(before))].logits.shape[1]]
    params = [p for enc in encoders.values() for p in enc.parameters() if p.requires_grad]
    params += list(fusion.parameters())
    opt = torch.optim.AdamW(params, lr=j.lr, weight_decay=t.weight_decay)
    rw = DoubleStageReweighter({m: e.num_exits for m, e in encoders.items()}, total_epochs=j.epochs,
                               alpha=j.alpha, tau_start=j.tau_start, tau_end=j.tau_end)
    choices = subsets(tuple(encoders))
    rng = np.random.default_rng(t.seed)
    n = min(j.limit, len(train)) if j.limit else len(train)
    history = []
    for epoch in range(j.epochs):
        for enc in encoders.values():
            enc.train()
        fusion.train()
        batches = list(batch_rows(n, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch))
        bar = tqdm(batches, desc=f"joint epoch {epoch + 1}/{j.epochs} ({rw.stage(epoch)})", disable=not progress)
        for rows in bar:
            inputs = modality_batch(train, list(encoders), rows)
            y = torch.from_numpy(train.labels[rows])
            outs = {m: enc(inputs[m]) for m, enc in encoders.items()}
            losses: dict[str, object] = {
                m: [torch.nn.functional.cross_entropy(o.logits, y) for o in exits] for m, exits in outs.items()
            }
            present = choices[-1] if rng.random() < 0.5 else choices[rng.integers(len(choices))]
            fused = fusion({m: outs[m][-1].embedding for m in present}, list(present))
            losses[FUSION_KEY] = torch.nn.functional.cross_entropy(fused, y)
            loss = rw(losses, epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"epoch": epoch, "stage": rw.stage(epoch), "weights": {m: w.tolist() for m, w in rw.weights(epoch).items()}})
    for enc in encoders.values():
        enc.eval()
    fusion.eval()
    after = collect_exits(encoders, val, j.eval_limit, progress=progress)
    folder = joint_folder(cfg, dataset)
    for m, enc in encoders.items():
        save_encoder(enc, folder / m, {"joint_from": "separately trained checkpoints", "command": command})
    result = {
        "kind": "fusion_late", "dataset": dataset, "dims": fusion.dims, "hidden_dim": fusion.hidden_dim,
        "num_classes": fusion.num_classes, "macs_per_sample": fusion.macs, "joint": True,
        "per_exit_val_before": _per_exit_accuracy(before, labels_val),
        "per_exit_val_after": _per_exit_accuracy(after, labels_val),
        "fusion_val_before": fusion_accuracy_of(before, labels_val, cfg, dataset),
        "fusion_val_after": fusion_accuracy(fusion, after, labels_val),
        "epochs": j.epochs, "train_samples": n, "lr": j.lr, "seed": t.seed, "history": history,
    }
    result["encoders"] = fingerprint_checkpoints([folder / m / "model.safetensors" for m in encoders])
    save_checkpoint(folder / "fusion", fusion, result, _card(result, command, dataset))
    return result


def fusion_accuracy_of(records, labels, cfg: Config, dataset: str) -> dict[str, float]:
    return fusion_accuracy(load_fusion_exit(cfg, dataset, prefer_joint=False), records, labels)


def _card(r: dict, command: str | None, dataset: str) -> str:
    rows = []
    for m, accs in r["per_exit_val_before"].items():
        for e, acc in enumerate(accs):
            rows.append(f"| {m} exit {e} | {acc:.4f} | {r['per_exit_val_after'][m][e]:.4f} |")
    for k, acc in r["fusion_val_before"].items():
        rows.append(f"| fusion {k} | {acc:.4f} | {r['fusion_val_after'][k]:.4f} |")
    table = "\n".join(rows)
    return f"""# Joint fine-tune (MMExit double-stage re-weighting) on {dataset}

Starting from the separately trained encoders and fusion exit; {r['epochs']} epochs over {r['train_samples']}
training samples, AdamW lr {r['lr']}, seed {r['seed']}; text backbone frozen.

Command: `{command or f'exitflow train joint --dataset {dataset}'}`

| exit | val accuracy before | val accuracy after |
|---|---|---|
{table}
"""
