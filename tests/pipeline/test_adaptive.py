"""The adaptive path end to end on tiny encoders: fusion training, profiling, bench systems."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exitflow.devices import get_power_meter
from exitflow.encoders.checkpoint import save_encoder
from exitflow.encoders.presets import build_vit_encoder
from exitflow.pipeline.artifacts import encoder_folder, use_joint
from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.roots import SHARED_DATA
from exitflow.pipeline.errors import CheckpointError
from exitflow.pipeline.evaluation.bench import BENCH_SYSTEMS, bench, format_table, static_exits_matching
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts, truncated_macs
from exitflow.pipeline.inference.loading import load_dataset_profile, load_encoders, load_fusion_exit
from exitflow.pipeline.training.joint import joint_finetune
from exitflow.pipeline.training.late_fusion import fusion_accuracy, train_late_fusion
from exitflow.pipeline.training.profile import make_profile
from exitflow.pipeline.training.records import collect_exits
from tests.conftest import requires_shared

TINY = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32, "num_exits": 2, "gah_heads": 2}


def _save_tiny_encoders(cfg, seed: int) -> None:
    torch.manual_seed(seed)
    save_encoder(build_vit_encoder("image", **TINY), encoder_folder(cfg, "image"))
    save_encoder(build_vit_encoder("audio", **TINY), encoder_folder(cfg, "audio"))


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory: pytest.TempPathFactory, data_cache: Path):
    ckpt = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(None, [
        f"data.root={SHARED_DATA}", f"data.cache_dir={data_cache}", f"train.checkpoint_dir={ckpt}", "encoder.family=vit",
        "train.limit=512", "train.epochs=1", "train.batch_size=128", "scheduler.threshold=0.5",
        "joint.epochs=2", "joint.limit=256", "joint.eval_limit=300", "joint.use=true",
    ])
    _save_tiny_encoders(cfg, seed=0)
    return cfg


@requires_shared
@pytest.mark.slow
def test_fusion_profile_and_bench_on_tiny_encoders(tiny_cfg) -> None:
    meta = train_late_fusion(tiny_cfg, "avmnist", progress=False)
    assert set(meta["test_accuracy"]) == {"image", "audio", "image+audio"}
    # a reloaded fusion exit predicts exactly as the trained one (modality order survives the JSON)
    val = load_split(tiny_cfg, "val", "avmnist", progress=False)
    records = collect_exits(load_encoders(tiny_cfg, "avmnist", prefer_joint=False), val, progress=False)
    reloaded = fusion_accuracy(load_fusion_exit(tiny_cfg, "avmnist", prefer_joint=False), records, val.labels)
    assert reloaded == meta["val_accuracy"]
    result = joint_finetune(tiny_cfg, "avmnist", progress=False)
    assert [h["stage"] for h in result["history"]] == ["final", "rest"]
    assert set(result["per_exit_val_after"]) == {"image", "audio"}
    assert use_joint(tiny_cfg, "avmnist")
    before = load_encoders(tiny_cfg, "avmnist", prefer_joint=False)["image"].state_dict()
    after = load_encoders(tiny_cfg, "avmnist")["image"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the joint set really changed
    with get_power_meter("psutil") as meter:
        profile = make_profile(tiny_cfg, "avmnist", meter, energy_samples=3, progress=False)
    assert profile.modalities == ("image", "audio") and all(len(e) == 2 for e in profile.exits.values())
    assert profile.energy_estimated is True and all(e.energy_mj > 0 for e in profile.exits["image"])
    assert len(profile.fusion) == 3
    again = load_dataset_profile(tiny_cfg, "avmnist")
    assert again.fingerprint == profile.fingerprint

    parts = AdaptiveParts(tiny_cfg, "avmnist")
    samples = list(split_samples(load_split(tiny_cfg, "test", "avmnist", progress=False), 30))
    with get_power_meter("psutil") as meter:
        rows = bench(parts, samples, meter, [s for s in BENCH_SYSTEMS if s not in ("lf", "image", "audio")],
                     progress=False, warmup=2)
    by = {r["system"]: r for r in rows}
    full_macs = sum(enc.plain_macs() for enc in parts.encoders.values()) + parts.fusion.macs
    assert by["full"]["macs_per_sample"] == full_macs
    assert by["exitflow"]["macs_per_sample"] <= max(enc.exit_macs()[-1] for enc in parts.encoders.values()) * 2 + parts.fusion.macs
    for r in rows:
        assert r["n"] == 30 and 0.0 <= r["accuracy"] <= 1.0 and r["mj_per_sample"] > 0 and r["estimated"]
        assert all(d.prediction in range(10) for d in r["decisions"])
    target = by["exitflow"]["macs_per_sample"]
    exits = static_exits_matching(parts, target)
    gaps = [abs(sum(truncated_macs(parts.encoders[m], k) for m, k in zip(parts.encoders, combo, strict=True)) - target)
            for combo in np.ndindex(2, 2)]
    chosen = sum(truncated_macs(parts.encoders[m], k) for m, k in exits.items())
    assert abs(chosen - target) == min(gaps)
    assert "exitflow" in format_table(rows)
    decision = by["exitflow"]["decisions"][0].to_json_dict()
    assert json.loads(json.dumps(decision))["order"]


@requires_shared
def test_profile_of_other_weights_is_rejected(tiny_cfg, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema_version": 1}))
    cfg = load_config(None, [f"train.checkpoint_dir={tiny_cfg.train.checkpoint_dir}", f"scheduler.profile={path}",
                                "encoder.family=vit"])
    with pytest.raises(Exception, match="profile"):
        load_dataset_profile(cfg, "avmnist")
    missing = load_config(None, [f"train.checkpoint_dir={tmp_path}", "encoder.family=vit"])
    with pytest.raises(CheckpointError, match="exitflow train encoder"):
        AdaptiveParts(missing, "avmnist")


@pytest.fixture(scope="module")
def tiny_transformer_cfg(tmp_path_factory: pytest.TempPathFactory, data_cache: Path):
    ckpt = tmp_path_factory.mktemp("ckpt_transformer")
    cfg = load_config(None, [
        f"data.root={SHARED_DATA}", f"data.cache_dir={data_cache}", f"train.checkpoint_dir={ckpt}", "encoder.family=vit",
        "train.limit=256", "train.epochs=2", "train.batch_size=64", "scheduler.threshold=0.5",
        "fusion.exit=transformer", "fusion.dim=16", "fusion.layers=2", "fusion.heads=2", "fusion.eval_limit=120",
        "fusion.ramp_fraction=0.25",
    ])
    _save_tiny_encoders(cfg, seed=0)
    return cfg


@requires_shared
@pytest.mark.slow
def test_transformer_fusion_exit_trains_profiles_and_benches(tiny_transformer_cfg) -> None:
    import dataclasses

    from exitflow.pipeline.artifacts import transformer_folder
    from exitflow.pipeline.evaluation.bench import CONCAT_SYSTEM, default_systems
    from exitflow.pipeline.inference.loading import load_transformer_exit
    from exitflow.pipeline.training.records import collect_tokens, run_records
    from exitflow.pipeline.training.transformer_exit import train_transformer_exit

    cfg = tiny_transformer_cfg
    meta = train_transformer_exit(cfg, "avmnist", progress=False)
    assert set(meta["subsets"]) == {"image", "audio", "image+audio"}
    assert meta["untrimmed_test"] is not None and [r["setting"] for r in meta["mue_sweep"]][0] == "no exits"
    # the reloaded exit predicts exactly as the trained one did on val (no exits, hard masks)
    fusion = load_transformer_exit(cfg, "avmnist")
    val = load_split(cfg, "val", "avmnist", progress=False)
    tokens = collect_tokens(load_encoders(cfg, "avmnist"), val, limit=120, progress=False)
    again = run_records(fusion, tokens, ("image", "audio"))
    assert float(again["correct"].mean()) == meta["subsets"]["image+audio"]["val"]["accuracy"]
    assert (transformer_folder(cfg, "avmnist") / "MODEL_CARD.md").read_text().count("|") > 20

    with get_power_meter("psutil") as meter:
        profile = make_profile(cfg, "avmnist", meter, energy_samples=3, progress=False)
    assert len(profile.fusion) == 3 and all(f.macs > 0 for f in profile.fusion)
    assert load_dataset_profile(cfg, "avmnist").fingerprint == profile.fingerprint
    # the concat comparison needs its own fusion exit and profile (other weights, other fingerprint)
    late = dataclasses.replace(cfg, fusion=dataclasses.replace(cfg.fusion, exit="late"))
    train_late_fusion(late, "avmnist", progress=False)
    with get_power_meter("psutil") as meter:
        make_profile(late, "avmnist", meter, energy_samples=3, progress=False)

    parts = AdaptiveParts(cfg, "avmnist")
    assert hasattr(parts.fusion, "fuse_exits") and CONCAT_SYSTEM in default_systems(cfg)
    samples = list(split_samples(load_split(cfg, "test", "avmnist", progress=False), 20))
    with get_power_meter("psutil") as meter:
        rows = bench(parts, samples, meter, ["full", "exitflow", CONCAT_SYSTEM], progress=False, warmup=2)
    by = {r["system"]: r for r in rows}
    encoder_macs = sum(enc.plain_macs() for enc in parts.encoders.values())
    assert by["full"]["macs_per_sample"] > encoder_macs  # the transformer's own MACs are counted
    fused = [d for d in by["exitflow"]["decisions"] if d.fusion_layers]
    plain = [d for d in by["exitflow"]["decisions"] if not d.fusion_layers]
    assert fused or plain
    for d in fused:  # a fused decision reports the fusion's per-stream layers and kept ratios
        assert set(d.fusion_layers) <= {"image", "audio"} and all(1 <= v <= 2 for v in d.fusion_layers.values())
        assert 0 < d.kept_heads <= 1
    assert by[CONCAT_SYSTEM]["n"] == 20 and all(d.system == CONCAT_SYSTEM for d in by[CONCAT_SYSTEM]["decisions"])


@requires_shared
def test_transformer_exit_of_other_encoders_is_refused(tiny_transformer_cfg, tmp_path: Path) -> None:
    import shutil

    from exitflow.pipeline.artifacts import transformer_folder
    from exitflow.pipeline.inference.loading import load_transformer_exit

    cfg = tiny_transformer_cfg
    if not (transformer_folder(cfg, "avmnist") / "config.json").is_file():
        pytest.skip("needs the transformer exit trained by the test above")
    other = load_config(None, [f"train.checkpoint_dir={tmp_path}", "fusion.exit=transformer", "encoder.family=vit"])
    shutil.copytree(transformer_folder(cfg, "avmnist"), transformer_folder(other, "avmnist"))
    _save_tiny_encoders(other, seed=1)  # other encoder weights
    with pytest.raises(CheckpointError, match="other encoder weights"):
        load_transformer_exit(other, "avmnist")


def test_missing_transformer_exit_names_the_training_command(tmp_path: Path) -> None:
    from exitflow.pipeline.inference.loading import load_transformer_exit

    cfg = load_config(None, [f"train.checkpoint_dir={tmp_path}", "fusion.exit=transformer"])
    with pytest.raises(CheckpointError, match="train fusion --inputs encoders"):
        load_transformer_exit(cfg, "avmnist-t")
