"""AV-MNIST (image + spoken digit), AV-MNIST-T (+ a GRID-style command) and AV-MNIST-noisy.

Follows ``../shared/data/AVMNIST_RECIPE.md`` (later generator version) with these choices:

- Image: the top-k PCA reconstruction of the recipe (k = 4 at ``image_energy_removed`` 0.75; the recipe keeps 3),
  mean not added back, /255, with ONE stored basis for every root and exact integer arithmetic
  (``pipeline.data.pca``), so every CPU builds the same bytes.
- Audio: speaker-disjoint pools (``pipeline.data.speakers``): train on the train speakers'
  recordings 0-39, calibrate (``val``) on a speaker never trained on, ``test`` on another unseen
  speaker, ``test_id`` on the train speakers' unheard recordings 40-49. Walking the MNIST labels in
  order, each sample takes the next recording of its digit's pool, cycling (labels never cross).
  Spectrogram: ``pipeline.data.spectrogram``.
- ``avmnist-noisy``: the same pairs with real background (babble of LJ Speech / GRID talkers by
  default) mixed in at ``data.noise_snr_db`` (``pipeline.data.noise``); each recording gets
  ``NOISE_VARIANTS`` differently-noised versions, the k-th use of a recording in a split takes
  variant ``k % NOISE_VARIANTS``. ``data.audio_snr_db`` still adds white noise to any data set.
- Splits: train = MNIST train rows [0, 60000 - val_size), val = the last ``val_size`` rows,
  test and test_id = every MNIST test row present (8,000 in ../shared/data, 1,000 embedded).

Built arrays go to ``data.cache_dir`` (outside git) keyed by every parameter and the source
files' digests; a build writes a temporary folder and renames it, so nothing is left half.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exitflow.pipeline.artifacts import SPLITS
from exitflow.pipeline.config import Config, output_path, resolve_path
from exitflow.pipeline.data.grid_commands import make_commands
from exitflow.pipeline.data.imported import ImportedSplit, is_imported, load_imported_split, reads_strings
from exitflow.pipeline.data.noise import BANK_FILE, mix_noise, noise_rng, read_noise_bank
from exitflow.pipeline.data.pca import PCA_BASIS_PATH, degrade_images, load_pca_basis
from exitflow.pipeline.data.preprocessing import DEFAULT_PREPROCESSING
from exitflow.pipeline.data.roots import data_root, file_digest, load_npz, read_fsdd, read_mnist
from exitflow.pipeline.data.speakers import ROLES_FILE, speaker_roles, split_pools
from exitflow.pipeline.errors import DataError

BUILDER_VERSION = 4
DATASETS = ("avmnist", "avmnist-t", "avmnist-noisy")
NOISE_VARIANTS = 10


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

    def head(self, n: int | None) -> AVSplit:
        """The first ``n`` samples (all when ``n`` is None or at least the split's length)."""
        if n is None or n >= len(self):
            return self
        return dataclasses.replace(
            self, image=self.image[:n], audio=LazyRows(self.audio.bank, self.audio.index[:n]),
            labels=self.labels[:n], rows=self.rows[:n], recording=self.recording[:n],
            text=None if self.text is None else self.text[:n],
            command=None if self.command is None else self.command[:n],
            text_status=None if self.text_status is None else self.text_status[:n],
        )

    def digest(self) -> str:
        """sha256 over every array (and text) of the split: equal digests mean equal data."""
        h = hashlib.sha256()
        for arr in (self.image, self.audio.bank, self.audio.index, self.labels, self.rows):
            h.update(np.ascontiguousarray(arr).tobytes())
        for text in self.text or ():
            h.update(text.encode())
        return h.hexdigest()


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


def _to_uint8(spec: np.ndarray) -> np.ndarray:
    return np.round(spec * 255.0).astype(np.uint8)


def _noise_setting(cfg: Config, dataset: str) -> tuple[str, float] | None:
    """(kind, snr_db) of the noise this build mixes in, or None for clean audio."""
    if dataset == "avmnist-noisy":
        return cfg.data.noise_kind, cfg.data.noise_snr_db
    if cfg.data.audio_snr_db is not None:
        return "white", cfg.data.audio_snr_db
    return None


def cache_key(cfg: Config, root: Path, dataset: str) -> str:
    d = cfg.data
    noise = _noise_setting(cfg, dataset)
    sources = [root / "mnist" / f for f in ("mnist_train.npz", "mnist_test.npz")] + [
        root / "fsdd" / f for f in ("fsdd_train.npz", "fsdd_test.npz", ROLES_FILE)
    ]
    if noise is not None and noise[0] != "white":
        sources += [root / BANK_FILE, root / "grid_av_samples" / "grid_decoded.npz"]
        sources += sorted((root / "ljspeech_subset" / "wavs").glob("*.wav"))
    params = {
        "v": BUILDER_VERSION,
        "dataset": dataset,
        "energy_removed": d.image_energy_removed,
        "noise": noise,
        "seed": d.seed,
        "val_size": d.val_size,
        "text_error_rate": d.text_error_rate if dataset == "avmnist-t" else None,
        "basis": file_digest([PCA_BASIS_PATH]),
        "sources": file_digest(sources),
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _audio_bank(
    cfg: Config, dataset: str, split: str, rec: np.ndarray, fsdd, noise_pool, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 spectrogram bank (M, 112, 112) and each row's index into it, for recordings ``rec``."""
    from tqdm import tqdm

    noise = _noise_setting(cfg, dataset)
    if noise is None:
        keys = rec[:, None]  # (N, 1): one spectrogram per recording
    else:
        uses = np.zeros(rec.shape[0], dtype=np.int64)
        seen: dict[int, int] = {}
        for i, r in enumerate(rec.tolist()):
            uses[i] = seen.get(r, 0) % NOISE_VARIANTS
            seen[r] = seen.get(r, 0) + 1
        keys = np.stack([rec, uses], axis=1)  # (N, 2): (recording, variant)
    uniq, audio_index = np.unique(keys, axis=0, return_inverse=True)
    bank = np.empty((uniq.shape[0], 112, 112), dtype=np.uint8)
    for j in tqdm(range(uniq.shape[0]), desc=f"spectrograms ({split})", disable=not progress, unit="clip"):
        clip = fsdd.clips[int(uniq[j, 0])]
        if noise is not None:
            name = str(fsdd.filenames[int(uniq[j, 0])])  # keyed by file name: equal in every root
            rng = noise_rng(cfg.data.seed, split, int(hashlib.sha256(name.encode()).hexdigest()[:12], 16), int(uniq[j, 1]))
            clip = mix_noise(clip, noise_pool(split), noise[0], noise[1], rng)
        bank[j] = _to_uint8(DEFAULT_PREPROCESSING.audio(clip, fsdd.sample_rate_hz)[0])
    return bank, audio_index.reshape(-1).astype(np.int64)


def _build(cfg: Config, root: Path, dataset: str, out: Path, progress: bool) -> None:
    """Build every split ``root`` can provide into folder ``out`` (which must not exist)."""
    d = cfg.data
    basis = load_pca_basis()
    fsdd = read_fsdd(root)
    has_train = (root / "mnist" / "mnist_train.npz").is_file()
    roles = speaker_roles(root, fsdd.speakers, has_train)
    pools = split_pools(roles, fsdd.speakers, fsdd.indices)
    noise = _noise_setting(cfg, dataset)
    bank_cache = {}

    def noise_pool(split: str) -> list[np.ndarray]:
        if "bank" not in bank_cache:
            bank_cache["bank"] = read_noise_bank(root)
        return bank_cache["bank"].pool(split)

    if noise is not None and noise[0] == "white":
        noise_pool = lambda split: []  # noqa: E731 -- white noise needs no recordings
    mnist = {"test": read_mnist(root, "test")}
    if has_train:
        mnist["train"] = read_mnist(root, "train")
        if mnist["train"].labels.shape[0] - d.val_size <= 0:
            raise DataError(f"data.val_size={d.val_size} leaves no training rows")
    n_train = mnist["train"].labels.shape[0] - d.val_size if has_train else 0
    plan = {  # split -> (MNIST source, rows)
        "train": ("train", np.arange(n_train)),
        "val": ("train", np.arange(n_train, n_train + d.val_size)),
        "test": ("test", np.arange(mnist["test"].labels.shape[0])),
        "test_id": ("test", np.arange(mnist["test"].labels.shape[0])),
    }
    images = {name: degrade_images(m.images, basis, d.image_energy_removed) for name, m in mnist.items()}
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        manifest = {"dataset": dataset, "splits": {}, "root": str(root), "speakers": roles.to_dict()}
        for split, (source, rows) in plan.items():
            if source not in mnist or split not in pools or rows.size == 0:
                continue
            m, pool = mnist[source], pools[split]
            rec = pool[_pair_audio(m.labels[rows], fsdd.labels[pool], split)]
            bank, audio_index = _audio_bank(cfg, dataset, split, rec, fsdd, noise_pool, progress)
            arrays = {
                "image": images[source][rows],
                "audio_bank": bank,
                "audio_index": audio_index,
                "labels": m.labels[rows],
                "rows": rows.astype(np.int64),
                "recording": fsdd.filenames[rec],
            }
            if dataset == "avmnist-t":
                seed = d.seed * 2 + (1 if source == "test" else 0)  # train/val rows and test rows differ
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
    cache = output_path(cfg, cfg.data.cache_dir)
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


def load_split(
    cfg: Config, split: str, dataset: str | None = None, progress: bool = True
) -> AVSplit | ImportedSplit:
    """Load (building on first use) one split of a built-in data set, or of an imported one (``dataset``
    a folder path, :mod:`pipeline.data.imported`).

    Raises:
        DataError: unknown split/dataset, a split the data root cannot provide (the embedded
            slice holds only ``test``), or missing/corrupt source files.
    """
    if dataset is not None and is_imported(dataset):
        bundle = cfg.engine.bundle  # a bundle's model decides how text is read, not DIR/model's
        strings = reads_strings(resolve_path(cfg, bundle) / "preprocessing.json") if bundle else None
        return load_imported_split(dataset, split, text_strings=strings)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    folder = dataset_dir(cfg, dataset, progress)
    path = folder / f"{split}.npz"
    if not path.is_file():
        available = json.loads((folder / "manifest.json").read_text())["splits"]
        raise DataError(
            f"split {split!r} is not available from data root {data_root(cfg)} (it has: "
            f"{', '.join(available)}); the embedded slice holds only 'test' — point "
            f"data.root (or --data-root) at a full data root such as ../shared/data"
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
