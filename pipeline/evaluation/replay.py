"""Offline replay: push a recorded data set split through a system, one sample at a time.

Writes one JSON line per sample (the :class:`Decision`) and returns a summary
``{"system", "n", "accuracy", "macs_per_sample", "ms_per_sample"}``. Files are written to a
temporary name and renamed when complete, so an interrupted replay leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exitflow.pipeline.config import Config
from exitflow.pipeline.data.avmnist import AVSplit, load_split
from exitflow.pipeline.data.imported import ImportedSplit
from exitflow.pipeline.data.roots import data_root
from exitflow.pipeline.inference.systems import System, load_system
from exitflow.pipeline.messages import Sample


def split_samples(split: AVSplit | ImportedSplit, limit: int | None = None) -> Iterator[Sample]:
    """Samples of a split in order; ``timestamp_ns`` is the row index (data sets have no clock)."""
    if isinstance(split, ImportedSplit):  # an imported set: its absent modalities are ``missing``
        yield from split.samples(limit)
        return
    n = len(split) if limit is None else min(limit, len(split))
    for i in range(n):
        payloads: dict[str, Any] = {"image": split.image[i], "audio": split.audio[i]}
        if split.text is not None:
            payloads["text"] = split.text[i]
        yield Sample(sample_id=i, timestamp_ns=i, payloads=payloads, label=int(split.labels[i]))


def summarize(system: str, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(decisions)
    correct = [d["prediction"] == d["label"] for d in decisions if d.get("label") is not None]
    return {
        "system": system,
        "n": n,
        "accuracy": float(np.mean(correct)) if correct else None,
        "macs_per_sample": float(np.mean([d["macs"] for d in decisions])) if n else None,
        "ms_per_sample": float(np.mean([d["latency_ms"]["total"] for d in decisions])) if n else None,
    }


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def replay(
    cfg: Config,
    system_name: str,
    dataset: str,
    split_name: str,
    limit: int | None,
    decisions_path: Path | None,
    progress: bool = True,
    system: System | None = None,
) -> dict[str, Any]:
    """Replay ``split_name`` of ``dataset`` through ``system_name``; returns the summary."""
    data_root(cfg)  # a wrong data root is reported before any model loads
    system = system or load_system(cfg, system_name, dataset)
    split = load_split(cfg, split_name, dataset, progress)
    n = len(split) if limit is None else min(limit, len(split))
    rows = []
    for sample in tqdm(split_samples(split, limit), total=n, desc=f"replay {system_name}", disable=not progress):
        rows.append(system.process(sample).to_json_dict())
    if decisions_path is not None:
        write_atomic(decisions_path, "".join(json.dumps(r) + "\n" for r in rows))
    return summarize(system_name, rows)
