"""Finding the data root and reading its raw archives with checks that say how to fix things.

A data root has the layout of ``../shared/data``::

    ROOT/mnist/mnist_train.npz      images uint8 (N,28,28), labels uint8 (N,)
    ROOT/mnist/mnist_test.npz
    ROOT/mnist/pca_basis.npz        optional: a fitted image PCA (used when train is absent)
    ROOT/fsdd/fsdd_{train,test}.npz audio int16 concat, offsets, labels, speakers, indices, ...
    ROOT/grid_av_samples/...        GRID clips
    ROOT/ljspeech_subset/...        LJ Speech clips

``data.root: auto`` picks ``../shared/data`` beside the repo when present, else the small
real slice embedded in the repo (``pipeline/embedded_data``).
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exitflow.pipeline.config import REPO_ROOT, Config, resolve_path
from exitflow.pipeline.errors import DataError

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
EMBEDDED_DATA = Path(__file__).resolve().parent.parent / "embedded_data"


def data_root(cfg: Config) -> Path:
    """The data root ``cfg.data.root`` names (``auto``, ``embedded`` or a path)."""
    root = cfg.data.root
    if root == "embedded":
        return EMBEDDED_DATA
    if root == "auto":
        return SHARED_DATA if (SHARED_DATA / "mnist").is_dir() else EMBEDDED_DATA
    path = resolve_path(cfg, root)
    if not path.is_dir():
        raise DataError(
            f"data root {path} does not exist; set data.root (or --data-root) to a folder with the "
            f"layout of ../shared/data, or use data.root=embedded for the slice shipped in the repo"
        )
    return path


def is_embedded(root: Path) -> bool:
    return root.resolve() == EMBEDDED_DATA.resolve()


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load the named arrays of ``path`` without pickle; a missing or corrupt file is a DataError."""
    if not path.is_file():
        raise DataError(f"missing data file {path}; check data.root (or --data-root) points at a full data root")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(f"{path} lacks array(s) {missing}; found {archive.files}")
            return {k: archive[k] for k in keys}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path} is corrupt or not an .npz archive ({e}); restore it from the data source") from e


@dataclass(frozen=True)
class MnistSplit:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64


def read_mnist(root: Path, which: str) -> MnistSplit:
    path = root / "mnist" / f"mnist_{which}.npz"
    arrays = load_npz(path, ("images", "labels"))
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8 (N,28,28), found {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or labels.max(initial=0) > 9:
        raise DataError(f"{path}: labels must be (N,) digits 0-9 matching the images")
    return MnistSplit(images=images, labels=labels.astype(np.int64))


@dataclass(frozen=True)
class FsddRecordings:
    """FSDD recordings of one or more archives, in a deterministic (speaker, digit, index) order."""

    clips: list[np.ndarray]  # each int16 (L,)
    labels: np.ndarray  # (R,) int64
    speakers: np.ndarray  # (R,) str
    indices: np.ndarray  # (R,) int64 repetition index 0-49
    filenames: np.ndarray  # (R,) str
    sample_rate_hz: int


FSDD_KEYS = ("audio", "offsets", "labels", "speakers", "indices", "filenames", "sample_rate")


def read_fsdd(root: Path, which: tuple[str, ...] = ("train", "test")) -> FsddRecordings:
    """Read FSDD archives (all present ones among ``which``) sorted by (speaker, digit, index)."""
    clips: list[np.ndarray] = []
    labels, speakers, indices, names = [], [], [], []
    rate = None
    found = 0
    for part in which:
        path = root / "fsdd" / f"fsdd_{part}.npz"
        if not path.is_file():
            continue
        found += 1
        a = load_npz(path, FSDD_KEYS)
        offsets = a["offsets"]
        n = len(a["labels"])
        if offsets.shape != (n + 1,) or offsets[-1] != a["audio"].shape[0] or np.any(np.diff(offsets) <= 0):
            raise DataError(f"{path}: offsets do not partition the audio array; the file is damaged")
        this_rate = int(a["sample_rate"])
        if rate is not None and this_rate != rate:
            raise DataError(f"{path}: sample rate {this_rate} Hz differs from {rate} Hz of the other FSDD file")
        rate = this_rate
        clips.extend(a["audio"][offsets[i] : offsets[i + 1]] for i in range(n))
        labels.append(a["labels"].astype(np.int64))
        speakers.append(a["speakers"])
        indices.append(a["indices"].astype(np.int64))
        names.append(a["filenames"])
    if not found:
        raise DataError(f"no FSDD archive under {root / 'fsdd'}; expected fsdd_train.npz and/or fsdd_test.npz")
    lab, spk, idx, nam = (np.concatenate(x) for x in (labels, speakers, indices, names))
    order = np.lexsort((idx, lab, spk))
    return FsddRecordings(
        clips=[clips[i] for i in order],
        labels=lab[order],
        speakers=spk[order],
        indices=idx[order],
        filenames=nam[order],
        sample_rate_hz=int(rate or 8000),
    )


def file_digest(paths: list[Path]) -> str:
    """Short sha256 over the bytes of ``paths`` (existing ones), for cache keys."""
    h = hashlib.sha256()
    for path in paths:
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
