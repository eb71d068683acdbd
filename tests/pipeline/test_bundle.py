"""Model bundles: export, verify (tampered, missing, extra file, other format version), load from
anywhere with the same decisions as the checkpoint folders, and the CLI's ``--bundle``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import exitflow
from exitflow.pipeline.bundles.export import export_bundle
from exitflow.pipeline.bundles.load import bundle_config, load_bundle
from exitflow.pipeline.bundles.manifest import MANIFEST_NAME, BundleError, check_release, read_manifest
from exitflow.pipeline.cli import main
from exitflow.pipeline.commands.demo_cmd import demo_config
from exitflow.pipeline.config import REPO_ROOT, load_config, resolve_path
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.preprocessing import Preprocessing
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.systems import load_system


@pytest.fixture(scope="module")
def bundle_dir(embedded_cfg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle exported from the committed avmnist CNN checkpoints."""
    out = tmp_path_factory.mktemp("bundles") / "avmnist"
    export_bundle(embedded_cfg, out, "avmnist", command="pytest")
    return out


@pytest.fixture
def copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the exported bundle, for tests that damage it."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def test_export_writes_a_complete_verified_manifest(bundle_dir: Path) -> None:
    manifest = read_manifest(bundle_dir)
    assert manifest.dataset == "avmnist" and manifest.family == "cnn"
    assert manifest.modalities == ("image", "audio")
    assert manifest.classes == tuple(str(k) for k in range(10))
    assert Preprocessing.from_dict(manifest.preprocessing) == Preprocessing()
    assert set(manifest.baselines) == {"lf", "image", "audio"}
    for rel in ("config.yaml", "profile.json", "image/model.safetensors", "image/MODEL_CARD.md",
                "audio/model.safetensors", "fusion/model.safetensors", "baselines/lf/model.safetensors"):
        assert rel in manifest.files
    assert len(manifest.temperatures["fusion"]) > 0 and len(manifest.temperatures["image"]) == 3
    assert not list(bundle_dir.parent.glob("*.tmp-*"))  # nothing half-written beside it


def test_one_changed_byte_is_one_error_naming_the_file(copy: Path) -> None:
    weights = copy / "fusion" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"fusion/model\.safetensors changed since export") as err:
        read_manifest(copy)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage, expected", [
    (lambda b: (b / "profile.json").unlink(), r"profile\.json is missing"),
    (lambda b: (b / "image" / "extra.bin").write_bytes(b"x"), r"image/extra\.bin is not part of the bundle"),
])
def test_missing_and_extra_files_are_refused(copy: Path, damage, expected: str) -> None:
    damage(copy)
    with pytest.raises(BundleError, match=expected):
        read_manifest(copy)


def test_another_format_version_is_refused(copy: Path) -> None:
    path = copy / MANIFEST_NAME
    doc = json.loads(path.read_text())
    doc["format_version"] = 2
    path.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"bundle format version 2 .* reads format 1"):
        read_manifest(copy)


def test_another_exitflow_release_is_refused(copy: Path) -> None:
    path = copy / MANIFEST_NAME
    doc = json.loads(path.read_text())
    doc["exitflow_version"] = "9.4.0"
    path.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"written by exitflow 9\.4\.0, this is exitflow .*re-export"):
        read_manifest(copy, verify=False)


def test_release_check_ignores_patches_and_unknown_versions(tmp_path: Path) -> None:
    check_release(tmp_path, "0.1.7", running="0.1.0")
    check_release(tmp_path, "unknown", running="0.1.0")
    check_release(tmp_path, "0.2.0", running="unknown")
    with pytest.raises(BundleError, match="written by exitflow 0.2.0"):
        check_release(tmp_path, "0.2.0", running="0.1.0")


def test_cli_gives_one_error_line_and_exit_2(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text() + "\n# edited\n")
    assert main(["bundle", "verify", str(copy)]) == 2
    assert main(["replay", "--bundle", str(copy), "--system", "exitflow", "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("config.yaml changed since export" in line for line in err)


def test_bundle_decisions_equal_the_checkpoint_folders(embedded_cfg, bundle_dir: Path, tmp_path: Path) -> None:
    samples = list(split_samples(load_split(embedded_cfg, "test", "avmnist", progress=False), 25))
    cfg = dataclasses.replace(embedded_cfg, power=dataclasses.replace(embedded_cfg.power, meter="null"))
    bundle = load_bundle(bundle_dir, dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, checkpoint_dir=str(tmp_path / "no-checkpoints"))))
    for name in ("exitflow", "full", "lf"):
        reference = load_system(cfg, name, "avmnist")
        ours = bundle.engine if name == "exitflow" else bundle.system(name)
        for sample in samples:
            a, b = reference.process(sample), ours.process(sample)
            assert (a.prediction, a.order, a.exits, a.skipped, a.macs) == (b.prediction, b.order, b.exits,
                                                                            b.skipped, b.macs)
    assert bundle.class_name(samples[0].label) == str(samples[0].label)


def test_set_overrides_stay_on_top_of_the_bundle(embedded_cfg, bundle_dir: Path) -> None:
    cfg = bundle_config(embedded_cfg, bundle_dir, ["scheduler.lam=7.5"])
    assert cfg.scheduler.lam == 7.5 and cfg.engine.bundle == str(bundle_dir.resolve())
    assert cfg.data.root == embedded_cfg.data.root  # where data lives stays the caller's
    assert exitflow.load_bundle(str(bundle_dir), embedded_cfg).config.scheduler.threshold is None  # the bundle's


def test_cli_replay_and_bench_load_a_bundle_from_anywhere(
    embedded_cfg, bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["--set", f"data.root={embedded_cfg.data.root}", "--set", f"data.cache_dir={embedded_cfg.data.cache_dir}",
              "--set", f"train.checkpoint_dir={tmp_path / 'absent'}"]
    assert main([*common, "replay", "--bundle", str(bundle_dir), "--system", "exitflow", "--limit", "5",
                 "--decisions", str(tmp_path / "d.jsonl")]) == 0
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 5
    assert main([*common, "bench", "--bundle", str(bundle_dir), "--limit", "4", "--systems", "full,lf,exitflow",
                 "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["system"] for r in rows] == ["full", "lf", "exitflow"] and all(r["n"] == 4 for r in rows)
    assert "exitflow: error" not in capsys.readouterr().err


def test_the_packaged_demo_runs_the_committed_bundle() -> None:
    cfg = load_config()
    assert cfg.demo.bundle, "config.yaml's demo.bundle names the demo's bundle"
    folder = resolve_path(cfg, cfg.demo.bundle)
    assert folder.is_relative_to(REPO_ROOT)  # shipped with the checkout (and the wheel's resources)
    manifest = read_manifest(folder)
    assert manifest.dataset == cfg.data.dataset
    demo = demo_config(argparse.Namespace(bundle=None, overrides=[]), cfg)
    assert demo.engine.bundle == str(folder)


def test_export_refuses_what_it_cannot_bundle(embedded_cfg, bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="bundles the CNN family only"):
        export_bundle(embedded_cfg, bundle_dir.parent / "t", "avmnist-t")
    with pytest.raises(BundleError, match="not empty"):
        export_bundle(embedded_cfg, bundle_dir, "avmnist")
    assert not (bundle_dir.parent / "t").exists()


def test_own_set_bundle_replays_like_its_model_folder(own_trained_set: Path, tmp_path: Path) -> None:
    """The issue's acceptance: a small own set imported and trained for one epoch (the ``own_trained_set``
    fixture), exported as a bundle, and replayed from the bundle with the set's model folder gone."""
    bundle = tmp_path / "elsewhere" / "own"
    assert main(["export", str(bundle), "--dataset", str(own_trained_set)]) == 0
    manifest = read_manifest(bundle)
    info = json.loads((own_trained_set / "cache" / "dataset.json").read_text())
    assert list(manifest.classes) == info["classes"] and manifest.modalities == tuple(info["modalities"])
    assert manifest.baselines == {}  # an imported set has no LeNet baselines
    stored = json.loads((own_trained_set / "cache" / "preprocessing.json").read_text())
    assert Preprocessing.from_dict(manifest.preprocessing) == Preprocessing.from_dict(stored)

    reference, ours = tmp_path / "model.jsonl", tmp_path / "bundle.jsonl"
    assert main(["replay", "--dataset", str(own_trained_set), "--decisions", str(reference)]) == 0
    model = own_trained_set / "model"
    hidden = model.with_name("model.hidden")
    model.rename(hidden)  # the bundle alone must do
    try:
        assert main(["replay", "--bundle", str(bundle), "--decisions", str(ours)]) == 0
    finally:
        hidden.rename(model)
    a = [json.loads(line) for line in reference.read_text().splitlines()]
    b = [json.loads(line) for line in ours.read_text().splitlines()]
    assert len(a) == len(b) == info["counts"]["test"]
    keys = ("prediction", "label", "order", "exits", "missing", "macs")
    assert [{k: d[k] for k in keys} for d in a] == [{k: d[k] for k in keys} for d in b]


@pytest.mark.slow
def test_a_recording_replays_through_the_committed_bundle(tmp_path: Path) -> None:
    """``exitflow replay FILE.mcap --bundle DIR`` gives the decisions the checkpoint folders give."""
    example = REPO_ROOT / "examples" / "grid_live.mcap"
    if not example.is_file():
        pytest.skip("examples/grid_live.mcap is missing")
    window = ["--fast", "--system", "exitflow", "--start", "5", "--end", "7"]
    reference, ours = tmp_path / "ckpt.jsonl", tmp_path / "bundle.jsonl"
    assert main(["replay", str(example), *window, "--decisions", str(reference)]) == 0
    assert main(["--set", f"train.checkpoint_dir={tmp_path / 'absent'}", "replay", str(example), *window,
                 "--bundle", str(REPO_ROOT / "bundles" / "avmnist"), "--decisions", str(ours)]) == 0
    keys = ("sample_id", "prediction", "order", "exits", "missing", "macs")
    a = [{k: d[k] for k in keys} for d in map(json.loads, reference.read_text().splitlines())]
    b = [{k: d[k] for k in keys} for d in map(json.loads, ours.read_text().splitlines())]
    assert len(a) > 10 and a == b
