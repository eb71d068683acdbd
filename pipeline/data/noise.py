"""Real recorded background for ``avmnist-noisy``: babble and interfering talkers mixed at an SNR.

Noise sources are the LJ Speech clips (``ljspeech_subset/wavs``, one reader) and the GRID clips'
audio (``grid_av_samples/grid_decoded.npz``, one talker each), resampled once to 8 kHz
(``scipy.signal.resample_poly`` in float64) and stored as int16. Sorted by name within each corpus,
clip i goes to ``SPLIT_PATTERN[i % 8]``: six of every eight clips to train, one to val, one to
test, so the noise heard in calibration and test was never heard in training (``test_id`` shares
the test noise: known voices, unheard noise). A root may instead hold ``noise/noise_bank.npz``
(``audio``, ``offsets``, ``names``, ``splits``): the embedded slice carries its test noise so.

Mixing (:func:`mix_noise`): ``data.noise_kind`` ``babble`` sums three segments of three different
clips of the split's pool (each scaled to unit power), ``talker`` takes one segment of one clip,
``white`` draws Gaussian noise; the noise is scaled to ``speech power / 10^(snr_db / 10)`` over
the whole clip and added (float64). Each (recording, variant) draws from its own generator,
``default_rng([seed, split, recording, variant])`` (the recording
keyed by a hash of its file name), so the build is deterministic whatever the order.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from exitflow.pipeline.data.realsets import read_grid, read_ljspeech
from exitflow.pipeline.data.roots import load_npz
from exitflow.pipeline.errors import DataError

NOISE_RATE_HZ = 8000
SPLIT_PATTERN = ("train", "train", "train", "train", "train", "train", "val", "test")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "test_id": 3}
NOISE_POOL_OF = {"train": "train", "val": "val", "test": "test", "test_id": "test"}
BABBLE_TALKERS = 3
NOISE_KINDS = ("babble", "talker", "white")
BANK_FILE = Path("noise") / "noise_bank.npz"


@dataclass(frozen=True)
class NoiseBank:
    """Noise clips (int16 at 8 kHz) with the split each belongs to."""

    clips: list[np.ndarray]
    names: np.ndarray  # (K,) str
    splits: np.ndarray  # (K,) str

    def pool(self, split: str) -> list[np.ndarray]:
        want = NOISE_POOL_OF[split]
        return [c for c, s in zip(self.clips, self.splits.tolist(), strict=True) if s == want]


def _to_8k_int16(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float64)
    if x.dtype.kind == "i" or np.abs(x).max(initial=0) > 1.5:
        x = x / 32768.0
    g = gcd(int(rate_hz), NOISE_RATE_HZ)
    y = resample_poly(x, NOISE_RATE_HZ // g, int(rate_hz) // g) if rate_hz != NOISE_RATE_HZ else x
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)


def read_noise_bank(root: Path) -> NoiseBank:
    """The root's noise clips with their splits (from ``noise/noise_bank.npz`` or the corpora).

    Raises:
        DataError: the root holds neither the bank file nor the LJ Speech and GRID folders.
    """
    bank_path = root / BANK_FILE
    if bank_path.is_file():
        a = load_npz(bank_path, ("audio", "offsets", "names", "splits"))
        off = a["offsets"]
        clips = [a["audio"][off[i] : off[i + 1]] for i in range(len(a["names"]))]
        return NoiseBank(clips, a["names"], a["splits"])
    if not (root / "ljspeech_subset").is_dir() or not (root / "grid_av_samples").is_dir():
        raise DataError(
            f"{root} has no noise sources for avmnist-noisy: expected ljspeech_subset/ and grid_av_samples/ "
            f"(as in ../shared/data) or {BANK_FILE}; set data.noise_kind=white to use white noise only"
        )
    clips, names, splits = [], [], []
    corpora = (
        sorted((c.name, c.audio, c.sample_rate_hz) for c in read_ljspeech(root)),
        sorted((c.name, c.audio, c.sample_rate_hz) for c in read_grid(root)),
    )
    for corpus in corpora:
        for i, (name, audio, rate) in enumerate(corpus):
            clips.append(_to_8k_int16(audio, rate))
            names.append(name)
            splits.append(SPLIT_PATTERN[i % len(SPLIT_PATTERN)])
    return NoiseBank(clips, np.array(names), np.array(splits))


def write_noise_bank(bank: NoiseBank, root: Path, splits: tuple[str, ...]) -> Path:
    """Write the clips of ``splits`` as ``root/noise/noise_bank.npz`` (for the embedded slice)."""
    keep = [i for i, s in enumerate(bank.splits.tolist()) if s in splits]
    clips = [bank.clips[i] for i in keep]
    offsets = np.concatenate([[0], np.cumsum([c.shape[0] for c in clips])]).astype(np.int64)
    path = root / BANK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, audio=np.concatenate(clips), offsets=offsets, names=bank.names[keep], splits=bank.splits[keep]
    )
    return path


def _segment(clip: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    x = clip.astype(np.float64) / 32768.0
    if x.shape[0] < length:
        x = np.tile(x, length // x.shape[0] + 1)
    start = int(rng.integers(0, x.shape[0] - length + 1))
    seg = x[start : start + length]
    return seg / np.sqrt(np.mean(seg**2) + 1e-12)


def mix_noise(
    speech: np.ndarray, pool: list[np.ndarray], kind: str, snr_db: float, rng: np.random.Generator
) -> np.ndarray:
    """``speech`` (int16 at 8 kHz) plus noise at ``snr_db``, float64 (L,).

    Raises:
        DataError: an unknown ``kind`` or an empty pool for a recorded kind.
    """
    x = speech.astype(np.float64) / 32768.0
    length = x.shape[0]
    if kind == "white":
        noise = rng.standard_normal(length)
    elif kind in ("babble", "talker"):
        if not pool:
            raise DataError("this split's noise pool is empty; the data root lacks its noise clips")
        count = min(BABBLE_TALKERS if kind == "babble" else 1, len(pool))
        picks = rng.choice(len(pool), size=count, replace=False)
        noise = sum(_segment(pool[int(p)], length, rng) for p in picks)
    else:
        raise DataError(f"unknown data.noise_kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    speech_power = float(np.mean(x**2)) or 1e-12
    noise_power = float(np.mean(noise**2)) or 1e-12
    return x + noise * np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))


def noise_rng(seed: int, split: str, recording: int, variant: int) -> np.random.Generator:
    """The generator of one (recording, variant) mix: independent of build order."""
    return np.random.default_rng([seed, SPLIT_CODES[split], recording, variant])
