"""The image degradation of AV-MNIST: one stored PCA basis, applied with exact integer arithmetic.

Every data root uses the same basis, ``pipeline/embedded_data/mnist/pca_basis.npz``: the mean
and top 50 components of the 60,000 MNIST training images (float32) and the explained-variance
ratios (float64), computed once by :func:`fit_pca_basis` and committed. Fitting the basis from
data on every build made it depend on the BLAS of the machine (values differed by ~1e-12 on an
AVX-512 CPU), so a bit-exact comparison between two machines failed.

:func:`degrade_images` projects onto the top k components and reconstructs without the mean
(the recipe), in int64 arithmetic on fixed-point copies of the float32 basis: integer sums do
not depend on summation order or SIMD width, so every CPU produces the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exitflow.pipeline.data.roots import EMBEDDED_DATA, load_npz
from exitflow.pipeline.errors import DataError

PCA_BASIS_PATH = EMBEDDED_DATA / "mnist" / "pca_basis.npz"
PCA_KEEP_COMPONENTS = 50
MEAN_SCALE = 2**8  # fixed-point scale of the centred pixels: 1/256 of a grey level
COMPONENT_SCALE = 2**15  # fixed-point scale of the unit-norm components


def fit_pca_basis(images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, top components and explained-variance ratios of uint8 images (N, 28, 28).

    Used once to write the stored basis; builds never call it (see the module doc).
    """
    x = images.reshape(-1, 784).astype(np.float64)
    mean = x.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(np.cov(x - mean, rowvar=False))  # (784,), (784, 784)
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    comps = eigvecs[:, :PCA_KEEP_COMPONENTS].T  # (K, 784)
    comps *= np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])[:, None]
    return {
        "mean": mean.astype(np.float32),
        "components": comps.astype(np.float32),
        "explained_ratio": eigvals / eigvals.sum(),
    }


def load_pca_basis(path: Path = PCA_BASIS_PATH) -> dict[str, np.ndarray]:
    """The stored basis (one for every data root)."""
    basis = load_npz(path, ("mean", "components", "explained_ratio"))
    if basis["components"].shape[1:] != (784,) or basis["mean"].shape != (784,):
        raise DataError(f"{path}: expected mean (784,) and components (K, 784); restore it from git")
    return basis


def components_for(basis: dict[str, np.ndarray], energy_removed: float) -> int:
    """Smallest k whose cumulative explained variance exceeds ``1 - energy_removed``."""
    ratio = np.cumsum(basis["explained_ratio"])
    k = int(np.searchsorted(ratio, 1.0 - energy_removed, side="right")) + 1
    if k > basis["components"].shape[0]:
        raise DataError(
            f"image_energy_removed={energy_removed} needs {k} PCA components but only "
            f"{basis['components'].shape[0]} are stored; raise data.image_energy_removed"
        )
    return k


def degrade_images(images: np.ndarray, basis: dict[str, np.ndarray], energy_removed: float) -> np.ndarray:
    """Reconstruct uint8 images (N, 28, 28) from their top-k components, mean not added, /255.

    Returns:
        float32 (N, 1, 28, 28), identical bytes on every CPU (integer arithmetic).
    """
    k = components_for(basis, energy_removed)
    mean_q = np.round(basis["mean"].astype(np.float64) * MEAN_SCALE).astype(np.int64)  # (784,)
    comps_q = np.round(basis["components"][:k].astype(np.float64) * COMPONENT_SCALE).astype(np.int64)  # (k, 784)
    x_q = images.reshape(-1, 784).astype(np.int64) * MEAN_SCALE - mean_q  # (N, 784), |x| < 2^16
    proj = x_q @ comps_q.T  # (N, k), |.| < 2^41: exact in int64
    recon = proj @ comps_q  # (N, 784), |.| < 2^58: exact in int64
    scale = float(MEAN_SCALE) * COMPONENT_SCALE * COMPONENT_SCALE * 255.0
    return (recon.astype(np.float64) / scale).astype(np.float32).reshape(-1, 1, 28, 28)
