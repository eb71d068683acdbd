"""``exitflow data import DIR``: check a hand-written manifest and build its model-ready cache.

Every row is decoded with the data set's :class:`~exitflow.pipeline.data.preprocessing.Preprocessing`
(the same transforms the live path runs). Problems are collected, one line each (missing file,
undecodable image/audio, audio too short, unknown label, empty split, a label without training
rows, ...); if there is any, the import fails and nothing is written. Otherwise the cache is
written into a temporary folder beside ``DIR/cache`` and renamed over it at the end, so a
reader sees the old cache or the new one, never half of one.

Splits: the manifest's ``split`` column, or, without one, group-disjoint splits: the groups
(``group`` column; each row its own group without one) are stratified by the set of labels they
hold (speakers who said every command apart from recordings of one class), and within each
stratum dealt, in an order shuffled by ``seed``, to the split furthest below its share of the
stratum's rows relative to that share (``val_fraction``, ``test_fraction``, the rest train).
Rows of one group always land in one split.

Cache layout (``DIR/cache/``): ``dataset.json`` (modalities, classes, counts, digests, the
manifest's sha256), ``classes.json``, ``preprocessing.json`` and ``<split>.npz`` with
``labels`` (N,) int64, ``group``/``id`` (N,) str, ``line`` (N,) int64 and per modality ``m``
(N, 1, H, W) float32 (zeros where absent) with ``m_present`` (N,) bool (``text_raw``: the
normalised strings).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import soundfile as sf
from tqdm import tqdm

from exitflow.pipeline.data.imported import CACHE_DIR
from exitflow.pipeline.data.manifest import (
    SPLIT_NAMES,
    Manifest,
    ManifestError,
    ManifestRow,
    find_manifest,
    read_class_list,
    read_manifest,
)
from exitflow.pipeline.data.preprocessing import Preprocessing, PreprocessingError
from exitflow.pipeline.errors import DataError
from exitflow.pipeline.folders import swap_in

CACHE_FORMAT = 1


@dataclass(frozen=True)
class ImportSettings:
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15


def read_preprocessing(folder: Path, modalities: tuple[str, ...]) -> Preprocessing:
    """``folder/preprocessing.json`` or the defaults; text is a character grid (the CNN family's input)."""
    path = folder / "preprocessing.json"
    values: dict = {"text_encoding": "chars", "text_normalize": True, "text_max_chars": 40}
    if path.is_file():
        try:
            values.update(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
            raise DataError(f"{path} is not a JSON object of preprocessing fields ({e})") from e
    try:
        pre = Preprocessing.from_dict(values)
    except PreprocessingError as e:
        raise DataError(f"{path}: {e}") from e
    if "text" in modalities and pre.text_encoding != "chars":
        raise DataError(f"{path}: text_encoding must be 'chars' for an imported set (its text encoder is a "
                        f"character CNN)")
    return pre


def _resolve(folder: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else folder / p


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float64 samples and the rate of a WAV/FLAC/OGG file (channels averaged)."""
    data, rate = sf.read(str(path), dtype="float64", always_2d=True)  # (L, channels)
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], int(rate)


def read_image(path: Path) -> np.ndarray:
    """The file's pixels as stored (gray 2-D, BGR or BGRA), or ValueError when it does not decode."""
    frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise ValueError("cannot decode it as an image (PNG/JPEG expected)")
    return frame


def read_text_cell(folder: Path, value: str) -> str:
    """A text cell: the string itself, or the contents of the ``.txt`` file it names."""
    if not value.lower().endswith(".txt"):
        return value
    path = _resolve(folder, value)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    return path.read_text(encoding="utf-8")


def decode_cell(folder: Path, modality: str, value: str, pre: Preprocessing) -> np.ndarray:
    """One manifest cell -> its model-ready tensor (C, H, W); ValueError/OSError say what is wrong."""
    if modality == "text":
        return np.asarray(pre.text_input(read_text_cell(folder, value)))
    path = _resolve(folder, value)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    if modality == "image":
        return pre.image(read_image(path))
    try:
        samples, rate = read_audio(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ValueError(f"cannot decode it as audio (WAV/FLAC expected): {e}") from e
    return pre.audio(samples, rate)


def group_splits(rows: list[ManifestRow], settings: ImportSettings) -> list[str]:
    """Group-disjoint ``train``/``val``/``test`` per row (see the module doc)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.group or f"\0row{r.line}", []).append(i)
    strata: dict[tuple[str, ...], list[str]] = {}  # groups holding the same set of labels
    for name, members in groups.items():
        strata.setdefault(tuple(sorted({rows[i].label for i in members})), []).append(name)
    rng = np.random.default_rng(settings.seed)
    out = [""] * len(rows)
    for key in sorted(strata):
        names = sorted(strata[key])
        total = sum(len(groups[n]) for n in names)
        shares = {"val": settings.val_fraction, "test": settings.test_fraction}
        shares["train"] = 1.0 - shares["val"] - shares["test"]
        filled = dict.fromkeys(SPLIT_NAMES, 0)
        for k in rng.permutation(len(names)).tolist():
            members = groups[names[k]]
            # the split furthest below its share of this stratum's rows (relative), train first on ties
            split = max(SPLIT_NAMES, key=lambda s: ((shares[s] * total - filled[s]) / max(shares[s] * total, 1e-9),
                                                       s == "train"))
            filled[split] += len(members)
            for i in members:
                out[i] = split
    return out


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over a split's arrays except ``line`` (where a row sits in the manifest file is not data)."""
    h = hashlib.sha256()
    for k in sorted(set(arrays) - {"line"}):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def _check_splits(splits: list[str], labels: list[str], classes: list[str]) -> list[str]:
    problems = []
    for s in SPLIT_NAMES:
        if s not in splits:
            problems.append(f"split {s!r} is empty (every split needs rows; add rows or groups, or a split column)")
    for c in classes:
        where = sorted({s for s, lab in zip(splits, labels, strict=True) if lab == c})
        if where and "train" not in where:
            problems.append(f"label {c!r} has no train rows (seen only in {', '.join(where)})")
    return problems


def import_dataset(
    folder: Path, settings: ImportSettings = ImportSettings(), progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Validate ``folder``'s manifest, build ``folder/cache``; returns the written ``dataset.json``.

    Raises:
        ManifestError: one line per problem found; nothing is written then.
        DataError: no manifest, an unreadable class list or preprocessing file, a cache that cannot be written.
    """
    folder = Path(folder)
    manifest: Manifest = read_manifest(find_manifest(folder))
    pre = read_preprocessing(folder, manifest.modalities)
    fixed_classes = read_class_list(folder)
    problems = list(manifest.problems)
    if fixed_classes is not None:
        known = set(fixed_classes)
        problems += [f"line {r.line}: unknown label {r.label!r} (not in classes.json)"
                     for r in manifest.rows if r.label and r.label not in known]
    tensors: dict[str, list[np.ndarray | None]] = {m: [] for m in manifest.modalities}
    texts: list[str] = []  # normalised text of each row ("" where absent)
    for r in tqdm(manifest.rows, desc=f"import {folder.name}", unit="row", disable=not progress):
        for m in manifest.modalities:
            value, x = r.cells[m], None
            if value:
                try:
                    x = decode_cell(folder, m, value, pre)
                except (OSError, ValueError, cv2.error) as e:  # AudioInputError is a ValueError
                    problems.append(f"line {r.line}: {m} {value!r}: {e}")
            tensors[m].append(x)
        if "text" in manifest.modalities:
            ok = tensors["text"][-1] is not None
            texts.append(pre.text(read_text_cell(folder, r.cells["text"])) if ok else "")
    classes = fixed_classes or sorted({r.label for r in manifest.rows if r.label})
    labels = [r.label for r in manifest.rows]
    splits = [r.split for r in manifest.rows] if manifest.has_split else group_splits(manifest.rows, settings)
    problems += _check_splits(splits, labels, classes)
    if problems:
        raise ManifestError(problems, str(manifest.path))
    class_id = {c: i for i, c in enumerate(classes)}
    info: dict = {
        "format": CACHE_FORMAT, "name": folder.resolve().name, "modalities": list(manifest.modalities),
        "classes": classes, "manifest": manifest.path.name,
        "manifest_sha256": hashlib.sha256(manifest.path.read_bytes()).hexdigest(),
        "splits_from": "manifest" if manifest.has_split else (
            f"group-disjoint by {'group' if manifest.has_group else 'row'}, seed {settings.seed}, "
            f"val {settings.val_fraction}, test {settings.test_fraction}"),
        "counts": {}, "present": {}, "digests": {}, "preprocessing": pre.to_dict(),
    }
    cache = folder / CACHE_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".cache.tmp-", dir=folder))
    try:
        for split in SPLIT_NAMES:
            idx = [i for i, s in enumerate(splits) if s == split]
            arrays: dict[str, Any] = {  # Any: numpy.savez types **kwds like allow_pickle
                "labels": np.array([class_id[labels[i]] for i in idx], dtype=np.int64),
                "group": np.array([manifest.rows[i].group for i in idx], dtype=str),
                "id": np.array([manifest.rows[i].sample_id for i in idx], dtype=str),
                "line": np.array([manifest.rows[i].line for i in idx], dtype=np.int64),
            }
            info["present"][split] = {}
            for m in manifest.modalities:
                shape = pre.input_shape(m)
                stack = np.zeros((len(idx), *shape), dtype=np.float32)  # (N, C, H, W)
                present = np.zeros(len(idx), dtype=bool)
                for j, i in enumerate(idx):
                    x = tensors[m][i]
                    if x is not None:
                        stack[j], present[j] = x, True
                arrays[m], arrays[f"{m}_present"] = stack, present
                info["present"][split][m] = int(present.sum())
            if "text" in manifest.modalities:
                arrays["text_raw"] = np.array([texts[i] for i in idx], dtype=str)
            np.savez(tmp / f"{split}.npz", **arrays)
            info["counts"][split] = len(idx)
            info["digests"][split] = _digest(arrays)
        (tmp / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
        (tmp / "preprocessing.json").write_text(json.dumps(pre.to_dict(), indent=1) + "\n")
        (tmp / "dataset.json").write_text(json.dumps(info, indent=1) + "\n")
        swap_in(tmp, cache)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"could not write the cache {cache}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
