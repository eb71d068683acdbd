"""Exit and token records: every exit of the frozen encoders over a split, kept for offline work.

- ``collect_exits`` runs every exit of every encoder over a split (batched) and keeps the
  per-exit logits and the final-exit embeddings (:class:`ExitRecords`).
- ``collect_tokens`` keeps the final-exit token states that the transformer fusion exit reads
  (:class:`TokenRecords`), and ``run_records`` runs that fusion over them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.fusion import FusionOutput, FusionTransformer, exit_tokens
from exitflow.pipeline.data.avmnist import AVSplit
from exitflow.pipeline.data.batches import batch_rows, modality_batch


@dataclass
class ExitRecords:
    """Every exit of one modality over a split."""

    logits: np.ndarray  # (E, N, C)
    final_embedding: np.ndarray  # (N, D)


@torch.no_grad()
def collect_exits(
    encoders: dict[str, EarlyExitEncoder], split: AVSplit, limit: int | None = None, batch_size: int = 256,
    progress: bool = True,
) -> dict[str, ExitRecords]:
    n = len(split) if limit is None else min(limit, len(split))
    out = {}
    for m, enc in encoders.items():
        logits, embeds = [], []
        for rows in tqdm(list(batch_rows(n, batch_size)), desc=f"exits {m}", disable=not progress, leave=False):
            outs = enc(modality_batch(split, [m], rows)[m])
            logits.append(np.stack([o.logits.float().numpy() for o in outs]))  # (E, B, C)
            embeds.append(outs[-1].embedding.float().numpy())  # (B, D)
        out[m] = ExitRecords(np.concatenate(logits, axis=1), np.concatenate(embeds))
    return out


def subsets(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty subset, in a fixed order (singletons first)."""
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


@dataclass
class TokenRecords:
    """Final-exit token states of every modality over the first ``n`` rows of a split."""

    hidden: dict[str, torch.Tensor]  # modality -> (N, T_m, D_m) float16
    masks: dict[str, torch.Tensor | None]  # modality -> (N, T_m) validity, or None (no padding)
    labels: np.ndarray  # (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, rows: np.ndarray, present: tuple[str, ...]) -> tuple[dict, dict]:
        idx = torch.from_numpy(np.asarray(rows))
        tokens = {m: self.hidden[m][idx].float() for m in present}
        masks = {m: (None if self.masks[m] is None else self.masks[m][idx]) for m in present}
        return tokens, masks


@torch.no_grad()
def collect_tokens(
    encoders: dict[str, EarlyExitEncoder], split: AVSplit, limit: int | None = None, batch_size: int = 256,
    progress: bool = True, with_embedding: bool = True,
) -> TokenRecords:
    n = len(split) if limit is None else min(limit, len(split))
    hidden, masks = {}, {}
    for m, enc in encoders.items():
        parts, mparts = [], []
        for rows in tqdm(list(batch_rows(n, batch_size)), desc=f"tokens {m}", disable=not progress, leave=False):
            last = enc(modality_batch(split, [m], rows)[m])[-1]
            tokens, mask = exit_tokens(last, with_embedding)  # what fuse_exits will give the fusion
            parts.append(tokens.to(torch.float16))  # (B, T, D)
            if mask is not None:
                mparts.append(mask.float())  # (B, T)
        hidden[m] = torch.cat(parts)
        masks[m] = torch.cat(mparts) if mparts else None
    return TokenRecords(hidden, masks, split.labels[:n])


@torch.no_grad()
def run_records(
    fusion: FusionTransformer, records: TokenRecords, present: tuple[str, ...], trim: bool = True,
    thresholds: dict[str, float] | None = None, batch_size: int = 250,
) -> dict[str, Any]:
    """Inference (hard masks) over ``records`` with the ``present`` modalities; per-sample results."""
    fusion.eval()
    preds, macs, tokens_kept, heads_kept = [], [], [], []
    layers: dict[str, list[torch.Tensor]] = {m: [] for m in present}
    sims: dict[str, list[torch.Tensor]] = {m: [] for m in present}
    for rows in batch_rows(len(records), batch_size):
        tokens, masks = records.batch(rows, present)
        out: FusionOutput = fusion(tokens, masks, thresholds=thresholds, trim=trim, hard=True, all_layer_logits=False)
        preds.append(out.logits.argmax(-1))
        macs.append(out.macs.float())
        tokens_kept.append(out.kept_token_ratio.float())
        heads_kept.append(out.kept_head_ratio.float())
        for m in present:
            layers[m].append(out.exit_layers[m])
            if m in out.similarity:
                sims[m].append(out.similarity[m])
    pred = torch.cat(preds).numpy()
    return {
        "correct": pred == records.labels,
        "macs": torch.cat(macs).numpy(),
        "kept_token_ratio": float(torch.cat(tokens_kept).mean()),
        "kept_head_ratio": float(torch.cat(heads_kept).mean()),
        "exit_layers": {m: torch.cat(v).numpy() for m, v in layers.items()},
        "similarity": {m: torch.cat(v).numpy() for m, v in sims.items() if v},
    }
