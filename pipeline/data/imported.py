"""An imported data set (``exitflow data import DIR``) as the trainers, calibration, bench and replay read it.

An imported set is named by its folder: every command's ``--dataset`` takes a built-in name
(``avmnist``, ...) or the path of a folder holding ``cache/dataset.json``; internally the set's
name is its resolved absolute path (a built-in name never contains a path separator). Its
trained model lives in ``DIR/model/`` (``pipeline.artifacts.cnn_folder``).

:class:`ImportedSplit` duck-types the built-in ``AVSplit`` where the shared code reads it:
``image`` / ``audio`` / ``text`` hold model-ready float32 arrays (N, 1, H, W) or None for a
modality the set lacks (``text`` is the character grid; for a model trained with a pretrained text
backbone, ``exitflow train cnn --text-backbone``, whose ``model/preprocessing.json`` says
``text_encoding: string``, it is the list of normalised strings instead, :data:`ABSENT_TEXT` where a
row has no text), ``labels`` (N,) int64,
``head(n)``, ``digest()``; ``present`` says per modality which rows really have it (absent
rows hold zeros) and :meth:`ImportedSplit.samples` yields replay samples with those rows'
modality in ``missing``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exitflow.pipeline.errors import DataError
from exitflow.pipeline.messages import Sample

if TYPE_CHECKING:
    from exitflow.pipeline.data.preprocessing import Preprocessing

CACHE_DIR = "cache"
MODEL_DIR = "model"
IMPORTED_SPLITS = ("train", "val", "test")
ABSENT_TEXT = "[UNK]"  # the string a text backbone reads for a row without text (the grid's zeros)


def is_imported(dataset: str) -> bool:
    """Whether ``dataset`` names an imported set (a path) rather than a built-in data set."""
    return os.sep in dataset or "/" in dataset


def imported_name(value: str | Path) -> str:
    """The name of the imported set in folder ``value``: its resolved absolute path.

    Raises:
        DataError: the folder does not exist or was never imported.
    """
    folder = Path(value).expanduser().resolve()
    if not (folder / CACHE_DIR / "dataset.json").is_file():
        hint = ("it does not exist" if not folder.exists() else
                f"it has no {CACHE_DIR}/dataset.json; import it first with `exitflow data import {value}`")
        raise DataError(f"{value} is neither a built-in data set nor an imported data set folder: {hint}")
    return str(folder)


def dataset_info(dataset: str) -> dict[str, Any]:
    """``cache/dataset.json`` of the imported set ``dataset``; a stale cache is an error.

    Raises:
        DataError: never imported, or the manifest changed since the import.
    """
    folder = Path(dataset)
    path = folder / CACHE_DIR / "dataset.json"
    if not path.is_file():
        raise DataError(f"{folder} has no imported cache; run `exitflow data import {folder}`")
    info = json.loads(path.read_text())
    manifest = folder / info["manifest"]
    if manifest.is_file() and hashlib.sha256(manifest.read_bytes()).hexdigest() != info["manifest_sha256"]:
        raise DataError(f"{manifest} changed since it was imported; re-run `exitflow data import {folder}`")
    return info


def dataset_modalities(dataset: str) -> tuple[str, ...]:
    return tuple(dataset_info(dataset)["modalities"])


def class_names(dataset: str) -> list[str]:
    return list(dataset_info(dataset)["classes"])


def dataset_preprocessing(dataset: str) -> Preprocessing:
    """The imported set's stored preprocessing parameters."""
    # imported here: it loads librosa (~1 s), which the artifact lookups importing this module never need
    from exitflow.pipeline.data.preprocessing import Preprocessing

    return Preprocessing.from_dict(json.loads((Path(dataset) / CACHE_DIR / "preprocessing.json").read_text()))


def model_folder(dataset: str) -> Path:
    """Where the imported set's model (``image/``, ``audio/``, ``text/``, ``fusion/``, ``profile.json``) lives."""
    return Path(dataset) / MODEL_DIR


@dataclass(frozen=True)
class ImportedSplit:
    """One split of an imported set, model-ready (see the module doc)."""

    dataset: str
    split: str
    labels: np.ndarray  # (N,) int64
    present: dict[str, np.ndarray]  # modality -> (N,) bool
    group: np.ndarray  # (N,) str
    ids: np.ndarray  # (N,) str
    image: np.ndarray | None = None  # (N, 1, S, S) float32
    audio: np.ndarray | None = None  # (N, 1, 112, 112) float32
    text: Any = None  # (N, 1, L, L) float32 character grids, or list[str] (see the module doc)
    text_raw: np.ndarray | None = None  # (N,) str, the normalised strings

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.present)

    def inputs(self, m: str) -> Any:
        x = getattr(self, m)
        if x is None:
            raise DataError(f"{self.dataset} has no {m} modality (it has {', '.join(self.modalities)})")
        return x

    def head(self, n: int | None) -> ImportedSplit:
        if n is None or n >= len(self):
            return self

        def cut(x: Any) -> Any:
            return None if x is None else x[:n]

        return dataclasses.replace(
            self, labels=self.labels[:n], present={m: p[:n] for m, p in self.present.items()},
            group=self.group[:n], ids=self.ids[:n], image=cut(self.image), audio=cut(self.audio),
            text=cut(self.text), text_raw=cut(self.text_raw))

    def digest(self) -> str:
        """sha256 over labels, masks and every modality's array: equal digests mean equal data."""
        h = hashlib.sha256(np.ascontiguousarray(self.labels).tobytes())
        for m in self.modalities:
            h.update(m.encode())
            h.update(np.ascontiguousarray(self.present[m]).tobytes())
            h.update(np.ascontiguousarray(self.inputs(m)).tobytes())
        return h.hexdigest()

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        """Replay samples in row order (``timestamp_ns`` = row); absent modalities are ``missing``."""
        n = len(self) if limit is None else min(limit, len(self))
        for i in range(n):
            payloads = {m: self.inputs(m)[i] for m in self.modalities if self.present[m][i]}
            missing = frozenset(m for m in self.modalities if not self.present[m][i])
            yield Sample(sample_id=i, timestamp_ns=i, payloads=payloads, missing=missing, label=int(self.labels[i]))


def model_reads_strings(dataset: str) -> bool:
    """Whether the trained model of ``dataset`` reads text as strings (a pretrained text backbone)."""
    return reads_strings(model_folder(dataset) / "preprocessing.json")


def reads_strings(path: Path) -> bool:
    """Whether the preprocessing stored at ``path`` (a model's or a bundle's ``preprocessing.json``)
    hands text to the encoders as strings; False when there is no such file."""
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("text_encoding") == "string"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise DataError(f"{path} is not a JSON object of preprocessing fields ({e}); retrain the model") from e


def load_imported_split(dataset: str, split: str, text_strings: bool | None = None) -> ImportedSplit:
    """Split ``split`` (train, val or test) of the imported set ``dataset``.

    ``text_strings``: ``text`` as strings rather than character grids (None: as the trained model in
    ``DIR/model`` reads it, :func:`model_reads_strings`).

    Raises:
        DataError: another split name, or a missing / stale cache.
    """
    if split not in IMPORTED_SPLITS:
        raise DataError(f"an imported data set has splits {', '.join(IMPORTED_SPLITS)}, not {split!r}")
    info = dataset_info(dataset)
    path = Path(dataset) / CACHE_DIR / f"{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as a:
            arrays = {k: a[k] for k in a.files}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} ({e}); re-run `exitflow data import {dataset}`") from e
    modalities = info["modalities"]
    text = arrays.get("text")
    if text is not None and (model_reads_strings(dataset) if text_strings is None else text_strings):
        if "text_raw" not in arrays:
            raise DataError(f"{path} holds no text strings; re-run `exitflow data import {dataset}`")
        text = [str(t) if ok and str(t).strip() else ABSENT_TEXT for t, ok in zip(arrays["text_raw"], arrays["text_present"], strict=True)]
    return ImportedSplit(
        dataset=dataset, split=split, labels=arrays["labels"].astype(np.int64),
        present={m: arrays[f"{m}_present"] for m in modalities}, group=arrays["group"], ids=arrays["id"],
        image=arrays.get("image"), audio=arrays.get("audio"), text=text,
        text_raw=arrays.get("text_raw"),
    )
