"""Every ``load_*``: rebuild trained encoders, fusion exits, baselines and the exit profile.

Each loader checks what it reads (checkpoint kind, the encoder weights a fusion exit was trained
on, the modalities of the data set) and names the command that rebuilds a missing or stale piece.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.baseline import BaselineConfig, LateFusion
from exitflow.encoders.checkpoint import load_encoder
from exitflow.encoders.fusion import FusionTransformer, FusionTransformerConfig
from exitflow.encoders.fusion_grid import ExitGridFusion
from exitflow.encoders.late_fusion import MaskedLateFusion
from exitflow.pipeline.artifacts import (
    NUM_CLASSES,
    baseline_folder,
    cnn_folder,
    encoder_folder,
    fusion_folder,
    joint_folder,
    modalities_of,
    profile_path,
    transformer_folder,
    use_cnn,
    use_joint,
    weight_files,
)
from exitflow.pipeline.bundles.manifest import BundleManifest, read_manifest
from exitflow.pipeline.checkpoints import load_weights, read_meta
from exitflow.pipeline.config import Config, FusionConfig, resolve_path
from exitflow.pipeline.errors import CheckpointError
from exitflow.scheduler.profile import (
    Profile,
    fingerprint_checkpoints,
    load_profile,
)


def bundle_of(cfg: Config) -> BundleManifest | None:
    """The verified manifest of ``engine.bundle`` (None: load from ``train.checkpoint_dir``).

    With a bundle, the loaders read the model from it whatever data set they are asked for (its
    modalities are the bundle's; ``pipeline.bundles.load.check_dataset`` matches a data set to it).

    Raises:
        BundleError: the bundle is damaged or of another format version.
    """
    return read_manifest(resolve_path(cfg, cfg.engine.bundle)) if cfg.engine.bundle else None


def _bundle_encoder(folder: Path) -> EarlyExitEncoder:
    """A bundle's encoder; a text encoder's pretrained backbone from its ``backbone/`` folder when it has one."""
    backbone = folder / "backbone"
    if not backbone.is_dir():
        return load_encoder(folder).eval()
    from exitflow.encoders.text import load_text_backbone

    try:
        model, tokenizer = load_text_backbone(str(backbone))
    except OSError as e:
        raise CheckpointError(f"{backbone}: the text backbone does not load ({e}); re-export the bundle") from e
    return load_encoder(folder, backbone=model, tokenizer=tokenizer).eval()


def load_encoders(cfg: Config, dataset: str, prefer_joint: bool = True) -> dict[str, EarlyExitEncoder]:
    """The trained encoder of each modality of ``dataset`` (eval mode); the joint set if in use;
    the bundle's when ``engine.bundle`` is set."""
    bundle = bundle_of(cfg)
    if bundle is not None:
        try:
            return {m: _bundle_encoder(bundle.encoder_folder(m)) for m in bundle.modalities}
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    joint = prefer_joint and use_joint(cfg, dataset)
    cnn = use_cnn(cfg, dataset)
    encoders = {}
    for m in modalities_of(dataset):
        if cnn:
            folder = cnn_folder(cfg, dataset) / m
        else:
            folder = joint_folder(cfg, dataset) / m if joint else encoder_folder(cfg, m)
        if not (folder / "config.json").is_file():
            command = (f"exitflow train cnn --dataset {dataset}" if cnn
                       else f"exitflow train encoder --modality {m}")
            raise CheckpointError(f"no {m} encoder checkpoint at {folder}; train it with `{command}`")
        try:
            encoders[m] = load_encoder(folder).eval()
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    return encoders


def read_fusion_meta(
    cfg: Config, dataset: str, folder: Path, kind: str, retrain: str, prefer_joint: bool = False
) -> tuple[dict[str, Any], dict[str, int]]:
    """A fusion checkpoint's metadata and its modality widths, checked against ``kind``, the encoders
    it was trained on (``retrain`` is the command named when they differ) and the data set's modalities.

    The widths come back in the data set's modality order (JSON metadata is key-sorted).
    """
    meta = read_meta(folder)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{folder} holds a {meta.get('kind')!r} checkpoint, not a {kind!r} one")
    expected = fingerprint_checkpoints(weight_files(cfg, dataset, with_fusion=False, prefer_joint=prefer_joint))
    if meta.get("encoders") != expected:
        raise CheckpointError(f"{folder} was trained on other encoder weights; retrain it with `{retrain}`")
    dims = {m: int(meta["dims"][m]) for m in modalities_of(dataset) if m in meta["dims"]}
    if len(dims) != len(meta["dims"]):
        raise CheckpointError(f"{folder}: fusion modalities {sorted(meta['dims'])} do not fit data set {dataset}")
    return meta, dims


def load_fusion_exit(cfg: Config, dataset: str, prefer_joint: bool = True) -> MaskedLateFusion:
    joint = prefer_joint and use_joint(cfg, dataset)
    folder = joint_folder(cfg, dataset) / "fusion" if joint else fusion_folder(cfg, dataset)
    meta, dims = read_fusion_meta(
        cfg, dataset, folder, "fusion_late", f"exitflow train joint --dataset {dataset}", prefer_joint=joint
    )
    fusion = MaskedLateFusion(dims, meta["num_classes"], hidden_dim=meta["hidden_dim"])
    load_weights(folder, fusion)
    return fusion.eval()


def load_fusion(cfg: Config, dataset: str) -> Any:
    """The fusion exit: the bundle's, the CNN family's exit grid, else what ``fusion.exit`` selects (late or
    transformer)."""
    bundle = bundle_of(cfg)
    if bundle is not None:
        return grid_fusion_from(bundle.fusion_folder(), bundle.modalities, "exitflow export")
    if use_cnn(cfg, dataset):
        return load_grid_fusion(cfg, dataset)
    if cfg.fusion.exit == "transformer":
        from exitflow.pipeline.inference.loading import load_transformer_exit

        return load_transformer_exit(cfg, dataset)
    return load_fusion_exit(cfg, dataset)


def load_grid_fusion(cfg: Config, dataset: str) -> ExitGridFusion:
    """The exit-grid fusion of the CNN family of ``dataset`` (eval mode, temperatures in its weights)."""
    return grid_fusion_from(cnn_folder(cfg, dataset) / "fusion", modalities_of(dataset),
                            f"exitflow train cnn --dataset {dataset}")


def grid_fusion_from(folder: Path, modalities: tuple[str, ...], command: str) -> ExitGridFusion:
    """The exit-grid fusion checkpoint in ``folder`` over ``modalities`` (``command`` rebuilds it)."""
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no exit-grid fusion at {folder}; train it with `{command}`")
    meta = read_meta(folder)
    if meta.get("kind") != "fusion_grid":
        raise CheckpointError(f"{folder} holds a {meta.get('kind')!r} checkpoint, not a 'fusion_grid' one")
    dims = {m: list(meta["dims"][m]) for m in modalities if m in meta["dims"]}
    if len(dims) != len(meta["dims"]):
        raise CheckpointError(f"{folder}: fusion modalities {sorted(meta['dims'])} do not fit {'+'.join(modalities)}")
    fusion = ExitGridFusion(dims, int(meta["num_classes"]), hidden_dim=int(meta["hidden_dim"]))
    load_weights(folder, fusion)
    return fusion.eval()


def load_dataset_profile(cfg: Config, dataset: str) -> Profile:
    bundle = bundle_of(cfg)
    if bundle is not None:
        return load_profile(bundle.profile_path(), fingerprint_checkpoints(bundle.weight_files()))
    path = Path(cfg.scheduler.profile) if cfg.scheduler.profile else profile_path(cfg, dataset)
    if not path.is_file():
        raise CheckpointError(f"no exit profile at {path}; build it with `exitflow profile --dataset {dataset}`")
    return load_profile(path, fingerprint_checkpoints(weight_files(cfg, dataset)))


def build_transformer(fc: FusionConfig, dims: dict[str, int]) -> FusionTransformer:
    return FusionTransformer(
        FusionTransformerConfig(
            modality_dims=dims, num_classes=NUM_CLASSES, dim=fc.dim, num_layers=fc.layers, num_heads=fc.heads,
            ffn_mult=fc.ffn_mult, trim_tokens=fc.trim, trim_heads=fc.trim, token_score_mode=fc.token_score_mode,
            head_mask_mode=fc.head_mask_mode, gumbel_tau=fc.gumbel_tau, exit_embedding_token=True,
        )
    )


def load_transformer_exit(cfg: Config, dataset: str) -> FusionTransformer:
    """The trained transformer fusion exit of ``dataset`` (eval mode, MuE thresholds set)."""
    folder = transformer_folder(cfg, dataset)
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"no transformer fusion exit at {folder}; train it with "
            f"`exitflow --set data.dataset={dataset} train fusion --inputs encoders` or set fusion.exit: late"
        )
    meta, dims = read_fusion_meta(
        cfg, dataset, folder, "fusion_transformer", f"exitflow --set data.dataset={dataset} train fusion --inputs encoders"
    )
    fc = FusionConfig(**meta["fusion"])
    fusion = build_transformer(fc, dims)
    load_weights(folder, fusion)
    configured = cfg.fusion.exit_thresholds
    fusion.configure_inference(  # MACs: mean over val (trimming and MuE make them per sample)
        dict(configured) if configured else dict(meta["exit_thresholds"]),
        trim=cfg.fusion.trim_at_inference, macs_per_sample=float(meta["macs_per_sample"]),
    )
    return fusion.eval()


def _baseline_folder(cfg: Config, name: str, dataset: str) -> Path:
    bundle = bundle_of(cfg)
    return bundle.baseline_folder(name) if bundle is not None else baseline_folder(cfg, name, dataset)


def rung_weights(cfg: Config, name: str, dataset: str = "avmnist") -> Path:
    """The weights file of baseline ``name`` (a bundle's when ``engine.bundle`` is set): the last rung's model,
    whose hash the exit profile keeps."""
    path = _baseline_folder(cfg, name, dataset) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"the last rung needs the {name} baseline at {path}; train it (`exitflow train "
                              f"baseline --name {name}`) or set scheduler.last_rung: none")
    return path


def load_baseline(cfg: Config, name: str, dataset: str = "avmnist") -> LateFusion:
    folder = _baseline_folder(cfg, name, dataset)
    meta = read_meta(folder)
    if meta.get("kind") != "baseline":
        raise CheckpointError(f"{folder} is not a baseline checkpoint (kind={meta.get('kind')!r})")
    model = LateFusion(BaselineConfig(**meta["arch"]))
    load_weights(folder, model)
    return model.eval()
