"""``bundle.json``: what a model bundle holds, and the check that it holds exactly that.

A bundle is a folder::

    bundle.json            this manifest (format version, exitflow version, data set, classes,
                           preprocessing, encoder family per modality, sha256 of every other file)
    config.yaml            the effective config it was exported with
    MODEL_CARD.md          the model card of the trained family (when there is one)
    training.json          the trainer's record (when there is one)
    image/  audio/ ...     one encoder checkpoint per modality (model.safetensors, config.json, MODEL_CARD.md)
    fusion/                the fusion exit (the CNN family's exit grid)
    profile.json           the calibrated exit profile (thresholds, order), keyed to the weights above
    baselines/NAME/        optional single-pass baselines (lf, image, audio) for bench and the demo

:func:`read_manifest` refuses, with one line naming the file, a bundle of another format version
and any file that changed, is missing or was added since export. Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from typing import Any

from exitflow.encoders.checkpoint import file_sha256
from exitflow.pipeline.errors import CheckpointError

BUNDLE_FORMAT = "exitflow-bundle"
FORMAT_VERSION = 1  # bump when a reader of the old layout would misread the new one
MANIFEST_NAME = "bundle.json"
CONFIG_NAME = "config.yaml"
PROFILE_NAME = "profile.json"
WEIGHTS_NAME = "model.safetensors"
FUSION_DIR = "fusion"
BASELINES_DIR = "baselines"


class BundleError(CheckpointError):
    """A bundle is missing, of another format version, or a file in it differs from its manifest."""


def exitflow_version() -> str:
    """The installed exitflow's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return version("exitflow")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class BundleManifest:
    """The parsed ``bundle.json`` of the bundle at ``path``.

    Attributes:
        path: The bundle folder (absolute).
        dataset: The data set the model was trained and calibrated on.
        family: The encoder family (``cnn``).
        modalities: The modalities, in the data set's order.
        classes: Class names; a prediction ``k`` is ``classes[k]``.
        preprocessing: ``Preprocessing.to_dict()`` of the data set the model was trained on.
        encoders: Modality -> ``{"family", "path", "exit_layers"}``.
        fusion: ``{"kind", "path"}``.
        baselines: Baseline name -> its folder inside the bundle.
        temperatures: Calibration temperatures per encoder exit and per fusion cell.
        files: Relative path -> sha256 of every file except ``bundle.json``.
    """

    path: Path
    format_version: int
    exitflow_version: str
    created: str
    dataset: str
    family: str
    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    preprocessing: dict[str, Any]
    encoders: dict[str, dict[str, Any]]
    fusion: dict[str, Any]
    files: dict[str, str]
    baselines: dict[str, str] = field(default_factory=dict)
    temperatures: dict[str, list[float]] = field(default_factory=dict)
    command: str | None = None

    def encoder_folder(self, modality: str) -> Path:
        return self.path / self.encoders[modality]["path"]

    def fusion_folder(self) -> Path:
        return self.path / self.fusion["path"]

    def profile_path(self) -> Path:
        return self.path / PROFILE_NAME

    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    def baseline_folder(self, name: str) -> Path:
        if name not in self.baselines:
            have = ", ".join(sorted(self.baselines)) or "none"
            raise BundleError(f"bundle {self.path} holds no {name!r} baseline (it has: {have}); "
                              "export it with baselines (exitflow export, the default) or pick an adaptive system")
        return self.path / self.baselines[name]

    def weight_files(self) -> list[Path]:
        """The weights the adaptive systems load (their fingerprint keys ``profile.json``)."""
        return [self.encoder_folder(m) / WEIGHTS_NAME for m in self.modalities] + [self.fusion_folder() / WEIGHTS_NAME]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT, "format_version": self.format_version, "exitflow_version": self.exitflow_version,
            "created": self.created, "command": self.command, "dataset": self.dataset, "family": self.family,
            "modalities": list(self.modalities), "classes": list(self.classes), "preprocessing": self.preprocessing,
            "encoders": self.encoders, "fusion": self.fusion, "baselines": self.baselines,
            "temperatures": self.temperatures, "config": CONFIG_NAME, "profile": PROFILE_NAME,
            "files": dict(sorted(self.files.items())),
        }


def bundle_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` except the manifest, as sorted POSIX relative paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST_NAME)


def hash_files(folder: Path) -> dict[str, str]:
    return {rel: file_sha256(folder / rel) for rel in bundle_files(folder)}


def write_manifest(manifest: BundleManifest) -> Path:
    path = manifest.path / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def _relative(value: Any, where: str) -> str:
    """A path inside the bundle (relative, no ``..``), else BundleError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a relative path, got {value!r}")
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"{where}: {value!r} points outside the bundle")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
        raise ValueError(f"{where}: expected a non-empty list of names")
    return tuple(value)


def _parse(folder: Path, data: dict[str, Any]) -> BundleManifest:
    """The manifest fields, type-checked (ValueError naming the field)."""
    modalities = _strings(data.get("modalities"), "modalities")
    encoders = data.get("encoders")
    if not (isinstance(encoders, dict) and set(encoders) == set(modalities)
            and all(isinstance(e, dict) for e in encoders.values())):
        raise ValueError(f"encoders: expected one entry per modality {list(modalities)}")
    for m, entry in encoders.items():
        _relative(entry.get("path"), f"encoders.{m}.path")
    fusion = data.get("fusion")
    if not isinstance(fusion, dict):
        raise ValueError("fusion: expected an object with kind and path")
    _relative(fusion.get("path"), "fusion.path")
    baselines = data.get("baselines") or {}
    if not isinstance(baselines, dict):
        raise ValueError("baselines: expected an object of name -> folder")
    for name, rel in baselines.items():
        _relative(rel, f"baselines.{name}")
    files = data.get("files")
    if not (isinstance(files, dict) and files and all(isinstance(v, str) and len(v) == 64 for v in files.values())):
        raise ValueError("files: expected an object of relative path -> sha256")
    for rel in files:
        _relative(rel, "files")
    preprocessing = data.get("preprocessing")
    if not isinstance(preprocessing, dict):
        raise ValueError("preprocessing: expected an object")
    for key in ("dataset", "family", "created"):
        if not isinstance(data.get(key), str):
            raise ValueError(f"{key}: expected a string")
    return BundleManifest(
        path=folder, format_version=int(data["format_version"]), exitflow_version=str(data.get("exitflow_version")),
        created=data["created"], dataset=data["dataset"], family=data["family"], modalities=modalities,
        classes=_strings(data.get("classes"), "classes"), preprocessing=preprocessing, encoders=encoders,
        fusion=fusion, files=files, baselines=baselines, temperatures=data.get("temperatures") or {},
        command=data.get("command"),
    )


def verify_files(manifest: BundleManifest) -> None:
    """Every file listed is there with its sha256, and nothing else is.

    Raises:
        BundleError: one line naming the first changed, missing or extra file (and how many more).
    """
    problems = []
    for rel, digest in sorted(manifest.files.items()):
        path = manifest.path / rel
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif file_sha256(path) != digest:
            problems.append(f"{path} changed since export (sha256 differs from {MANIFEST_NAME})")
    extra = sorted(set(bundle_files(manifest.path)) - set(manifest.files))
    problems += [f"{manifest.path / rel} is not part of the bundle (not in {MANIFEST_NAME})" for rel in extra]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise BundleError(f"bundle {manifest.path}: {problems[0]}{more}; re-export it with `exitflow export`")


def _release(text: str) -> tuple[str, ...] | None:
    """``"0.1.3"`` -> ``("0", "1")``: the part of a version that must match (None when unknown)."""
    parts = text.split(".")
    if text in ("", "None", "unknown") or len(parts) < 2:
        return None
    return tuple(parts[:2])


def check_release(path: Path, written_by: str, running: str | None = None) -> None:
    """Refuse a bundle written by another exitflow release series (major.minor; patches are compatible).

    An unknown version on either side (an uninstalled tree) is not checked.

    Raises:
        BundleError: one line naming both versions and what to do.
    """
    running = running or exitflow_version()
    ours, theirs = _release(running), _release(written_by)
    if ours is not None and theirs is not None and ours != theirs:
        raise BundleError(
            f"{path}: written by exitflow {written_by}, this is exitflow {running} (release {'.'.join(ours)}.x "
            "reads only its own release's bundles); re-export it with this exitflow's `exitflow export`"
        )


def read_manifest(folder: str | Path, verify: bool = True) -> BundleManifest:
    """The manifest of the bundle at ``folder``, checked (format version) and, by default, verified.

    Raises:
        BundleError: one line naming the bundle or file and what to do.
    """
    folder = Path(folder).expanduser().resolve()
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise BundleError(f"no bundle at {folder}: not a folder; write one with `exitflow export {folder}`")
    if not path.is_file():
        raise BundleError(f"{folder} is not a bundle ({MANIFEST_NAME} missing); write one with `exitflow export DIR`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: cannot read the manifest ({e}); re-export the bundle") from e
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not an exitflow bundle manifest (format != {BUNDLE_FORMAT!r})")
    found = data.get("format_version")
    if found != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {found!r} (written by exitflow {data.get('exitflow_version')}); this "
            f"exitflow ({exitflow_version()}) reads format {FORMAT_VERSION}; re-export it with this exitflow's "
            "`exitflow export`"
        )
    check_release(path, str(data.get("exitflow_version")))
    try:
        manifest = _parse(folder, data)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{path}: {e}; re-export the bundle") from e
    if verify:
        verify_files(manifest)
    return manifest
