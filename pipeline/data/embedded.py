"""Write the small real data slice shipped inside the repo (``pipeline/embedded_data``).

The slice has the layout of a data root and holds: the first ``n_images`` MNIST test images,
the FSDD recordings of the ``test`` pool (the unseen test speaker, every index; the ``test_id``
pool is left out to keep the slice under 4 MB), the speaker roles of the full root
(``fsdd/speaker_roles.json``, so the slice assigns the same roles although it lacks the train
and calibration recordings) and the test noise clips (``noise/noise_bank.npz``) for
``avmnist-noisy``. The image PCA basis (``mnist/pca_basis.npz``) is the one stored basis every
root uses. ``test`` rows built from the slice equal the first ``n_images`` rows
built from the full root, for every data set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from exitflow.pipeline.data.noise import read_noise_bank, write_noise_bank
from exitflow.pipeline.data.pca import PCA_BASIS_PATH
from exitflow.pipeline.data.roots import FSDD_KEYS, load_npz, read_fsdd, read_mnist
from exitflow.pipeline.data.speakers import ROLES_FILE, speaker_roles, split_pools
from exitflow.pipeline.errors import DataError

EMBEDDED_SPLITS = ("test",)


def make_embedded_slice(src_root: Path, out: Path, n_images: int = 1000) -> dict[str, int]:
    """Write the slice from the full data root ``src_root`` into ``out``; returns sizes in bytes."""
    if not (src_root / "mnist" / "mnist_train.npz").is_file():
        raise DataError(f"{src_root} is not a full data root (mnist/mnist_train.npz missing)")
    for sub in ("mnist", "fsdd"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    test = read_mnist(src_root, "test")
    np.savez_compressed(
        out / "mnist" / "mnist_test.npz",
        images=test.images[:n_images],
        labels=test.labels[:n_images].astype(np.uint8),
    )
    if (out / "mnist" / "pca_basis.npz").resolve() != PCA_BASIS_PATH.resolve():
        shutil.copy2(PCA_BASIS_PATH, out / "mnist" / "pca_basis.npz")
    fsdd = read_fsdd(src_root)
    roles = speaker_roles(src_root, fsdd.speakers, full_root=True)
    pools = split_pools(roles, fsdd.speakers, fsdd.indices)
    wanted = set(np.concatenate([pools[s] for s in EMBEDDED_SPLITS if s in pools]).tolist())
    wanted_names = {str(fsdd.filenames[i]) for i in wanted}
    clips, keep = [], {k: [] for k in ("labels", "speakers", "indices", "filenames", "wav_sha256")}
    rate = None
    for part in ("train", "test"):
        a = load_npz(src_root / "fsdd" / f"fsdd_{part}.npz", FSDD_KEYS + ("wav_sha256",))
        rate = int(a["sample_rate"])
        for i, name in enumerate(a["filenames"].tolist()):
            if name in wanted_names:
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
    declared = {"train": list(roles.train), "val": list(roles.val), "test": list(roles.test)}
    (out / "fsdd" / ROLES_FILE).write_text(json.dumps(declared, indent=2) + "\n")
    write_noise_bank(read_noise_bank(src_root), out, ("test",))
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.np*"))}
