"""The 112x112 log-power spectrogram every audio path in exitflow uses (data sets and live mic).

Transform (librosa): resample to 8 kHz if needed; the STFT of ``librosa.stft`` with ``n_fft=222``
(so 1 + 222/2 = 112 frequency bins, 0-4 kHz), periodic Hann window of 222 samples, ``center=True``
with zero padding;
the hop is ``ceil(L / 111)`` and the clip is zero-padded to ``111 * hop`` samples, so every
clip gives exactly 112 frames whatever its length (as the AV-MNIST recipe's window search
does). Power in dB relative to the clip's maximum, clipped at -80 dB, then scaled to [0, 1]
(1 = loudest). Output: float32 (112, 112), frequency rows (low first) x time columns.

The STFT is assembled from librosa's own pieces (``librosa.filters.get_window``,
``librosa.util.frame``) and numpy's ``rfft``: it equals ``librosa.stft`` to float precision
(tested) but costs ~0.2 ms instead of ~20 ms per clip here, because ``librosa.stft`` redoes
set-up work for every new hop length and AV-MNIST clips all have different lengths.

The FFT, power and dB steps run in float64 and only the result is rounded to float32: float32
transcendentals (``log10``) differ by a few ulp between CPUs (SIMD paths), which would flip a
few hundred uint8 spectrogram values of a build; in float64 the differences stay far below the
float32 rounding step, so built data sets are byte-identical across CPUs.
"""

from __future__ import annotations

import math

import librosa
import numpy as np

SPEC_SAMPLE_RATE_HZ = 8000
SPEC_BINS = 112
N_FFT = 2 * (SPEC_BINS - 1)  # 222 -> 112 frequency bins
TOP_DB = 80.0
MIN_SAMPLES = 64


class AudioInputError(ValueError):
    """Audio that cannot become a spectrogram (empty, NaN, wrong shape)."""


_WINDOW = librosa.filters.get_window("hann", N_FFT, fftbins=True).astype(np.float64)


def stft_112(padded: np.ndarray, hop: int) -> np.ndarray:
    """``librosa.stft(padded, n_fft=222, hop_length=hop, center=True, pad_mode="constant")``."""
    centred = np.pad(padded.astype(np.float64), N_FFT // 2)  # zero padding, as librosa's center=True
    frames = librosa.util.frame(centred, frame_length=N_FFT, hop_length=hop, axis=0)  # (T, 222)
    return np.fft.rfft(frames * _WINDOW, axis=1).T  # (112, T) complex128


def spectrogram_112(audio: np.ndarray, sample_rate_hz: int = SPEC_SAMPLE_RATE_HZ) -> np.ndarray:
    """Turn one mono clip into the (112, 112) float32 spectrogram described in the module doc.

    Args:
        audio: Mono samples, shape (L,); int16 PCM or float in [-1, 1].
        sample_rate_hz: Rate of ``audio``; other rates than 8 kHz are resampled.

    Raises:
        AudioInputError: for non-1-D input, fewer than 64 samples, or non-finite values.
    """
    x = np.asarray(audio)
    if x.ndim != 1:
        raise AudioInputError(f"expected mono audio of shape (L,), got shape {x.shape}; mix channels first")
    if x.dtype == np.int16:
        x = x.astype(np.float64) / 32768.0
    else:
        x = x.astype(np.float64, copy=False)
    if not np.all(np.isfinite(x)):
        raise AudioInputError("audio contains NaN or infinite samples")
    if sample_rate_hz <= 0:
        raise AudioInputError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    if sample_rate_hz != SPEC_SAMPLE_RATE_HZ:
        x = librosa.resample(x, orig_sr=sample_rate_hz, target_sr=SPEC_SAMPLE_RATE_HZ)
    if x.shape[0] < MIN_SAMPLES:
        raise AudioInputError(f"audio too short: {x.shape[0]} samples at 8 kHz, need at least {MIN_SAMPLES}")
    hop = math.ceil(x.shape[0] / (SPEC_BINS - 1))
    padded = np.zeros(hop * (SPEC_BINS - 1), dtype=np.float64)
    padded[: x.shape[0]] = x
    power = np.abs(stft_112(padded, hop)) ** 2  # (112, 112)
    if power.max() <= 0:
        return np.zeros((SPEC_BINS, SPEC_BINS), dtype=np.float32)
    db = librosa.power_to_db(power, ref=np.max, top_db=TOP_DB)
    return ((db + TOP_DB) / TOP_DB).astype(np.float32)[:SPEC_BINS, :SPEC_BINS]
