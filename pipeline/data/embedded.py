"""Write the small real data slice shipped inside the repo (``pipeline/embedded_data``).

The slice has the layout of a data root and holds: the first ``n_images`` MNIST test images,
the PCA basis fitted on the full MNIST training set (so slice images are degraded exactly as
in the full build) and the FSDD recordings of the AV-MNIST test pool (repetition index
40-49). ``avmnist``/``avmnist-t`` test rows built from it equal the first ``n_images`` test
rows built from the full root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from exitflow.pipeline.data.avmnist import TEST_POOL_MIN_INDEX, _pca_basis
from exitflow.pipeline.data.roots import FSDD_KEYS, load_npz, read_mnist
from exitflow.pipeline.errors import DataError


def make_embedded_slice(src_root: Path, out: Path, n_images: int = 1000) -> dict[str, int]:
    """Write the slice from the full data root ``src_root`` into ``out``; returns sizes in bytes."""
    if not (src_root / "mnist" / "mnist_train.npz").is_file():
        raise DataError(f"{src_root} is not a full data root (mnist/mnist_train.npz missing)")
    (out / "mnist").mkdir(parents=True, exist_ok=True)
    (out / "fsdd").mkdir(parents=True, exist_ok=True)
    test = read_mnist(src_root, "test")
    np.savez_compressed(
        out / "mnist" / "mnist_test.npz",
        images=test.images[:n_images],
        labels=test.labels[:n_images].astype(np.uint8),
    )
    basis = _pca_basis(src_root)
    np.savez_compressed(out / "mnist" / "pca_basis.npz", **basis)
    clips, keep = [], {k: [] for k in ("labels", "speakers", "indices", "filenames", "wav_sha256")}
    rate = None
    for part in ("train", "test"):
        a = load_npz(src_root / "fsdd" / f"fsdd_{part}.npz", FSDD_KEYS + ("wav_sha256",))
        rate = int(a["sample_rate"])
        for i in np.flatnonzero(a["indices"] >= TEST_POOL_MIN_INDEX).tolist():
            clips.append(a["audio"][a["offsets"][i] : a["offsets"][i + 1]])
            for key in keep:
                keep[key].append(a[key][i])
    offsets = np.concatenate([[0], np.cumsum([c.shape[0] for c in clips])]).astype(np.int64)
    np.savez_compressed(
        out / "fsdd" / "fsdd_train.npz",
        audio=np.concatenate(clips).astype(np.int16),
        offsets=offsets,
        sample_rate=np.int64(rate or 8000),
        **{k: np.array(v) for k, v in keep.items()},
    )
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.npz"))}
