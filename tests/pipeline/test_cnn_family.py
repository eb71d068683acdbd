"""The CNN family end to end on a short run: train, calibrate on val, load, bench with fused checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exitflow.devices import get_power_meter
from exitflow.encoders.fusion_grid import ExitGridFusion
from exitflow.pipeline.artifacts import cnn_folder, profile_path
from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.roots import SHARED_DATA
from exitflow.pipeline.errors import CheckpointError
from exitflow.pipeline.evaluation.bench import bench, summary
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from exitflow.pipeline.inference.loading import load_encoders, load_fusion
from exitflow.pipeline.training.calibrate import calibrate_family
from exitflow.pipeline.training.cnn_family import CNNTrainSettings, train_cnn_family
from tests.conftest import requires_shared


@pytest.fixture(scope="module")
def cnn_cfg(tmp_path_factory: pytest.TempPathFactory, data_cache: Path):
    ckpt = tmp_path_factory.mktemp("ckpt")
    return load_config(None, [f"data.root={SHARED_DATA}", f"data.cache_dir={data_cache}",
                              f"train.checkpoint_dir={ckpt}", "encoder.family=cnn"])


@requires_shared
@pytest.mark.slow
def test_train_calibrate_and_bench_the_cnn_family(cnn_cfg) -> None:
    report = train_cnn_family(cnn_cfg, "avmnist", CNNTrainSettings(epochs=1, limit=512, eval_limit=400),
                              progress=False, command="exitflow train cnn (test)")
    folder = cnn_folder(cnn_cfg, "avmnist")
    for part in ("image", "audio", "fusion"):
        assert (folder / part / "model.safetensors").is_file()
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"{report['accuracy']['test']['image2_audio2']:.4f}" in card and "image2_audio0" in card
    encoders, fusion = load_encoders(cnn_cfg, "avmnist"), load_fusion(cnn_cfg, "avmnist")
    assert isinstance(fusion, ExitGridFusion)
    # the saved temperatures came back with the weights
    assert float(encoders["audio"].temperatures[0]) == pytest.approx(report["temperatures"]["audio0"], rel=1e-5)
    with get_power_meter("psutil") as meter:
        cal = calibrate_family(cnn_cfg, "avmnist", meter, energy_samples=3, progress=False, limit=600)
    profile = json.loads(profile_path(cnn_cfg, "avmnist").read_text())
    assert profile["thresholds"]["fusion"] == cal["thresholds"]["fusion"]
    assert cal["val_accuracy"] >= cal["val_full_accuracy"] - cnn_cfg.scheduler.calibration_drop

    parts = AdaptiveParts(cnn_cfg, "avmnist")
    samples = list(split_samples(load_split(cnn_cfg, "test", "avmnist", progress=False), 40))
    with get_power_meter("psutil") as meter:
        rows = bench(parts, samples, meter, ["full", "static", "exitflow"], progress=False, warmup=2)
    by = {r["system"]: r for r in rows}
    full_macs = sum(enc.plain_macs() for enc in parts.encoders.values()) + fusion.macs
    if by["full"]["backend"] == "onnxruntime":  # one graph: the last exits' classifiers (unused by the grid) never run
        full_macs -= sum(e.heads[-1].classifier.weight.numel() for e in parts.encoders.values())
    assert by["full"]["macs_per_sample"] == full_macs
    for d in by["exitflow"]["decisions"]:
        assert d.prediction in range(10) and d.exited_by in ("image", "audio", "fusion")
        if d.exited_by == "fusion":
            assert d.fused_checks >= 1
    assert summary(rows)["best_single_pass"] in ("full", "static")


def test_missing_cnn_checkpoint_names_the_training_command(tmp_path: Path) -> None:
    cfg = load_config(None, [f"train.checkpoint_dir={tmp_path}", "encoder.family=cnn"])
    with pytest.raises(CheckpointError, match="exitflow train cnn --dataset avmnist"):
        load_encoders(cfg, "avmnist")
    with pytest.raises(CheckpointError, match="exitflow train cnn --dataset avmnist-noisy"):
        load_fusion(cfg, "avmnist-noisy")
