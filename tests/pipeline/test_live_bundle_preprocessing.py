"""The live engine holders preprocess with the model's parameters (a bundle's), and frame reduction
at the source is turned off where it would lose something."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from exitflow.pipeline.config import REPO_ROOT
from exitflow.pipeline.data.preprocessing import DEFAULT_PREPROCESSING
from exitflow.pipeline.live.run import edge_preprocessing
from exitflow.pipeline.live.runtime.preprocess import model_preprocessing
from exitflow.pipeline.live.runtime.workers import EngineWorker
from exitflow.pipeline.messages import Sample


def _bundle_with_image_side(tmp_path: Path, side: int) -> Path:
    out = Path(shutil.copytree(REPO_ROOT / "bundles" / "avmnist", tmp_path / "bundle"))
    doc = json.loads((out / "bundle.json").read_text())
    doc["preprocessing"]["image_side"] = side
    (out / "bundle.json").write_text(json.dumps(doc))
    return out


def _with_bundle(cfg, bundle: Path):
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, bundle=str(bundle)))


class _Echo:
    """An engine that hands back what it was given (to see the preprocessed payload)."""

    def __init__(self) -> None:
        self.seen: list[Sample] = []

    def process(self, sample: Sample):
        from exitflow.pipeline.messages import Decision

        self.seen.append(sample)
        return Decision(sample_id=sample.sample_id, prediction=0, system="echo")


def test_model_preprocessing_is_the_bundles(embedded_cfg, tmp_path: Path) -> None:
    assert model_preprocessing(None) == DEFAULT_PREPROCESSING
    assert model_preprocessing(embedded_cfg) == DEFAULT_PREPROCESSING
    cfg = _with_bundle(embedded_cfg, _bundle_with_image_side(tmp_path, 32))
    assert model_preprocessing(cfg).image_side == 32


def test_engine_worker_preprocesses_with_the_bundles_parameters(embedded_cfg, tmp_path: Path) -> None:
    cfg = _with_bundle(embedded_cfg, _bundle_with_image_side(tmp_path, 32))
    echo = _Echo()
    worker = EngineWorker(lambda: echo, cfg)
    frame = np.random.default_rng(0).integers(0, 256, (120, 160), dtype=np.uint8)
    sample = Sample(sample_id=1, timestamp_ns=0, payloads={"image": frame})
    _, _, error = worker.process(sample)
    assert error is None
    assert echo.seen[0].payloads["image"].shape == (1, 32, 32)


def test_frames_stay_full_when_recording_or_the_side_differs(embedded_cfg, tmp_path: Path) -> None:
    stream = dataclasses.replace(embedded_cfg.stream, preprocess_at_source=True)
    assert edge_preprocessing(stream, embedded_cfg, None, "ray").preprocess_at_source
    assert not edge_preprocessing(stream, embedded_cfg, tmp_path / "r.mcap", "ray").preprocess_at_source
    cfg = _with_bundle(embedded_cfg, _bundle_with_image_side(tmp_path, 32))
    assert not edge_preprocessing(stream, cfg, None, "ray").preprocess_at_source
    assert edge_preprocessing(stream, cfg, None, "local") is stream
