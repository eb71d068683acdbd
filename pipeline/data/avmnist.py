"""AV-MNIST (image + spoken digit) and AV-MNIST-T (+ a GRID-style command), built from a data root.

Follows ``../shared/data/AVMNIST_RECIPE.md`` (later generator version) with these choices:

- Image: PCA over the flattened uint8 MNIST images; keep the smallest k whose cumulative
  explained variance exceeds ``1 - image_energy_removed`` (k = 3 at the default 0.75), and
  reconstruct from those k components *without* adding the mean back, then divide by 255
  (as MultiBench's loader does). One PCA is fitted on the 60,000 training images and applied
  to every split (the recipe fits the test split on its own, which lets test images shape
  their own degradation; fitting once on train avoids that and lets a small slice be
  degraded exactly like the full set).
- Audio: FSDD pools by repetition index: 40-49 for test (the recipe's), 5-39 for train and
  0-4 (FSDD's official test recordings) for val, per digit in (speaker, index) order. The
  recipe pairs val with the training pool; then validation audio is recordings the model was
  trained on (measured: 99.9 % val vs 95.8 % test for the audio encoder), which makes val
  useless for calibrating exits. Disjoint pools make val behave like test; walking the MNIST labels in order, each sample takes the next
  recording of its digit's pool, cycling (labels never cross). Spectrogram: see
  ``pipeline.data.spectrogram``. Optional white noise at ``audio_snr_db``.
- Splits: train = MNIST train rows [0, 60000 - val_size), val = the last ``val_size`` rows,
  test = every MNIST test row present (8,000 in ../shared/data, 1,000 in the embedded slice).

Built arrays go to ``data.cache_dir`` (outside git) keyed by every parameter and the source
files' digests; a build writes a temporary folder and renames it, so nothing is left half.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from exitflow.pipeline.config import Config, resolve_path
from exitflow.pipeline.data.grid_commands import make_commands
from exitflow.pipeline.data.roots import data_root, file_digest, load_npz, read_fsdd, read_mnist
from exitflow.pipeline.data.spectrogram import SPEC_BINS, spectrogram_112
from exitflow.pipeline.errors import DataError

BUILDER_VERSION = 3
SPLITS = ("train", "val", "test")
DATASETS = ("avmnist", "avmnist-t")
TEST_POOL_MIN_INDEX = 40
# FSDD repetition-index ranges [lo, hi) of each split's recording pool: test 40-49 (the recipe's),
# val 0-4 (FSDD's official test recordings), train 5-39 -- no recording is shared between splits.
POOL_INDEX_RANGES = {"train": (5, TEST_POOL_MIN_INDEX), "val": (0, 5), "test": (TEST_POOL_MIN_INDEX, 50)}
PCA_KEEP_COMPONENTS = 50


class LazyRows:
    """Rows ``bank[index[i]]`` as float32 in [0, 1], materialised only for the rows asked for.

    Behaves like a read-only (N, 1, 112, 112) array for ``len``, ``shape`` and indexing with an
    int, a slice or an integer array; ``np.asarray`` materialises everything.
    """

    def __init__(self, bank: np.ndarray, index: np.ndarray):
        self.bank = bank  # (R, 112, 112) uint8
        self.index = index  # (N,) int
        self.shape = (index.shape[0], 1, bank.shape[1], bank.shape[2])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        rows = self.bank[self.index[key]].astype(np.float32) / 255.0
        return rows[None] if np.ndim(key) == 0 and not isinstance(key, slice) else rows[:, None]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)


@dataclass(frozen=True)
class AVSplit:
    """One split of AV-MNIST(-T), model-ready.

    Attributes:
        image: (N, 1, 28, 28) float32, PCA-degraded, zero-centred, /255.
        audio: (N, 1, 112, 112) float32 in [0, 1] (a :class:`LazyRows` view).
        labels: (N,) int64 digits.
        rows: (N,) int64 row of each sample in its MNIST archive.
        text: Observed commands (``avmnist-t`` only), else None.
        command: True six-word commands (``avmnist-t`` only), else None.
        text_status: (N,) int8 0 ok / 1 dropped / 2 replaced (``avmnist-t`` only), else None.
        recording: (N,) FSDD file name each audio came from.
    """

    dataset: str
    split: str
    image: np.ndarray
    audio: LazyRows
    labels: np.ndarray
    rows: np.ndarray
    recording: np.ndarray
    text: list[str] | None = None
    command: list[str] | None = None
    text_status: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def digest(self) -> str:
        """sha256 over every array (and text) of the split: equal digests mean equal data."""
        h = hashlib.sha256()
        for arr in (self.image, self.audio.bank, self.audio.index, self.labels, self.rows):
            h.update(np.ascontiguousarray(arr).tobytes())
        for text in self.text or ():
            h.update(text.encode())
        return h.hexdigest()


def _pca_basis(root: Path) -> dict[str, np.ndarray]:
    """Top components of the MNIST training images, from the train archive or a shipped basis."""
    train_path = root / "mnist" / "mnist_train.npz"
    if train_path.is_file():
        x = read_mnist(root, "train").images.reshape(-1, 784).astype(np.float64)
        mean = x.mean(axis=0)
        cov = np.cov(x - mean, rowvar=False)  # (784, 784)
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1]
        eigvals, eigvecs = eigvals[order], eigvecs[:, order]
        comps = eigvecs[:, :PCA_KEEP_COMPONENTS].T  # (K, 784)
        comps *= np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])[:, None]
        return {"mean": mean, "components": comps, "explained_ratio": eigvals / eigvals.sum()}
    basis_path = root / "mnist" / "pca_basis.npz"
    if basis_path.is_file():
        return load_npz(basis_path, ("mean", "components", "explained_ratio"))
    raise DataError(
        f"{root / 'mnist'} has neither mnist_train.npz nor pca_basis.npz; the image PCA needs one of them"
    )


def _degrade_images(images: np.ndarray, basis: dict[str, np.ndarray], energy_removed: float) -> np.ndarray:
    ratio = np.cumsum(basis["explained_ratio"])
    k = int(np.searchsorted(ratio, 1.0 - energy_removed, side="right")) + 1
    if k > basis["components"].shape[0]:
        raise DataError(
            f"image_energy_removed={energy_removed} needs {k} PCA components but only "
            f"{basis['components'].shape[0]} are available; raise data.image_energy_removed"
        )
    comps = basis["components"][:k]  # (k, 784)
    x = images.reshape(-1, 784).astype(np.float64) - basis["mean"]
    recon = (x @ comps.T) @ comps  # (N, 784), mean not added back (recipe)
    return (recon / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)


def _pair_audio(labels: np.ndarray, pool_labels: np.ndarray, name: str) -> np.ndarray:
    """For each label, the next recording (an index into the pool) of that digit, cycling."""
    out = np.empty(labels.shape[0], dtype=np.int64)
    cursor = dict.fromkeys(range(10), 0)
    per_digit = {d: np.flatnonzero(pool_labels == d) for d in range(10)}
    for i, d in enumerate(labels.tolist()):
        choices = per_digit[d]
        if choices.size == 0:
            raise DataError(f"the {name} FSDD pool has no recording of digit {d}")
        out[i] = choices[cursor[d] % choices.size]
        cursor[d] += 1
    return out


def _noisy_clip(clip: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    x = clip.astype(np.float32) / 32768.0
    signal_power = float(np.mean(x**2)) or 1e-12
    noise = rng.standard_normal(x.shape[0]).astype(np.float32) * np.sqrt(signal_power / 10 ** (snr_db / 10))
    return np.clip(x + noise, -1.0, 1.0)


def _to_uint8(spec: np.ndarray) -> np.ndarray:
    return np.round(spec * 255.0).astype(np.uint8)


def cache_key(cfg: Config, root: Path, dataset: str) -> str:
    d = cfg.data
    params = {
        "v": BUILDER_VERSION,
        "dataset": dataset,
        "energy_removed": d.image_energy_removed,
        "snr_db": d.audio_snr_db,
        "seed": d.seed,
        "val_size": d.val_size,
        "text_error_rate": d.text_error_rate if dataset == "avmnist-t" else None,
        "sources": file_digest(
            [root / "mnist" / f for f in ("mnist_train.npz", "mnist_test.npz", "pca_basis.npz")]
            + [root / "fsdd" / f for f in ("fsdd_train.npz", "fsdd_test.npz")]
        ),
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _build(cfg: Config, root: Path, dataset: str, out: Path, progress: bool) -> None:
    """Build every split present in ``root`` into folder ``out`` (which must not exist)."""
    from tqdm import tqdm

    d = cfg.data
    basis = _pca_basis(root)
    fsdd = read_fsdd(root)
    spec_bank = {}
    has_train = (root / "mnist" / "mnist_train.npz").is_file()
    mnist = {"test": read_mnist(root, "test")}
    if has_train:
        mnist["train"] = read_mnist(root, "train")
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        manifest = {"dataset": dataset, "splits": {}, "root": str(root)}
        for source_split, m in mnist.items():
            test = source_split == "test"
            n_train = m.labels.shape[0] - d.val_size
            if not test and n_train <= 0:
                raise DataError(f"data.val_size={d.val_size} leaves no training rows")
            rec = np.empty(m.labels.shape[0], dtype=np.int64)
            spans = {"test": (0, m.labels.shape[0])} if test else {"train": (0, n_train), "val": (n_train, None)}
            for pool_name, (lo, hi) in spans.items():
                lo_idx, hi_idx = POOL_INDEX_RANGES[pool_name]
                pool = np.flatnonzero((fsdd.indices >= lo_idx) & (fsdd.indices < hi_idx))
                rec[lo:hi] = pool[_pair_audio(m.labels[lo:hi], fsdd.labels[pool], pool_name)]
            images = _degrade_images(m.images, basis, d.image_energy_removed)
            if d.audio_snr_db is None:
                needed = np.unique(rec)
                todo = [r for r in needed.tolist() if r not in spec_bank]
                for r in tqdm(todo, desc=f"spectrograms ({source_split})", disable=not progress, unit="clip"):
                    spec_bank[r] = _to_uint8(spectrogram_112(fsdd.clips[r], fsdd.sample_rate_hz))
                bank_ids = needed
                bank = np.stack([spec_bank[r] for r in bank_ids.tolist()])
                audio_index = np.searchsorted(bank_ids, rec)
            else:
                rng = np.random.default_rng([d.seed, 1 if test else 0])
                bank = np.empty((rec.shape[0], SPEC_BINS, SPEC_BINS), dtype=np.uint8)
                for i in tqdm(range(rec.shape[0]), desc=f"noisy spectrograms ({source_split})", disable=not progress):
                    clip = _noisy_clip(fsdd.clips[rec[i]], d.audio_snr_db, rng)
                    bank[i] = _to_uint8(spectrogram_112(clip, fsdd.sample_rate_hz))
                audio_index = np.arange(rec.shape[0])
            if test:
                parts = {"test": np.arange(m.labels.shape[0])}
            else:
                parts = {"train": np.arange(n_train), "val": np.arange(n_train, m.labels.shape[0])}
            for split, rows in parts.items():
                arrays = {
                    "image": images[rows],
                    "audio_bank": bank,
                    "audio_index": audio_index[rows].astype(np.int64),
                    "labels": m.labels[rows],
                    "rows": rows.astype(np.int64),
                    "recording": fsdd.filenames[rec[rows]],
                }
                if dataset == "avmnist-t":
                    seed = d.seed * 2 + (1 if test else 0)  # train/val rows and test rows differ
                    cmds = make_commands(m.labels[rows], d.text_error_rate, seed, rows=rows)
                    arrays["text"] = np.array(cmds.text)
                    arrays["command"] = np.array(cmds.command)
                    arrays["text_status"] = cmds.status
                np.savez(tmp / f"{split}.npz", **arrays)
                manifest["splits"][split] = int(rows.shape[0])
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dataset_dir(cfg: Config, dataset: str | None = None, progress: bool = True) -> Path:
    """The cache folder holding ``dataset`` built from the configured root, building it if needed."""
    dataset = dataset or cfg.data.dataset
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    root = data_root(cfg)
    cache = resolve_path(cfg, cfg.data.cache_dir)
    out = cache / f"{dataset}-{cache_key(cfg, root, dataset)}"
    if not (out / "manifest.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if progress:
            print(f"building {dataset} from {root} into {out} ...", flush=True)
        try:
            _build(cfg, root, dataset, out, progress)
        except FileExistsError:
            pass  # another process finished the same build first
        except OSError as e:
            if not (out / "manifest.json").is_file():
                raise DataError(f"could not write the data cache {out}: {e}; check data.cache_dir") from e
        if progress:
            print(f"built {dataset} in {time.perf_counter() - start:.1f} s", flush=True)
    return out


def load_split(cfg: Config, split: str, dataset: str | None = None, progress: bool = True) -> AVSplit:
    """Load (building on first use) one split of ``avmnist`` or ``avmnist-t``.

    Raises:
        DataError: unknown split/dataset, a split the data root cannot provide (the embedded
            slice holds only ``test``), or missing/corrupt source files.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    folder = dataset_dir(cfg, dataset, progress)
    path = folder / f"{split}.npz"
    if not path.is_file():
        available = json.loads((folder / "manifest.json").read_text())["splits"]
        raise DataError(
            f"split {split!r} is not available from data root {data_root(cfg)} (it has: "
            f"{', '.join(available)}); the embedded slice holds only 'test' — point data.root "
            f"(or --data-root) at a full data root such as ../shared/data"
        )
    dataset = dataset or cfg.data.dataset
    keys = ("image", "audio_bank", "audio_index", "labels", "rows", "recording")
    text_keys = ("text", "command", "text_status") if dataset == "avmnist-t" else ()
    a = load_npz(path, keys + text_keys)
    return AVSplit(
        dataset=dataset,
        split=split,
        image=a["image"],
        audio=LazyRows(a["audio_bank"], a["audio_index"]),
        labels=a["labels"].astype(np.int64),
        rows=a["rows"],
        recording=a["recording"],
        text=a["text"].tolist() if text_keys else None,
        command=a["command"].tolist() if text_keys else None,
        text_status=a["text_status"] if text_keys else None,
    )
