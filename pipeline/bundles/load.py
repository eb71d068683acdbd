"""A bundle, loaded: ``exitflow.load_bundle(DIR)`` and the ``--bundle DIR`` of run, replay, bench and demo.

:func:`bundle_config` merges a bundle into the caller's config: the model's own sections come
from the bundle's ``config.yaml`` (``encoder``, ``lgvit``, ``fusion``, ``scheduler``, ``joint``
and the data-set definition in ``data``, so thresholds and the operating point are the ones the
model was calibrated with); where things run and are written stays the caller's (``engine``,
``power``, ``budget``, ``stream``, ``ray``, ``train``, ``replay``, ``bench``, ``data.root`` and
``data.cache_dir``); ``--set`` overrides are applied last, on top of both. ``engine.bundle``
then names the bundle, so every loader in ``pipeline.inference.loading`` reads from it, in
this process or in a live engine actor.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from exitflow.pipeline.artifacts import modalities_of
from exitflow.pipeline.bundles.manifest import BundleError, BundleManifest, read_manifest
from exitflow.pipeline.config import (
    Config,
    config_from_dict,
    load_config,
    parse_overrides,
    read_yaml,
    resolve_path,
)
from exitflow.pipeline.config_schema import to_dict
from exitflow.pipeline.data.imported import is_imported
from exitflow.pipeline.data.preprocessing import Preprocessing, PreprocessingError
from exitflow.pipeline.errors import ConfigError
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from exitflow.pipeline.inference.systems import System, baseline_system, load_system

MODEL_SECTIONS = ("encoder", "lgvit", "fusion", "scheduler", "joint")
LOCAL_DATA_KEYS = ("root", "cache_dir")  # where data lives on this machine stays the caller's
BASELINE_SYSTEMS = ("lf", "image", "audio")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_bundle_config(manifest: BundleManifest) -> Config:
    """The bundle's own ``config.yaml``, validated.

    Raises:
        BundleError: the file does not validate with this exitflow (one line, the first problem).
    """
    path = manifest.config_path()
    try:
        return config_from_dict(read_yaml(path), source=str(path))
    except ConfigError as e:
        raise BundleError(f"{path}: {e.issues[0] if e.issues else e} (this exitflow cannot read the bundle's "
                          "config; re-export the bundle)") from e


def bundle_config(cfg: Config, folder: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """``cfg`` with the model of the bundle at ``folder`` (see the module doc); the bundle is verified.

    Raises:
        BundleError: the bundle is missing, damaged or of another format version.
        ConfigError: an override does not validate.
    """
    manifest = read_manifest(folder)
    own = to_dict(read_bundle_config(manifest))
    data = to_dict(cfg)
    data.pop("source_path", None)
    for section in MODEL_SECTIONS:
        data[section] = own[section]
    data["data"] = {**own["data"], **{k: data["data"][k] for k in LOCAL_DATA_KEYS}}
    data["scheduler"]["profile"] = None  # the bundle's profile.json
    data["joint"]["use"] = False
    data["engine"]["bundle"] = str(manifest.path)
    extra, errors = parse_overrides(overrides)
    if errors:
        raise ConfigError(errors, source="--set")
    extra.get("engine", {}).pop("bundle", None)  # --bundle names the bundle
    return config_from_dict(_merge(data, extra), source=cfg.source_path or "bundle")


@dataclasses.dataclass
class Bundle:
    """A verified bundle, ready to run: its config, classes, preprocessing and systems.

    ``bundle.engine`` is the adaptive ``exitflow`` system; ``bundle.system(name)`` any other
    (``full``, ``rexit``, ``static`` needs exits, and the bundled baselines ``lf``, ``image``,
    ``audio``). Every system has ``process(sample) -> Decision``; ``bundle.class_name(decision.prediction)``
    names the class.
    """

    manifest: BundleManifest
    config: Config
    preprocessing: Preprocessing
    _parts: AdaptiveParts | None = dataclasses.field(default=None, repr=False)
    _engine: System | None = dataclasses.field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.manifest.path

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.manifest.modalities

    @property
    def dataset(self) -> str:
        return self.manifest.dataset

    @property
    def parts(self) -> AdaptiveParts:
        """Encoders, fusion exit and profile, loaded once and shared by the adaptive systems."""
        if self._parts is None:
            self._parts = AdaptiveParts(self.config, self.dataset)
        return self._parts

    @property
    def engine(self) -> System:
        """The adaptive ``exitflow`` system (the configured power meter, budget if set), built once."""
        if self._engine is None:
            self._engine = load_system(self.config, "exitflow", self.dataset)
        return self._engine

    def system(self, name: str = "exitflow") -> System:
        """A named system over the bundle's model (a fresh one on every call)."""
        if name in BASELINE_SYSTEMS:
            return baseline_system(self.config, name, self.dataset)  # on the configured backend
        if name == "full":
            return self.parts.full()
        if name == "rexit":
            return self.parts.rexit(seed=self.config.data.seed)
        return load_system(self.config, name, self.dataset)

    def class_name(self, prediction: int) -> str:
        if not 0 <= prediction < len(self.classes):
            raise BundleError(f"prediction {prediction} is not a class of bundle {self.path} ({len(self.classes)})")
        return self.classes[prediction]


def load_bundle(folder: str | Path, cfg: Config | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Bundle:
    """The bundle at ``folder``, verified, with ``cfg`` (default: :func:`load_config`) for where it runs.

    Raises:
        BundleError: one line naming the bundle or file: missing, damaged, another format version.
    """
    base = cfg if cfg is not None else load_config()
    config = bundle_config(base, folder, overrides)
    manifest = read_manifest(folder, verify=False)  # verified by bundle_config just now
    try:
        preprocessing = Preprocessing.from_dict(manifest.preprocessing)
    except PreprocessingError as e:
        raise BundleError(f"{manifest.path / 'bundle.json'}: {e}") from e
    return Bundle(manifest=manifest, config=config, preprocessing=preprocessing)


def default_dataset(manifest: BundleManifest) -> str:
    """The data set to draw samples from when none is named: the bundle's own.

    Raises:
        BundleError: the bundle's data set is an imported folder that is not on this machine.
    """
    if is_imported(manifest.dataset) and not Path(manifest.dataset).is_dir():
        raise BundleError(f"bundle {manifest.path} was trained on the imported set {manifest.dataset}, which is not "
                          "here; name the samples with --dataset DIR (an imported set with the same modalities)")
    return manifest.dataset


def check_dataset(manifest: BundleManifest, dataset: str) -> None:
    """Refuse a data set whose modalities are not the bundle's.

    Raises:
        BundleError: naming both modality sets.
    """
    try:
        wanted = modalities_of(dataset)
    except KeyError:  # not a data set this exitflow knows: loading it will say so
        return
    if set(wanted) != set(manifest.modalities):
        raise BundleError(f"bundle {manifest.path} holds a {'+'.join(manifest.modalities)} model; data set "
                          f"{dataset} has {'+'.join(wanted)}")


def preprocessing_of(cfg: Config) -> Preprocessing:
    """The preprocessing the configured model expects: the bundle's when ``engine.bundle`` is set, else the defaults."""
    if not cfg.engine.bundle:
        return Preprocessing()
    manifest = read_manifest(resolve_path(cfg, cfg.engine.bundle), verify=False)
    return Preprocessing.from_dict(manifest.preprocessing)
