"""``exitflow export OUT_DIR``: the checkpoints a config uses, copied into one verified bundle.

The export loads the adaptive parts first (encoders, exit-grid fusion, profile keyed to those
weights), so a stale profile or a damaged checkpoint is refused before anything is written; the
bundle is assembled in a temporary sibling folder and renamed into place at the end, so an
interrupted export leaves nothing half-written.

A text encoder on a pretrained backbone (``exitflow train cnn --text-backbone``; its checkpoint holds the
exit heads only) takes the backbone's weights and tokenizer along, saved into ``text/backbone/`` (hashed
like every file), so the bundle runs where the backbone is not installed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from exitflow.pipeline.artifacts import (
    NUM_CLASSES,
    baseline_dataset,
    baseline_folder,
    cnn_folder,
    modalities_of,
    profile_path,
    use_cnn,
)
from exitflow.pipeline.bundles.manifest import (
    BASELINES_DIR,
    CONFIG_NAME,
    FORMAT_VERSION,
    FUSION_DIR,
    PROFILE_NAME,
    WEIGHTS_NAME,
    BundleError,
    BundleManifest,
    exitflow_version,
    hash_files,
    read_manifest,
    write_manifest,
)
from exitflow.pipeline.config import Config
from exitflow.pipeline.config_schema import to_dict
from exitflow.pipeline.data.imported import (
    class_names,
    dataset_preprocessing,
    is_imported,
    model_reads_strings,
)
from exitflow.pipeline.data.preprocessing import Preprocessing
from exitflow.pipeline.folders import swap_in

CHECKPOINT_FILES = (WEIGHTS_NAME, "config.json", "MODEL_CARD.md")
FAMILY_FILES = ("MODEL_CARD.md", "training.json")  # beside the CNN family's modality folders
BASELINES = ("lf", "image", "audio")
BACKBONE_DIR = "backbone"  # inside a text encoder's folder: its pretrained backbone (weights, tokenizer)
CLASSES_NAME = "classes.json"
PREPROCESSING_NAME = "preprocessing.json"


def dataset_classes(dataset: str) -> tuple[str, ...]:
    """Class names: an imported set's ``classes.json``; a built-in set's ten digits, named by their digit."""
    if is_imported(dataset):
        return tuple(class_names(dataset))
    return tuple(str(k) for k in range(NUM_CLASSES))


def preprocessing_for(dataset: str) -> Preprocessing:
    """The preprocessing the model of ``dataset`` was trained with (an imported set stores its own; text as
    strings when its model reads them, a pretrained text backbone)."""
    if not is_imported(dataset):
        return Preprocessing()
    pre = dataset_preprocessing(dataset)
    return dataclasses.replace(pre, text_encoding="string") if model_reads_strings(dataset) else pre


def exported_config(cfg: Config, dataset: str) -> str:
    """``cfg`` as the bundle stores it (YAML): its data set, no pointer to another bundle or profile file."""
    data = to_dict(dataclasses.replace(
        cfg, engine=dataclasses.replace(cfg.engine, bundle=None),
        scheduler=dataclasses.replace(cfg.scheduler, profile=None), demo=dataclasses.replace(cfg.demo, bundle=None),
    ))
    data.pop("source_path", None)
    if not is_imported(dataset):  # an imported set is named by --dataset DIR, not data.dataset
        data["data"]["dataset"] = dataset
    return yaml.safe_dump(data, sort_keys=False)


def _copy_checkpoint(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _temperatures(folder: Path) -> list[float]:
    """The calibration temperatures stored in a checkpoint's weights (empty when it has none)."""
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        if "temperatures" not in f.keys():
            return []
        return [round(float(t), 6) for t in f.get_tensor("temperatures").flatten().tolist()]


def _check_family(cfg: Config, dataset: str) -> None:
    if not use_cnn(cfg, dataset):
        raise BundleError(
            f"exitflow export bundles the CNN family only; {dataset} runs ViT/BERT encoders with a "
            f"{cfg.fusion.exit!r} fusion exit here (encoder.family: {cfg.encoder.family}), which bundles do not hold "
            "yet; export avmnist or avmnist-noisy with encoder.family: cnn, or an imported set (--dataset DIR)"
        )


def _prepare_out(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir} is a file; give a folder for the bundle")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise BundleError(f"{out_dir} exists and is not empty; choose a new folder or pass --force to replace it")
        if not (out_dir / "bundle.json").is_file():
            raise BundleError(f"{out_dir} is not a bundle; --force only replaces a bundle folder")


def export_bundle(
    cfg: Config, out_dir: str | Path, dataset: str | None = None, baselines: bool = True, force: bool = False,
    command: str | None = None,
) -> BundleManifest:
    """Write the bundle of ``dataset`` (default ``data.dataset``) as configured by ``cfg`` to ``out_dir``.

    Args:
        cfg: The config whose checkpoints (``train.checkpoint_dir``) and settings are bundled.
        out_dir: The bundle folder to create (must not exist or be empty, unless ``force``).
        dataset: The data set the model was trained on.
        baselines: Also bundle the single-pass baselines (lf, image, audio) that exist for it.
        force: Replace an existing bundle at ``out_dir``.
        command: The command line recorded in the manifest.

    Raises:
        BundleError: not the CNN family, or ``out_dir`` is in the way; CheckpointError and
            ProfileMismatchError: a checkpoint is missing or damaged, or the profile is stale.
    """
    from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts

    dataset = dataset or cfg.data.dataset
    out_dir = Path(out_dir).expanduser().absolute()
    _check_family(cfg, dataset)
    _prepare_out(out_dir, force)
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, bundle=None))
    parts = AdaptiveParts(cfg, dataset)  # every piece loads and the profile matches these weights, or nothing is written
    source = cnn_folder(cfg, dataset)
    modalities = modalities_of(dataset)
    classes = dataset_classes(dataset)
    preprocessing = preprocessing_for(dataset).to_dict()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        for m in modalities:
            _copy_checkpoint(source / m, tmp / m)
            backbone = getattr(parts.encoders[m], "backbone", None)
            if backbone is not None:  # heads-only checkpoint: the pretrained backbone travels with it
                backbone.save_pretrained(tmp / m / BACKBONE_DIR)
                parts.encoders[m].tokenizer.save_pretrained(tmp / m / BACKBONE_DIR)
        _copy_checkpoint(source / FUSION_DIR, tmp / FUSION_DIR)
        shutil.copy2(profile_path(cfg, dataset), tmp / PROFILE_NAME)
        for name in FAMILY_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        bundled: dict[str, str] = {}
        if baselines and not is_imported(dataset):  # an imported set has no LeNet baselines
            for name in BASELINES:
                folder = baseline_folder(cfg, name, baseline_dataset(dataset, name))
                if (folder / "config.json").is_file() and (folder / WEIGHTS_NAME).is_file():
                    bundled[name] = f"{BASELINES_DIR}/{name}"
                    _copy_checkpoint(folder, tmp / bundled[name])
        (tmp / CONFIG_NAME).write_text(exported_config(cfg, dataset), encoding="utf-8")
        (tmp / CLASSES_NAME).write_text(json.dumps(list(classes), indent=1) + "\n", encoding="utf-8")
        (tmp / PREPROCESSING_NAME).write_text(json.dumps(preprocessing, indent=2) + "\n", encoding="utf-8")
        encoders: dict[str, dict[str, Any]] = {}
        temperatures = {}
        for m in modalities:
            meta = json.loads((tmp / m / "config.json").read_text(encoding="utf-8"))
            encoders[m] = {"family": meta.get("kind", cfg.encoder.family), "path": m,
                           "exit_layers": meta.get("exit_layers")}
            temperatures[m] = _temperatures(tmp / m)
        temperatures[FUSION_DIR] = _temperatures(tmp / FUSION_DIR)
        manifest = BundleManifest(
            path=tmp, format_version=FORMAT_VERSION, exitflow_version=exitflow_version(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), dataset=dataset,
            family=cfg.encoder.family, modalities=modalities, classes=classes, preprocessing=preprocessing,
            encoders=encoders, fusion={"kind": "fusion_grid", "path": FUSION_DIR}, files=hash_files(tmp),
            baselines=bundled, temperatures=temperatures, command=command,
        )
        write_manifest(manifest)
        for folder in (tmp, *(p for p in tmp.rglob("*") if p.is_dir())):
            folder.chmod(0o755)  # mkdtemp's 0700 would make the bundle private to its writer
        read_manifest(tmp)  # what a reader will check, before the bundle becomes visible
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_manifest(out_dir)
