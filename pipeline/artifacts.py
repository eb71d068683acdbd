"""Where every trained artifact lives: checkpoint and profile folder names, in one place.

The engine, the trainers and the CLI find encoder, fusion, joint, baseline and transformer
checkpoints and exit profiles only through these functions (under ``train.checkpoint_dir``).
"""

from __future__ import annotations

from pathlib import Path

from exitflow.pipeline.config import REPO_ROOT, Config
from exitflow.pipeline.data.imported import dataset_modalities, is_imported, model_folder

NUM_CLASSES = 10  # every built-in data set classifies the ten digits


DATASET_MODALITIES: dict[str, tuple[str, ...]] = {  # the built-in data sets
    "avmnist": ("image", "audio"),
    "avmnist-t": ("image", "audio", "text"),
    "avmnist-noisy": ("image", "audio"),
}
DATASETS = tuple(DATASET_MODALITIES)


def modalities_of(dataset: str) -> tuple[str, ...]:
    """The modalities of a built-in data set, or of an imported one (its ``cache/dataset.json``).

    Raises:
        KeyError: neither a built-in name nor an imported set's folder.
    """
    if dataset in DATASET_MODALITIES:
        return DATASET_MODALITIES[dataset]
    if is_imported(dataset):
        return dataset_modalities(dataset)
    raise KeyError(dataset)


CNN_DATASETS = ("avmnist", "avmnist-noisy")  # the CNN family covers the image + audio data sets
SPLITS = ("train", "val", "test", "test_id")  # test: an unseen speaker; test_id: seen speakers, other takes


ENCODER_CHECKPOINTS = {"image": "image_avmnist", "audio": "audio_avmnist", "text": "text_avmnist-t"}


def encoder_folder(cfg: Config, modality: str) -> Path:
    return checkpoint_dir(ENCODER_CHECKPOINTS[modality], cfg.train.checkpoint_dir)


def fusion_folder(cfg: Config, dataset: str) -> Path:
    return checkpoint_dir(f"fusion_late_{dataset}", cfg.train.checkpoint_dir)


def cnn_folder(cfg: Config, dataset: str) -> Path:
    """The CNN family of ``dataset``: ``image/``, ``audio/`` (encoders with exits) and ``fusion/`` (exit grid);
    an imported set's is ``DIR/model``."""
    if is_imported(dataset):
        return model_folder(dataset)
    return checkpoint_dir(f"cnn_{dataset}", cfg.train.checkpoint_dir)


def joint_folder(cfg: Config, dataset: str) -> Path:
    return checkpoint_dir(f"joint_{dataset}", cfg.train.checkpoint_dir)


def use_cnn(cfg: Config, dataset: str) -> bool:
    """Whether ``dataset`` runs on the CNN family: an imported set, or ``encoder.family: cnn`` and an image +
    audio data set."""
    return is_imported(dataset) or (cfg.encoder.family == "cnn" and dataset in CNN_DATASETS)


def use_joint(cfg: Config, dataset: str) -> bool:
    """Whether the jointly fine-tuned set is used: ``joint.use``, it exists, and the fusion exit is late."""
    return (
        cfg.joint.use and cfg.fusion.exit == "late"
        and (joint_folder(cfg, dataset) / "fusion" / "config.json").is_file()
    )


def profile_path(cfg: Config, dataset: str) -> Path:
    """The exit profile of the systems ``cfg`` loads (one per fusion exit kind: the weights differ)."""
    if use_cnn(cfg, dataset):
        return cnn_folder(cfg, dataset) / "profile.json"
    suffix = ""
    if cfg.fusion.exit == "transformer":  # its accuracy and MACs depend on how it runs, so the name says
        suffix = "_transformer" if cfg.fusion.trim_at_inference else "_transformer_untrimmed"
    return checkpoint_dir(f"profile_{dataset}{suffix}.json", cfg.train.checkpoint_dir)


def weight_files(cfg: Config, dataset: str, with_fusion: bool = True, prefer_joint: bool = True) -> list[Path]:
    """The weight files the adaptive systems load (their fingerprint keys the exit profile)."""
    if use_cnn(cfg, dataset):
        base = cnn_folder(cfg, dataset)
        return [base / m / "model.safetensors" for m in modalities_of(dataset)] + (
            [base / "fusion" / "model.safetensors"] if with_fusion else [])
    if prefer_joint and use_joint(cfg, dataset):
        base = joint_folder(cfg, dataset)
        files = [base / m / "model.safetensors" for m in modalities_of(dataset)]
        return files + ([base / "fusion" / "model.safetensors"] if with_fusion else [])
    files = [encoder_folder(cfg, m) / "model.safetensors" for m in modalities_of(dataset)]
    if cfg.fusion.exit == "transformer":
        from exitflow.pipeline.artifacts import transformer_folder

        return files + ([transformer_folder(cfg, dataset) / "model.safetensors"] if with_fusion else [])
    return files + ([fusion_folder(cfg, dataset) / "model.safetensors"] if with_fusion else [])


def transformer_folder(cfg: Config, dataset: str) -> Path:
    return checkpoint_dir(f"fusion_transformer_{dataset}", cfg.train.checkpoint_dir)


def baseline_dataset(dataset: str, name: str) -> str:
    """The data set the LeNet baseline ``name`` was trained on: ``avmnist-noisy`` has its own audio and
    late-fusion baselines (its images are avmnist's, so ``image`` is shared); ``avmnist-t`` uses the
    image + audio ones of ``avmnist``."""
    return dataset if dataset == "avmnist-noisy" and name != "image" else "avmnist"


def baseline_folder(cfg: Config, name: str, dataset: str = "avmnist") -> Path:
    return checkpoint_dir(f"baseline_{name}_{dataset}", cfg.train.checkpoint_dir)


def checkpoint_dir(name: str, base: str | Path = "checkpoints") -> Path:
    """``base/name``; a relative ``base`` is under the package resources (the checkout, or the wheel)."""
    base = Path(base)
    return (base if base.is_absolute() else REPO_ROOT / base) / name
